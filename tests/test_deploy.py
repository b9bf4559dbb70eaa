"""The shipped deployment: gunicorn's settings, static files, the image and docker-compose.yml.

No Docker engine runs here, so the compose file and the Dockerfile are checked as text against the
code they name: a renamed setting, module or command breaks these tests, not a deployment.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command, get_commands
from django.test import Client, override_settings
from gunicorn.config import Config

ROOT = Path(settings.BASE_DIR)
WEB_ENV = (
    "WEB_BIND", "WEB_WORKERS", "WEB_THREADS", "WEB_KEEPALIVE_S", "WEB_TIMEOUT_S",
    "WEB_WORKER_CLASS", "WEB_WORKER_CONNECTIONS",
)  # fmt: skip


def gunicorn_config(monkeypatch: pytest.MonkeyPatch, **env: str) -> Config:
    """The settings gunicorn takes from `-c python:coursegen.gunicorn_conf`, validated by its own
    Config (an unknown or mistyped setting fails here as it would at start-up)."""
    for name in (*WEB_ENV, "WEB_ACCESS_LOG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module: ModuleType = importlib.reload(importlib.import_module("coursegen.gunicorn_conf"))
    config = Config()
    for name, value in vars(module).items():
        helper = isinstance(value, ModuleType) or callable(value)
        if not (name.startswith("_") or helper or name == "annotations"):  # the __future__ import
            config.set(name, value)  # KeyError for a name gunicorn does not know
    return config


def test_gunicorn_defaults_are_the_benchmarked_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    config = gunicorn_config(monkeypatch)
    assert config.worker_class_str == "gevent"  # event streams hold no thread
    assert (config.workers, config.worker_connections) == (2, 1000)
    assert config.address == [("0.0.0.0", 8000)]
    assert config.keepalive == 5
    assert config.accesslog is None


def test_gunicorn_takes_gthread_or_gevent_and_refuses_other_worker_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = gunicorn_config(monkeypatch, WEB_WORKER_CLASS="gthread", WEB_THREADS="16")
    assert (config.worker_class_str, config.threads) == ("gthread", 16)
    with pytest.raises(ValueError, match="WEB_WORKER_CLASS must be gthread or gevent, got 'sync'"):
        gunicorn_config(monkeypatch, WEB_WORKER_CLASS="sync")
    monkeypatch.delenv("WEB_WORKER_CLASS")
    importlib.reload(importlib.import_module("coursegen.gunicorn_conf"))  # leave it loaded


def test_gunicorn_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = gunicorn_config(
        monkeypatch,
        WEB_BIND="127.0.0.1:9001",
        WEB_WORKERS="4",
        WEB_THREADS="16",
        WEB_KEEPALIVE_S="30",
        WEB_ACCESS_LOG="-",
    )
    assert config.address == [("127.0.0.1", 9001)]
    assert (config.workers, config.threads, config.keepalive) == (4, 16, 30)
    assert config.accesslog == "-"


@pytest.mark.parametrize("value", ["zero", "0", "-2", "1.5"])
def test_gunicorn_rejects_a_bad_count_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    with pytest.raises(ValueError, match=f"WEB_THREADS must be a positive integer, got '{value}'"):
        gunicorn_config(monkeypatch, WEB_THREADS=value)
    monkeypatch.delenv("WEB_THREADS")
    importlib.reload(importlib.import_module("coursegen.gunicorn_conf"))  # leave it loaded


def test_static_files_are_served_without_debug(tmp_path: Path) -> None:
    """The admin is the staff dashboard: its CSS and JS must load in production (DEBUG off),
    where Django's own static view does not run."""
    with override_settings(STATIC_ROOT=str(tmp_path)):  # the shipped storage, compressing
        call_command("collectstatic", interactive=False, verbosity=0)
        assert not settings.DEBUG
        response = Client().get("/static/admin/css/base.css")  # a new handler reads STATIC_ROOT
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert (tmp_path / "admin" / "css" / "base.css.gz").exists()  # compressed copies for WhiteNoise


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def test_compose_runs_every_part_from_the_one_image(compose: dict[str, Any]) -> None:
    assert set(app_services(compose)) == {"migrate", "web", "worker", "beat", "flower"}
    assert set(compose["services"]) - set(app_services(compose)) == {"postgres", "redis", "proxy"}


def test_compose_workers_scale_out(compose: dict[str, Any]) -> None:
    """`docker compose up --scale worker=N` needs a worker with no fixed name or host port."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    command = worker["command"]
    assert command[:4] == ["celery", "-A", "coursegen", "worker"]
    assert command[command.index("-P") + 1] == "threads"  # the measured pool (README)
    assert worker["environment"]["DATABASE_POOL"] == "true"


def test_compose_weights_workers_below_the_web(compose: dict[str, Any]) -> None:
    """On a shared host the web's requests get a core before the workers' threads
    (docs/operations.md#web-and-workers-on-one-host); Docker's default weight is 1024."""
    services = compose["services"]
    assert services["worker"]["cpu_shares"] < services["web"].get("cpu_shares", 1024)


def test_compose_web_uses_the_shipped_gunicorn_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == [
        "gunicorn",
        "-c",
        "python:coursegen.gunicorn_conf",
        "coursegen.wsgi:application",
    ]
    web = compose["services"]["web"]
    assert "command" not in web  # the image's CMD
    # One pooled connection per request thread, or threads queue for connections.
    assert web["environment"]["DATABASE_POOL"] == "true"
    threads = gunicorn_config(monkeypatch).threads
    assert int(web["environment"]["DATABASE_POOL_MAX_SIZE"]) >= threads


def test_compose_requires_the_secrets(compose: dict[str, Any]) -> None:
    """No default secret ships: compose refuses to start until they are set."""
    required = {"DJANGO_SECRET_KEY": "web", "FLOWER_BASIC_AUTH": "flower"}
    for variable, service in required.items():
        value = compose["services"][service]["environment"][variable]
        assert value.startswith(f"${{{variable}:?"), value


def test_compose_commands_exist(compose: dict[str, Any]) -> None:
    for service in app_services(compose).values():
        command = service.get("command")
        if command and command[:2] == ["python", "manage.py"]:
            assert command[2] in get_commands()
        elif command:
            assert command[:3] == ["celery", "-A", "coursegen"]


def test_compose_sets_only_variables_the_code_reads(compose: dict[str, Any]) -> None:
    """A misspelt variable would be ignored silently, leaving the default in production."""
    code = "\n".join(
        path.read_text() for path in (ROOT / "coursegen").glob("*.py") if path.is_file()
    )
    for name, service in app_services(compose).items():
        for variable in service["environment"]:
            if name == "flower" and variable.startswith("FLOWER_"):
                continue  # Flower's own settings
            assert re.search(rf"[\"']{variable}[\"']", code), f"{name}: {variable} is not read"


def test_image_holds_every_project_app() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    local_apps = {app for app in settings.INSTALLED_APPS if (ROOT / app).is_dir()}
    assert local_apps | {"coursegen", "templates"} <= copied
    assert "collectstatic --noinput" in dockerfile


def test_compose_web_healthcheck_probes_liveness_only(compose: dict[str, Any]) -> None:
    """The container healthcheck must stay cheap: the liveness view, not the readiness report."""
    from django.urls import resolve

    from monitoring.apis import liveness

    probe = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:8000(/[^'\"]+)", probe)
    assert match is not None, probe
    assert resolve(match.group(1)).func is liveness


_GEVENT_DB_PROBE = """
from gevent import monkey
monkey.patch_all()  # as gunicorn's gevent worker does before it loads the application
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({"pool": db.get("OPTIONS", {}).get("pool"), "max_age": db["CONN_MAX_AGE"]}))
"""


def _gevent_settings(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_POOL")}
    return subprocess.run(
        [sys.executable, "-c", _GEVENT_DB_PROBE],
        cwd=ROOT,
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "coursegen.settings",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/coursegen",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gevent_web_processes_pool_their_database_connections() -> None:
    """Under gevent each greenlet has its own Django connection: without the pool, 200 event
    streams opened at once made 200 connections and PostgreSQL refused the rest ("too many
    clients", 500s). The pool is on by default there and cannot be turned off."""
    run = _gevent_settings(DATABASE_POOL_MAX_SIZE="8")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.splitlines()[-1])
    assert got["pool"]["max_size"] == 8
    assert got["max_age"] == 0

    refused = _gevent_settings(DATABASE_POOL="false")
    assert refused.returncode != 0
    assert "DATABASE_POOL=false under gevent" in refused.stderr
