"""Driving headless Chromium from the tests: Debian's /usr/bin/chromium under playwright-core
(npm, installed by `make test` from package-lock.json), never a downloaded browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
SAVED: list[Path] = []  # printed at the end of the run (conftest's pytest_terminal_summary)


def chromium_or_skip() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    node_ok = shutil.which("node") and (ROOT / "node_modules" / "playwright-core").is_dir()
    if binary and node_ok:
        return binary
    missing = "chromium (apt-get install chromium)" if not binary else "node_modules (npm ci)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing} is missing; .ci/run and `make test` install it")
    pytest.skip(f"{missing} is missing")


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    path.unlink(missing_ok=True)
    SAVED.append(path)
    return path


def run_node(script: str, spec: dict[str, Any], *, timeout: float = 180) -> dict[str, Any]:
    """Run tests/browser/<script> with `spec`; its stdout is one JSON document."""
    result = subprocess.run(
        ["node", str(ROOT / "tests" / "browser" / script), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document: dict[str, Any] = json.loads(result.stdout)
    return document
