"""Model text to safe HTML, and small text helpers shared by the formats.

Model output is data, never markup we trust. Long fields (explanations, scripts) may use Markdown,
as language models often do, so they go through markdown-it with raw HTML disabled and then
through nh3 (the Rust ammonia sanitiser) with a short allow-list: no scripts, no event handlers,
no styles, no images (an export must not fetch anything), and links only to http(s) and mailto.
Short fields (titles, options, terms) are plain text and are escaped by the templates.
"""

from __future__ import annotations

import re

import nh3
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import slugify
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote", "a", "h4", "h5",
    "h6", "hr",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}

# Raw HTML in the text stays text; images would make the export fetch a URL of the model's choice.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).disable("image")


def rich_html(text: str) -> SafeString:
    """Markdown model text as sanitised HTML (paragraphs, lists, emphasis, safe links)."""
    rendered = _markdown.render(text or "")
    clean = nh3.clean(
        rendered,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # nh3's output: only the allow-list above survives


def duration(seconds: int) -> str:
    minutes, rest = divmod(max(int(seconds), 0), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def file_stem(title: str, *, fallback: str = "course") -> str:
    """A safe, readable file name stem: ASCII, lower case, at most 60 characters."""
    stem = slugify(title)[:60].strip("-")
    return stem or fallback


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]>#|])")


def md_inline(text: str) -> str:
    """Plain model text for a Markdown line: Markdown syntax and HTML made literal."""
    return _MD_SPECIAL.sub(r"\\\1", md_block(" ".join((text or "").split())))


def md_block(text: str) -> str:
    """Long model text for a Markdown document: its Markdown kept, raw HTML made inert."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").strip()


# Characters XML 1.0 does not allow at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: str) -> str:
    """Model text for an XML text node or attribute (the serializer escapes the rest)."""
    return _NOT_XML.sub("", text or "")
