"""The mind map drawn on the server as one inline SVG: no script, no CDN, readable in print.

The central topic sits in the middle; its branches alternate to the right and the left, each a
left-to-right (or right-to-left) tree with one column per level. Every label is escaped and
wrapped to its box; a label too long for three lines ends in an ellipsis and keeps its full text
in a <title> (the tooltip, and what a screen reader reads).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from html import escape

from generation.exports.document import MindMapNode

BOX_W = 164  # a node's box; the central topic's is wider
ROOT_W = 190
COL_GAP = 26
LINE_H = 16
PAD_Y = 7
ROW_GAP = 8
MARGIN = 12
MAX_LINES = 4
CHARS_PER_LINE = {1: 19, 2: 22}  # by depth: bold branch labels are wider; 13 px in BOX_W - 12
ROOT_CHARS = 20  # at 15 px bold in ROOT_W
MIN_SCALE = 0.8  # shrink a wide map to fit no further than this; scroll instead
# Presentation attributes, not a <style>: every SVG renderer reads them (WeasyPrint misreads
# the `font` shorthand), and the SVG looks the same when it is taken out of the page.
_FONT = "font-family=\"system-ui, -apple-system, 'DejaVu Sans', sans-serif\""
_TEXT = {
    "mm-centre": f'{_FONT} font-size="15" font-weight="600" fill="#ffffff"',
    "mm-branch": f'{_FONT} font-size="13" font-weight="600" fill="#ffffff"',
    "mm-leaf": f'{_FONT} font-size="13" fill="#111827"',
}
PALETTE = ("#2563eb", "#059669", "#d97706", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626")


def _wrap(label: str, width: int) -> list[str]:
    lines = textwrap.wrap(" ".join(label.split()), width=width, break_long_words=True) or [""]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
        lines[-1] = lines[-1][: width - 1].rstrip() + "…"
    return lines


@dataclass
class _Box:
    node: MindMapNode
    depth: int
    lines: list[str]
    children: list[_Box] = field(default_factory=list)
    x: float = 0.0  # centre
    y: float = 0.0  # centre
    parent_y: float = 0.0  # where the link from the parent starts

    @property
    def height(self) -> float:
        return len(self.lines) * LINE_H + 2 * PAD_Y

    def block(self) -> float:
        """Vertical space the node and its subtree need."""
        below = sum(c.block() for c in self.children) + ROW_GAP * max(len(self.children) - 1, 0)
        return max(self.height, below)


def _build(node: MindMapNode, depth: int) -> _Box:
    width = CHARS_PER_LINE[min(depth, 2)]
    box = _Box(node=node, depth=depth, lines=_wrap(node.label, width))
    box.children = [_build(child, depth + 1) for child in node.children]
    return box


def _place(box: _Box, *, top: float, side: int, centre_x: float) -> None:
    """Place `box` and its subtree in the band that starts at `top` (side: 1 right, -1 left)."""
    offset = ROOT_W / 2 + COL_GAP + (box.depth - 1) * (BOX_W + COL_GAP) + BOX_W / 2
    box.x = centre_x + side * offset
    box.y = top + box.block() / 2
    child_top = top + (box.block() - _children_block(box)) / 2
    for child in box.children:
        _place(child, top=child_top, side=side, centre_x=centre_x)
        child_top += child.block() + ROW_GAP


def _children_block(box: _Box) -> float:
    return sum(c.block() for c in box.children) + ROW_GAP * max(len(box.children) - 1, 0)


def _side_height(branches: list[_Box]) -> float:
    return sum(b.block() for b in branches) + 2 * ROW_GAP * max(len(branches) - 1, 0)


def _deepest(box: _Box) -> int:
    return max((_deepest(c) for c in box.children), default=box.depth)


def _label(x: float, y: float, lines: list[str], *, css: str) -> str:
    first = y - (len(lines) - 1) * LINE_H / 2
    spans = "".join(
        f'<tspan x="{x:.1f}" y="{first + i * LINE_H:.1f}">{escape(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    return (
        f'<text class="{css}" {_TEXT[css]} text-anchor="middle" dominant-baseline="central">'
        f"{spans}</text>"
    )


def _link(parent_x: float, parent_w: float, child: _Box, side: int, colour: str) -> str:
    start = parent_x + side * parent_w / 2
    end = child.x - side * BOX_W / 2
    mid = (start + end) / 2
    return (
        f'<path d="M{start:.1f},{child.parent_y:.1f} C{mid:.1f},{child.parent_y:.1f} '
        f'{mid:.1f},{child.y:.1f} {end:.1f},{child.y:.1f}" stroke="{colour}" fill="none" />'
    )


def _draw(box: _Box, *, side: int, colour: str, out: list[str], links: list[str]) -> None:
    full = escape(box.node.label)
    fill = colour if box.depth == 1 else "#ffffff"
    css = "mm-branch" if box.depth == 1 else "mm-leaf"
    out.append(
        f'<g class="mm-node mm-depth-{box.depth}"><title>{full}</title>'
        f'<rect x="{box.x - BOX_W / 2:.1f}" y="{box.y - box.height / 2:.1f}" width="{BOX_W}" '
        f'height="{box.height:.1f}" rx="9" fill="{fill}" stroke="{colour}" />'
        f"{_label(box.x, box.y, box.lines, css=css)}</g>"
    )
    for child in box.children:
        child.parent_y = box.y
        links.append(_link(box.x, BOX_W, child, side, colour))
        _draw(child, side=side, colour=colour, out=out, links=links)


def _size(width: float, height: float) -> str:
    # Shrink to fit a narrow column no further than MIN_SCALE; past that, its box scrolls.
    return (
        f'width="{width:.0f}" height="{height:.0f}" '
        f'style="min-width:{max(640, width * MIN_SCALE):.0f}px" '
    )


def mind_map_svg(root: MindMapNode, *, element_id: str = "mind-map", fluid: bool = False) -> str:
    """The mind map as an SVG element (a string of markup, every label escaped). A `fluid` one
    has no size of its own and fills its container's width (for print: WeasyPrint keeps an SVG's
    own width even past the page's edge)."""
    branches = [_build(child, 1) for child in root.children]
    right, left = branches[0::2], branches[1::2]
    depth = max(_deepest(b) for b in branches)
    half_w = ROOT_W / 2 + depth * (BOX_W + COL_GAP) + MARGIN
    width = 2 * half_w if left else half_w + ROOT_W / 2 + MARGIN
    centre_x = half_w if left else ROOT_W / 2 + MARGIN
    root_lines = _wrap(root.label, ROOT_CHARS)
    root_h = len(root_lines) * 19 + 2 * PAD_Y
    height = max(_side_height(right), _side_height(left), root_h) + 2 * MARGIN
    for side, group in ((1, right), (-1, left)):
        top = (height - _side_height(group)) / 2
        for branch in group:
            _place(branch, top=top, side=side, centre_x=centre_x)
            top += branch.block() + 2 * ROW_GAP
    nodes: list[str] = []
    links: list[str] = []
    for index, branch in enumerate(branches):
        side = 1 if index % 2 == 0 else -1
        colour = PALETTE[index % len(PALETTE)]
        branch.parent_y = height / 2
        links.append(_link(centre_x, ROOT_W, branch, side, colour))
        _draw(branch, side=side, colour=colour, out=nodes, links=links)
    root_first = height / 2 - (len(root_lines) - 1) * 19 / 2
    root_spans = "".join(
        f'<tspan x="{centre_x:.1f}" y="{root_first + i * 19:.1f}">{escape(line)}</tspan>'
        for i, line in enumerate(root_lines)
    )
    title = escape(root.label)
    return (
        f'<svg id="{element_id}" class="mind-map" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" {"" if fluid else _size(width, height)}'
        f'role="img" aria-labelledby="{element_id}-title">'
        f'<title id="{element_id}-title">Mind map: {title}</title>'
        f'<g class="mm-links" fill="none" stroke-width="2">{"".join(links)}</g>'
        f'<g class="mm-root"><rect x="{centre_x - ROOT_W / 2:.1f}" '
        f'y="{height / 2 - root_h / 2:.1f}" width="{ROOT_W}" height="{root_h:.1f}" rx="14" '
        f'fill="#111827" /><text class="mm-centre" {_TEXT["mm-centre"]} text-anchor="middle" '
        f'dominant-baseline="central">{root_spans}</text></g>'
        f"{''.join(nodes)}</svg>"
    )
