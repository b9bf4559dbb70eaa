"""The simulator's Files and Batches endpoints over a loopback HTTP server, reached through the
official `openai` SDK (docs/batch.md#the-offline-emulator-and-the-loopback-server).

`BatchEndpoints` serves `/v1/files` (multipart upload as the SDK sends it, list, content) and
`/v1/batches` (create, list, retrieve, cancel) on 127.0.0.1 at a port the system picks, in a
daemon thread of the process that needs it, over the file-backed `BatchEmulator` (so every
process of the machine sees the same files and batches, whichever server it talks to).
`SdkBatchClient` is the openai provider's own Batch API code (`OpenAIBatches`: `files.create`,
`batches.create`/`list`/`retrieve`/`cancel`, `files.content`) pointed at it, so the demo's batch
path is the one a real provider takes. A line carries the simulator's full request (its context:
the simulator answers from it) in the chat completion body's `metadata`.
"""

from __future__ import annotations

import email.parser
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

from generation.providers.base import (
    BatchLine,
    CompletionRequest,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from generation.providers.batchfiles import read_lines, request_dump, request_load
from generation.providers.offline.batches import Answer, BatchEmulator
from generation.providers.openai_batch import BATCH_ENDPOINT, OpenAIBatches
from generation.schemas import ConstraintStep

HOST = "127.0.0.1"  # loopback only: the emulator is never reachable from the network
REQUEST_KEY = "coursegen_request"


class BatchEndpoints:
    """The loopback server: started on first use, one per emulator root and process."""

    def __init__(self, emulator: BatchEmulator, answer: Answer) -> None:
        self.emulator, self.answer = emulator, answer
        self.served: list[tuple[str, str]] = []  # (method, path) of each request, in order
        self._server = ThreadingHTTPServer((HOST, 0), _handler_for(self))
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.name = "offline-batch-endpoints"
        thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.served.append((method, path.partition("?")[0]))
        parts = path.partition("?")[0].strip("/").split("/")[1:]  # files|batches, id?, action?
        try:
            return 200, self._route(method, parts, body)
        except (FileNotFoundError, KeyError, TransientProviderError) as exc:
            return 404, {"error": {"message": f"not found: {exc}", "type": "invalid_request"}}
        except (ValueError, TypeError) as exc:
            return 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}

    def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        emulator = self.emulator
        if parts == ["files"]:
            return self._upload(body) if method == "POST" else _page(emulator.uploads())
        if parts[:1] == ["files"] and parts[2:] == ["content"]:
            return emulator.content(parts[1])
        if parts == ["batches"] and method == "POST":
            metadata = body.get("metadata") or {}
            state = emulator.create(input_file_id=str(body["input_file_id"]), metadata=metadata)
            return _batch_object(emulator.record(state.id))
        if parts == ["batches"]:
            return _page([_batch_object(r) for r in emulator.records()])
        if parts[:1] == ["batches"] and parts[2:] == ["cancel"]:
            emulator.cancel(parts[1])
        elif parts[:1] == ["batches"] and len(parts) == 2:
            emulator.retrieve(parts[1], self.answer)
        else:
            raise KeyError("/".join(parts))
        return _batch_object(emulator.record(parts[1]))

    def _upload(self, body: dict[str, Any]) -> dict[str, Any]:
        lines = [
            BatchLine(
                row["custom_id"], request_load(json.loads(row["body"]["metadata"][REQUEST_KEY]))
            )
            for row in read_lines(str(body.get("file", "")))
        ]
        file_id = self.emulator.upload(lines, filename=str(body.get("filename", "batch.jsonl")))
        (record,) = [m for m in self.emulator.uploads() if m["id"] == file_id]
        return record


class SdkBatchClient(OpenAIBatches):
    """The openai provider's Batch API calls, through the official SDK, to the loopback server."""

    name = "offline"

    def __init__(self, base_url: str) -> None:
        self._client = openai.OpenAI(
            api_key="offline-simulator", base_url=base_url, max_retries=0, timeout=60.0
        )

    def _body(self, request: CompletionRequest, *, step: ConstraintStep) -> dict[str, Any]:
        return {
            "model": request.model,
            "messages": [m.as_dict() for m in request.messages],
            "metadata": {REQUEST_KEY: json.dumps(request_dump(request))},
        }

    def constraint_step(self, model: str) -> ConstraintStep | None:
        return None

    def _classify(self, exc: openai.OpenAIError, latency_s: float) -> ProviderError:
        if isinstance(exc, openai.APIStatusError) and 400 <= exc.status_code < 500:
            return PermanentProviderError(f"batch endpoints: {exc}", status_code=exc.status_code)
        return TransientProviderError(f"batch endpoints: {exc}", latency_s=latency_s)


_servers: dict[str, BatchEndpoints] = {}
_servers_lock = threading.Lock()


def sdk_client(emulator: BatchEmulator, answer: Callable[..., Any]) -> SdkBatchClient:
    """This process's client for the emulator at `emulator.root` (its server started once)."""
    key = str(emulator.root)
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server.emulator is not emulator:
            if server is not None:
                server.stop()
            server = _servers[key] = BatchEndpoints(emulator, answer)
    return SdkBatchClient(server.base_url)


def _page(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A whole list, newest first, as one page (the SDK asks for no other)."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def _batch_object(record: dict[str, Any]) -> dict[str, Any]:
    total = int(record.get("total", 0))
    return {
        "id": record["id"],
        "object": "batch",
        "endpoint": BATCH_ENDPOINT,
        "input_file_id": record["input_file_id"],
        "completion_window": "24h",
        "metadata": record.get("metadata") or {},
        "status": record["status"],
        "created_at": int(record["created_at"]),
        "output_file_id": record.get("output_file_id"),
        "error_file_id": record.get("error_file_id"),
        "request_counts": {
            "total": total,
            "completed": int(record.get("completed", 0)),
            "failed": int(record.get("failed", 0)),
        },
    }


def multipart_fields(content_type: str, raw: bytes) -> dict[str, Any]:
    """The fields of a multipart/form-data body (the SDK's file upload), as text."""
    message = email.parser.BytesParser().parsebytes(
        f"content-type: {content_type}\r\n\r\n".encode() + raw
    )
    fields: dict[str, Any] = {}
    parts: Any = message.get_payload()
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        payload: Any = part.get_payload(decode=True)
        fields[str(name)] = payload.decode()
        if filename := part.get_filename():
            fields["filename"] = filename
    return fields


def _handler_for(endpoints: BatchEndpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's client expects

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            content_type = self.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                body = multipart_fields(content_type, raw)
            else:
                body = json.loads(raw or b"{}")
            self._send(*endpoints.route("POST", self.path, body))

        def do_GET(self) -> None:
            self._send(*endpoints.route("GET", self.path, {}))

        def _send(self, status: int, body: Any) -> None:
            payload = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are the provider's calls; they are logged there

    return Handler
