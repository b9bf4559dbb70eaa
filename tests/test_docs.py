"""The docs stay true to the code.

- Every environment variable the code reads has a row in docs/configuration.md. The list comes
  from the code's syntax trees (settings.py's env helpers, django-environ, os.environ), never from
  a hand-kept list, so a new variable without a row fails here; so does a row for a variable that
  nothing reads any more.
- Relative links and anchors between README.md and docs/*.md resolve, and the README links every
  docs page.
- The code paths and dotted names the pages mention (`generation/retry.py`,
  `monitoring.logs.log_event`) exist, so a moved module shows up here, not in a reader's 404.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "configuration.md"
README = ROOT / "README.md"
APPS = ("coursegen", "accounts", "generation", "ratelimits", "monitoring", "perf")
# Where variables read only by tooling (make, compose, the tests) are set or read.
TOOLING = ("Makefile", "docker-compose.yml", "Dockerfile", ".ci/run", "tests")
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


# --- Which environment variables the code reads --------------------------------------------------
def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _env_objects(tree: ast.Module) -> set[str]:
    """Module-level names bound to django-environ's reader: `env = environ.Env()`."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "Env":
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _reads_directly(node: ast.AST, env_objects: set[str]) -> bool:
    """`os.environ.get(...)`, `os.environ.setdefault(...)`, `os.getenv(...)`, `env.str(...)`,
    `env(...)` or `os.environ[...]` read for its value."""
    if isinstance(node, ast.Subscript):
        return _is_os_environ(node.value) and isinstance(node.ctx, ast.Load)
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in env_objects
    if not isinstance(func, ast.Attribute):
        return False
    if _is_os_environ(func.value):
        return func.attr in {"get", "setdefault"}
    if isinstance(func.value, ast.Name):
        return (func.value.id, func.attr) == ("os", "getenv") or func.value.id in env_objects
    return False


def _called_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _reader_functions(tree: ast.Module, env_objects: set[str]) -> set[str]:
    """The module's own functions that read the environment, directly or through one another
    (`env_choice` -> `env_str` -> `env.str`), to a fixed point."""
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    readers: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, function in functions.items():
            if name in readers:
                continue
            nodes = list(ast.walk(function))
            if any(_reads_directly(n, env_objects) or _called_name(n) in readers for n in nodes):
                readers.add(name)
                changed = True
    return readers


def _literal_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Subscript):
        key: ast.AST = node.slice
    elif isinstance(node, ast.Call) and node.args:
        key = node.args[0]
    else:
        return None
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value if ENV_NAME.fullmatch(key.value) else None
    return None


def env_reads(source: str) -> set[str]:
    """Names of the environment variables a module reads with a literal name."""
    tree = ast.parse(source)
    env_objects = _env_objects(tree)
    readers = _reader_functions(tree, env_objects)
    names = set()
    for node in ast.walk(tree):
        is_read = _reads_directly(node, env_objects) or _called_name(node) in readers
        if is_read and (name := _literal_name(node)) is not None:
            names.add(name)
    return names


def project_modules() -> Iterator[Path]:
    yield ROOT / "manage.py"
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def variables_read_by_code() -> dict[str, set[str]]:
    """Variable name -> the files (relative to the checkout) that read it."""
    found: dict[str, set[str]] = {}
    for path in project_modules():
        for name in env_reads(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


# --- What docs/configuration.md documents -----------------------------------------------------
def documented_variables(markdown: str) -> set[str]:
    """Backticked names in the first column of the page's tables (the variable columns)."""
    names = set()
    for line in markdown.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= {"-", ":"}:
            names |= {n for n in re.findall(r"`([^`]+)`", cells[1]) if ENV_NAME.fullmatch(n)}
    return names


def undocumented(read: Iterable[str], markdown: str) -> list[str]:
    return sorted(set(read) - documented_variables(markdown))


def test_it_finds_every_kind_of_environment_read() -> None:
    source = """
import os
import environ
env = environ.Env()

def env_str(name, default):
    return str(env.str(name, default=default))

def env_choice(name, default, choices):
    return env_str(name, default)

A = env_str("VIA_HELPER", "x")
B = env_choice("VIA_NESTED_HELPER", "a", ("a",))
C = env.int("VIA_DJANGO_ENVIRON", default=1)
D = os.environ.get("VIA_OS_ENVIRON_GET")
E = os.getenv("VIA_GETENV")
F = os.environ["VIA_SUBSCRIPT"]
os.environ["ONLY_WRITTEN"] = "1"
G = dict(NOT_AN_ENV_READ="1")
H = str("NOT_READ_EITHER")
"""
    assert env_reads(source) == {
        "VIA_HELPER",
        "VIA_NESTED_HELPER",
        "VIA_DJANGO_ENVIRON",
        "VIA_OS_ENVIRON_GET",
        "VIA_GETENV",
        "VIA_SUBSCRIPT",
    }


def test_it_reports_a_new_variable_that_has_no_row() -> None:
    settings_source = (ROOT / "coursegen" / "settings.py").read_text()
    added = settings_source + '\nCOURSEGEN_BRAND_NEW = env_int("COURSEGEN_BRAND_NEW", 3)\n'
    doc = CONFIG_DOC.read_text()
    assert "COURSEGEN_BRAND_NEW" not in undocumented(env_reads(settings_source), doc)
    assert "COURSEGEN_BRAND_NEW" in undocumented(env_reads(added), doc)


def test_it_reads_the_settings_and_the_gunicorn_config() -> None:
    # Guards the extractor itself: if it stopped understanding settings.py, the check below would
    # pass on an empty list.
    from_settings = env_reads((ROOT / "coursegen" / "settings.py").read_text())
    from_gunicorn = env_reads((ROOT / "coursegen" / "gunicorn_conf.py").read_text())
    assert {"DATABASE_URL", "COURSEGEN_PROVIDER", "COURSEGEN_DISPATCH_INTERVAL_S"} <= from_settings
    assert {"EMAIL_URL", "COURSEGEN_READING_GRADE_BANDS", "LOG_LEVEL"} <= from_settings
    assert len(from_settings) > 80
    assert from_gunicorn == {
        "WEB_BIND",
        "WEB_WORKERS",
        "WEB_WORKER_CLASS",
        "WEB_WORKER_CONNECTIONS",
        "WEB_THREADS",
        "WEB_KEEPALIVE_S",
        "WEB_TIMEOUT_S",
        "WEB_ACCESS_LOG",
    }


def test_it_documents_every_environment_variable_the_code_reads() -> None:
    read = variables_read_by_code()
    missing = undocumented(read, CONFIG_DOC.read_text())
    assert not missing, "add a row to docs/configuration.md for: " + ", ".join(
        f"{name} ({', '.join(sorted(read[name]))})" for name in missing
    )


def _tooling_text() -> str:
    parts = []
    for name in TOOLING:
        path = ROOT / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        parts += [f.read_text() for f in files if f.exists()]
    return "\n".join(parts)


def test_it_documents_no_variable_that_nothing_reads() -> None:
    documented = documented_variables(CONFIG_DOC.read_text())
    tooling = _tooling_text()
    stale = sorted(
        name
        for name in documented - set(variables_read_by_code())
        if not re.search(rf"\b{name}\b", tooling)
    )
    assert not stale, f"docs/configuration.md documents variables nothing reads: {stale}"


# --- Links and anchors between the pages -------------------------------------------------------
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_it_resolves_every_relative_link(page: Path) -> None:
    assert broken_links(page) == []


def test_it_computes_anchors_as_github_does() -> None:
    markdown = "# Queue: steps\n## `make chaos`\n## Limits of `heuristic-v1`\n## Logs\n## Logs"
    assert anchors(markdown) == {
        "queue-steps",
        "make-chaos",
        "limits-of-heuristic-v1",
        "logs",
        "logs-1",
    }


def test_it_links_every_docs_page_from_the_readme() -> None:
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(prose(README.read_text()))}
    assert sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked) == []


# --- Code the pages name ------------------------------------------------------------------------
CODE_PATH = re.compile(rf"(?:{'|'.join(APPS)}|tests|templates|docs)/[\w./-]*")
DOTTED = re.compile(rf"(?:{'|'.join(APPS)})(?:\.\w+)+")
CHECK_ID = re.compile(r"\w+\.[CEWID]\d{3}")  # a system check's id, e.g. ratelimits.W001


def current_pages() -> list[Path]:
    """The pages that describe the code as it is (the changelog records how it was)."""
    return [p for p in pages() if p.name != "changelog.md"]


def code_spans(page: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", FENCE.sub("", page.read_text()))


def path_exists(path: str) -> bool:
    target = ROOT / path
    return target.exists() or target.with_name(target.name + ".py").exists()


def name_resolves(dotted: str) -> bool:
    """A module, or an attribute of one (`monitoring.logs.log_event`), or `app_label.Model`."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return True
        except AttributeError:
            break
    if len(parts) == 2:
        try:
            apps.get_model(parts[0], parts[1])
            return True
        except LookupError:
            pass
    return False


@pytest.mark.parametrize("page", current_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_it_names_only_code_that_exists(page: Path) -> None:
    spans = code_spans(page)
    missing = [s for s in spans if CODE_PATH.fullmatch(s) and not path_exists(s)]
    dotted = [s for s in spans if DOTTED.fullmatch(s) and not CHECK_ID.fullmatch(s)]
    missing += [s for s in dotted if not name_resolves(s)]
    assert missing == []
