"""The edge (issue 21, item 7): slow clients against the real web stack on 127.0.0.1.

gunicorn runs with the shipped settings (coursegen/gunicorn_conf.py: gevent, 2 processes) and
Debian's nginx with deploy/nginx.conf (only its listen address and upstream replaced). Slow
clients send the headers and part of the body of an authenticated POST /api/jobs/, then stall.

- gunicorn alone: each slow client holds a greenlet (a thread under gthread) while Django waits
  for the rest of the body, and nothing cuts them.
- behind nginx: 50 slow clients reach nginx only; gunicorn never sees their requests, normal
  requests answer, and nginx cuts the stalled ones after client_body_timeout.

The figures (seconds a slow client held the server, normal request latency) are printed as one
JSON line; the assertions are on behaviour, with generous bounds, not on timings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token

from tests import worker

ROOT = Path(settings.BASE_DIR)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BODY_LENGTH = 400
SLOW_DIRECT = 32
SLOW_BEHIND_NGINX = 50
CLIENT_GIVES_UP_S = 40.0  # far above nginx's client_body_timeout (10 s in deploy/nginx.conf)

pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answering(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if _get(port, "/health/live", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(log.read_text(errors="replace")[-3000:])


def _get(port: int, path: str, *, timeout: float) -> tuple[int, float]:
    """A normal client: status and seconds taken (status 0 when it got no answer in time)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        try:
            head = sock.recv(64)
        except TimeoutError:
            return 0, time.monotonic() - started
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(match.group(1)) if match else 0), time.monotonic() - started


def _slow_client(port: int, token: str, phase: str) -> tuple[socket.socket, float]:
    """Headers and part of the body of a job submission, then silence."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (
        f"POST /api/jobs/?phase={phase} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_LENGTH}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"topic": "Slow')
    return sock, time.monotonic()


def _seconds_until_cut(sock: socket.socket, sent_at: float, give_up_s: float) -> float | None:
    """Seconds from the last byte sent until the server closed the connection (None: still
    open when the client gave up)."""
    remaining = sent_at + give_up_s - time.monotonic()
    sock.settimeout(max(remaining, 0.01))
    try:
        while sock.recv(4096):
            pass  # e.g. nginx's 408 before it closes
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass  # reset_timedout_connection on
    finally:
        sock.close()
    return time.monotonic() - sent_at


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, log, access = _free_port(), tmp_path / "gunicorn.log", tmp_path / "access.log"
    env = {
        **os.environ,
        "DATABASE_URL": worker.test_database_url(),
        "DJANGO_SECRET_KEY": "edge-test-" + "x" * 50,
        "WEB_BIND": f"127.0.0.1:{port}",
        "WEB_ACCESS_LOG": str(access),
        "MONITORING_LOG_CELERY_TASKS": "false",
    }
    for name in ("WEB_WORKERS", "WEB_THREADS", "WEB_TIMEOUT_S", "WEB_KEEPALIVE_S"):
        env.pop(name, None)  # the shipped shape
    command = [sys.executable, "-m", "gunicorn", "-c", "python:coursegen.gunicorn_conf"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "coursegen.wsgi:application"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        _wait_until_answering(port, process, log)
        yield port, access
    finally:
        process.terminate()
        process.wait(timeout=30)


def _nginx_conf(tmp_path: Path, listen: int, upstream: int) -> Path:
    shipped = (ROOT / "deploy" / "nginx.conf").read_text()
    server, n1 = re.subn(r"server web:8000;", f"server 127.0.0.1:{upstream};", shipped)
    server, n2 = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", server)
    assert (n1, n2) == (1, 1), "deploy/nginx.conf changed the lines this test replaces"
    temp = tmp_path / "nginx"
    temp.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""  # its workers write the temp files here
    main = f"""
{user}
daemon off;
worker_processes 1;
pid {temp}/nginx.pid;
error_log {temp}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {temp}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{server}
}}
"""
    path = temp / "nginx.conf"
    path.write_text(main)
    return path


@pytest.fixture
def nginx(tmp_path: Path, gunicorn: tuple[int, Path]) -> Iterator[int]:
    port = _free_port()
    conf = _nginx_conf(tmp_path, port, gunicorn[0])
    log = conf.parent / "error.log"
    subprocess.run([NGINX, "-t", "-c", str(conf), "-e", str(log)], check=True)
    process = subprocess.Popen(
        [NGINX, "-c", str(conf), "-e", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_until_answering(port, process, log)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _token(make_member: Any) -> str:
    from accounts.models import Role

    return str(Token.objects.create(user=make_member(Role.TEACHER)).key)


def test_slow_clients_hold_gunicorn_alone_but_not_gunicorn_behind_nginx(
    make_member: Any, gunicorn: tuple[int, Path], nginx: int, capsys: Any
) -> None:
    token = _token(make_member)
    web, access = gunicorn
    figures: dict[str, Any] = {}

    # Before: straight to gunicorn, two slow clients per thread (2 workers x 8 threads; each
    # worker accepts what comes, so the two may not share them evenly).
    held = [_slow_client(web, token, "direct") for _ in range(SLOW_DIRECT)]
    time.sleep(1)
    status, waited = _get(web, "/health/live", timeout=5)
    figures["gunicorn_alone"] = {
        "slow_clients": SLOW_DIRECT,
        "normal_request_status": status,
        "normal_request_s": round(waited, 2),
    }
    figures["gunicorn_alone"]["slow_answered_before_client_gave_up"] = access.read_text().count(
        "phase=direct"
    )
    cut = [_seconds_until_cut(sock, at, give_up_s=15) for sock, at in held]
    figures["gunicorn_alone"]["slow_clients_cut_within_15s"] = sum(c is not None for c in cut)
    figures["gunicorn_alone"]["slow_client_held_s"] = ">= 15 (until the client gave up)"

    # After: through nginx, 50 slow clients, then normal requests.
    slow = [_slow_client(nginx, token, "edge") for _ in range(SLOW_BEHIND_NGINX)]
    normal = [_get(nginx, "/health/live", timeout=10) for _ in range(20)]
    cut = [_seconds_until_cut(sock, at, give_up_s=CLIENT_GIVES_UP_S) for sock, at in slow]
    latencies = sorted(seconds for _, seconds in normal)
    figures["behind_nginx"] = {
        "slow_clients": SLOW_BEHIND_NGINX,
        "normal_requests": len(normal),
        "normal_ok": sum(code == 200 for code, _ in normal),
        "normal_p50_s": round(statistics.median(latencies), 3),
        "normal_max_s": round(latencies[-1], 3),
        "slow_cut": sum(c is not None for c in cut),
        "slow_cut_after_s": [round(min(c for c in cut if c), 1), round(max(c for c in cut if c), 1)]
        if all(cut)
        else None,
        "slow_requests_reaching_gunicorn": access.read_text().count("phase=edge"),
    }
    with capsys.disabled():
        print("\n" + json.dumps(figures))

    assert figures["behind_nginx"]["normal_ok"] == len(normal)  # all answered while 50 stalled
    assert all(c is not None for c in cut)  # every stalled client was cut, none by giving up
    assert figures["behind_nginx"]["slow_requests_reaching_gunicorn"] == 0  # no thread held


def test_a_body_over_the_edge_limit_is_refused_by_nginx_with_json(nginx: int) -> None:
    with socket.create_connection(("127.0.0.1", nginx), timeout=10) as sock:
        sock.sendall(
            b"POST /api/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
        )
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass  # nginx resets a connection whose body it refused, after answering

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"application/json" in head
    assert json.loads(body)["detail"].startswith("The request body is larger")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("203.0.113.7", "203.0.113.7"), ("", "10.0.0.2"), ("not-an-ip, 1.2.3.4", "10.0.0.2")],
)
def test_the_throttles_read_the_client_from_the_proxys_header(
    settings: Any, header: str, expected: str
) -> None:
    from django.test import RequestFactory
    from django_ratelimit.core import _get_ip

    settings.DJANGO_CLIENT_IP_HEADER = "X-Real-IP"
    settings.RATELIMIT_IP_META_KEY = "coursegen.client_ip.client_ip"
    request = RequestFactory().get("/", HTTP_X_REAL_IP=header, REMOTE_ADDR="10.0.0.2")

    assert _get_ip(request) == expected
