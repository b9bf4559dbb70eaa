"""The layout the code keeps: no import cycles between modules of the project's apps, no module
reaching into another's private names, no module in generation/ over 600 lines, and every Celery
task the services send by name is a registered one; and every module sits in a layer.

The layer contracts themselves are in pyproject.toml and run with `lint-imports` (make lint);
here, every module must sit in one of their layers. These checks read the source (ast, grimp,
pyproject.toml).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("accounts", "coursegen", "generation", "monitoring", "perf", "ratelimits")
MAX_GENERATION_MODULE_LINES = 600


def _project_modules() -> dict[str, Path]:
    modules = {}
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _project_modules()


# --- Every module in a layer ---------------------------------------------------------------------
def _layer_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (layers,) = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    return {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}


def test_it_places_every_module_of_the_apps_in_a_layer() -> None:
    # A module left out of the layers contract would be free to import anything.
    layers = _layer_modules()
    outside = [
        name
        for name in MODULES
        if name not in APPS and not any(name == m or name.startswith(f"{m}.") for m in layers)
    ]

    assert outside == [], "add these to the layers contract in pyproject.toml"
    assert not layers - set(MODULES), "the layers contract names modules that do not exist"


# --- No cycles ------------------------------------------------------------------------------------
def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(imports):
        if start in index:
            continue
        work = [(start, iter(sorted(imports[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(imports.get(step, ())))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_it_finds_a_cycle_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_it_has_no_import_cycles_between_modules_of_the_apps() -> None:
    # Within one package lint-imports checks this too (acyclic_siblings); this also covers cycles
    # that cross apps, e.g. monitoring.services <-> ratelimits.services.
    graph = grimp.build_graph(*APPS, cache_dir=None)
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}

    assert _cycles(imports) == []


# --- No private names of another module -----------------------------------------------------------
def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(importer: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The project module an expression such as `services.dispatch` names, if any."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        if base is not None and f"{base}.{node.attr}" in MODULES:
            return f"{base}.{node.attr}"
    return None


def _private_uses(name: str, path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}  # local name -> project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                target = alias.name if alias.asname else alias.name.split(".")[0]
                if target in MODULES:
                    aliases[bound] = target
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(name, path, node)
            if source.split(".")[0] not in APPS:
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # a module, not a name
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif _is_private(alias.name) and source != name:
                    yield f"{name}:{node.lineno} imports {alias.name} from {source}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = _dotted(node.value, aliases)
            if owner is not None and owner != name:
                yield f"{name}:{node.lineno} uses {owner}.{node.attr}"


def test_it_sees_a_private_name_taken_from_another_module(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text(
        "from generation import services\nfrom generation.checks import _catch_all_options\n"
        "services._send_outlines([])\nservices.__name__\nservices.job_submit\n"
    )

    assert list(_private_uses("generation.x", source)) == [
        "generation.x:2 imports _catch_all_options from generation.checks",
        "generation.x:3 uses generation.services._send_outlines",
    ]


def test_it_imports_no_other_modules_private_names() -> None:
    uses = [use for name, path in MODULES.items() for use in _private_uses(name, path)]

    assert uses == []


# --- Size and sends -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if n == "generation" or n.startswith("generation."))
)
def test_it_keeps_every_generation_module_under_600_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())

    assert lines <= MAX_GENERATION_MODULE_LINES, f"{name}: {lines} lines; split it into a package"


def test_it_sends_only_celery_tasks_that_generation_tasks_registers() -> None:
    from generation import messages

    for name in messages.NAMES:
        # Registered in this process by GenerationConfig.ready, and defined in generation/tasks.py.
        assert messages.task(name).run.__module__ == "generation.tasks", name
