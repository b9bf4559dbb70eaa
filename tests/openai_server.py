"""A tiny OpenAI-compatible chat-completions server for tests, on 127.0.0.1 only.

    with running_openai_server(mode="json_schema") as server:
        server.replies["CourseOutline"] = {...}          # reply per json_schema name
        server.script(status=429, headers={"retry-after": "7"}, body={...})  # served first
        provider = OpenAIProvider(api_key="k", base_url=server.base_url, timeout_s=5)

Modes, one per kind of server the constraint ladder meets (generation/providers/openai.py):
"json_schema" accepts Structured Outputs (and json_object), as OpenAI, vLLM and Ollama do;
"llamacpp" answers HTTP 500 to `json_schema` the way llama.cpp's server does and accepts
`json_object`, with or without a `schema` in it; "json_object_only" refuses both `json_schema`
and a `schema` inside `json_object` with a 400 saying so, and accepts plain `json_object`.
Scripted responses are served first, in order, whatever the mode.

The Files and Batches endpoints (docs/batch.md) are emulated too: `POST /v1/files` (multipart, as
the SDK uploads), `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`, and the lists `GET /v1/files` and `GET /v1/batches` (newest first,
paged by `after`, at most `page_size` a page). A batch is `in_progress` for its first
`batch_retrieves_in_progress` retrieves, then ends: each line answered as a chat completion
would be, except the custom_ids in `batch_failed` (a 500 line in the error file) and in
`batch_unanswered` (a `batch_expired` line; the batch ends `expired`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from generation.providers.offline.batch_http import multipart_fields

Mode = Literal["json_schema", "llamacpp", "json_object_only"]
HOST = "127.0.0.1"  # never anything else: the fake must not be reachable from the network

LLAMACPP_REFUSAL = {
    "error": {
        "code": 500,
        "message": "Input should be 'text' or 'json_object'",
        "type": "server_error",
    }
}
# What a server that only knows plain json_object answers to the stronger steps.
UNSUPPORTED = {
    "json_schema": {
        "error": {
            "message": "response_format type 'json_schema' is not supported",
            "type": "invalid_request_error",
        }
    },
    "json_object_schema": {
        "error": {
            "message": "response_format.schema: extra inputs are not permitted",
            "type": "invalid_request_error",
        }
    },
}
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-remaining-tokens": "199000",
    "x-request-id": "req_test",
}


@dataclass(frozen=True)
class ScriptedResponse:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (timeouts)


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]

    @property
    def response_format_type(self) -> str | None:
        fmt = self.body.get("response_format") or {}
        return fmt.get("type") if isinstance(fmt, dict) else None

    @property
    def constraint_step(self) -> str | None:
        """The ladder's step this request asked for (json_object_schema: json_object + schema)."""
        fmt = self.body.get("response_format") or {}
        kind = self.response_format_type
        return "json_object_schema" if kind == "json_object" and "schema" in fmt else kind


def chat_completion_body(
    content: str | None,
    *,
    model: str = "test-model",
    refusal: str | None = None,
    prompt_tokens: int = 120,
    cached_tokens: int = 0,
    completion_tokens: int = 40,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A chat.completion object as OpenAI returns it."""
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        },
    }


class FakeOpenAIServer:
    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        # json_schema name -> reply: a dict, raw str content, or a callable that makes the reply
        # from the request's body (e.g. a judge that reads the prompt).
        self.replies: dict[str, Any] = {}
        self.default_reply: Any = {"ok": True}  # json_object calls and unknown schema names
        self.cached_tokens = 0
        # text -> the OpenAI moderation categories it is flagged for ("violence", "illicit" ...)
        self.moderation: Any = flag_marked
        self.requests: list[ReceivedRequest] = []
        self.files: dict[str, str] = {}
        self.file_objects: dict[str, dict[str, Any]] = {}  # uploads, as files.list shows them
        self.page_size = 100  # the most items a list page holds
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_retrieves_in_progress = 1
        self.batch_failed: set[str] = set()
        self.batch_unanswered: set[str] = set()
        self._ids = itertools.count(1)
        self._script: deque[ScriptedResponse] = deque()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((HOST, 0), _handler_for(self))
        self._httpd.daemon_threads = True
        # A short poll interval keeps shutdown (and so every test) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._httpd.server_address[1]}/v1"

    def script(
        self,
        *,
        status: int = 200,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Queue one response to serve before the mode's normal behaviour."""
        with self._lock:
            self._script.append(ScriptedResponse(status, body, headers or {}, delay_s))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()  # wakes handlers sleeping on a scripted delay
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # --- called from handler threads ------------------------------------------------------------
    def respond(self, request: ReceivedRequest) -> ScriptedResponse:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.popleft()
        if request.path == "/v1/moderations":
            return ScriptedResponse(200, moderation_body(request.body, self.moderation))
        if request.path == "/v1/embeddings":
            return ScriptedResponse(200, embeddings_body(request.body))
        if request.path.startswith(("/v1/files", "/v1/batches")):
            with self._lock:
                return self._batch_api(request)
        if request.path != "/v1/chat/completions":
            return ScriptedResponse(404, {"error": {"message": f"no route {request.path}"}})
        if self.mode == "llamacpp" and request.response_format_type == "json_schema":
            return ScriptedResponse(500, LLAMACPP_REFUSAL)
        if self.mode == "json_object_only" and request.constraint_step in UNSUPPORTED:
            return ScriptedResponse(400, UNSUPPORTED[request.constraint_step])
        return ScriptedResponse(200, self._completion(request), dict(RATE_LIMIT_HEADERS))

    # --- the Files and Batches endpoints ------------------------------------------------------
    def _batch_api(self, request: ReceivedRequest) -> ScriptedResponse:
        path, _, query = request.path.partition("?")
        parts = path.strip("/").split("/")  # v1, files|batches, id?, action?
        if len(parts) == 2 and not request.body:  # a GET: the list, newest first, paged
            listed = self.file_objects if parts[1] == "files" else self.batches
            return ScriptedResponse(200, self._page(list(listed.values())[::-1], query))
        if parts[1] == "files" and len(parts) == 2:
            file_id = f"file-{next(self._ids)}"
            self.files[file_id] = str(request.body.get("file", ""))
            self.file_objects[file_id] = _file_object(file_id, request.body)
            return ScriptedResponse(200, self.file_objects[file_id])
        if parts[1] == "files" and parts[3:] == ["content"] and parts[2] in self.files:
            return ScriptedResponse(200, self.files[parts[2]])
        if parts[1] == "batches" and len(parts) == 2:
            batch_id = f"batch_{next(self._ids)}"
            self.batches[batch_id] = _batch_object(batch_id, request.body)
            return ScriptedResponse(200, self.batches[batch_id])
        batch = self.batches.get(parts[2]) if len(parts) > 2 else None
        if batch is None:
            return ScriptedResponse(404, {"error": {"message": f"no route {request.path}"}})
        if parts[3:] == ["cancel"] and batch["status"] == "in_progress":
            batch["status"] = "cancelled"
        elif batch["status"] == "in_progress":
            batch["retrieves"] += 1
            if batch["retrieves"] > self.batch_retrieves_in_progress:
                self._end(batch)
        return ScriptedResponse(200, {k: v for k, v in batch.items() if k != "retrieves"})

    def _page(self, items: list[dict[str, Any]], query: str) -> dict[str, Any]:
        """One page of a list, as OpenAI pages them: `after` an id, at most `limit` (and at
        most `page_size`, so a test sees the SDK fetch the next page)."""
        args = urllib.parse.parse_qs(query)
        after = args.get("after", [""])[0]
        if after:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        size = min(int(args.get("limit", ["20"])[0]), self.page_size)
        data = [{k: v for k, v in item.items() if k != "retrieves"} for item in items[:size]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(items) > size,
        }

    def _end(self, batch: dict[str, Any]) -> None:
        output, errors = [], []
        for line in (json.loads(x) for x in self.files[batch["input_file_id"]].splitlines()):
            custom_id = line["custom_id"]
            if custom_id in self.batch_unanswered:
                error = {"code": "batch_expired", "message": "not run before the window ended"}
                errors.append({"custom_id": custom_id, "response": None, "error": error})
            elif custom_id in self.batch_failed:
                body = {"error": {"message": "server error", "type": "server_error"}}
                response = {"status_code": 500, "body": body}
                errors.append({"custom_id": custom_id, "response": response, "error": None})
            else:
                body = self._completion(ReceivedRequest(line["url"], {}, line["body"]))
                response = {"status_code": 200, "body": body}
                output.append({"custom_id": custom_id, "response": response, "error": None})
        for name, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows)
                batch[name] = file_id
        batch["status"] = (
            "expired" if self.batch_unanswered & {e["custom_id"] for e in errors} else "completed"
        )
        batch["request_counts"] = {
            "total": len(output) + len(errors),
            "completed": len(output),
            "failed": len(errors),
        }

    def _completion(self, request: ReceivedRequest) -> dict[str, Any]:
        reply = self.replies.get(_schema_name(request.body), self.default_reply)
        if callable(reply):
            reply = reply(request.body)
        content = reply if isinstance(reply, str) else json.dumps(reply)
        model = str(request.body.get("model", "test-model"))
        return chat_completion_body(content, model=model, cached_tokens=self.cached_tokens)


OPENAI_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip


def embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/embeddings response in OpenAI's shape: 8 unnormalised dimensions from the text's
    letters (texts with the same letters embed alike), listed in reverse order."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": [float(1 + sum(ord(c) % 8 == d for c in t)) for d in range(8)],
        }
        for i, t in enumerate(texts)
    ]
    tokens = sum(len(t.split()) for t in texts)
    return {
        "object": "list",
        "data": data[::-1],
        "model": str(body.get("model", "text-embedding-3-small")),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def flag_marked(text: str) -> set[str]:
    """The default judgement: a text is flagged for each "UNSAFE:<category>" it contains."""
    return {c for c in OPENAI_MODERATION_CATEGORIES if f"UNSAFE:{c}" in text}


def moderation_body(body: dict[str, Any], judge: Any) -> dict[str, Any]:
    """A /v1/moderations response in OpenAI's shape, one result per input text."""
    texts = body.get("input")
    results = []
    for text in [texts] if isinstance(texts, str) else texts or []:
        hits = judge(text)
        results.append(
            {
                "flagged": bool(hits),
                "categories": {c: c in hits for c in OPENAI_MODERATION_CATEGORIES},
                "category_scores": {
                    c: 0.97 if c in hits else 0.001 for c in OPENAI_MODERATION_CATEGORIES
                },
                "category_applied_input_types": {c: ["text"] for c in OPENAI_MODERATION_CATEGORIES},
            }
        )
    return {"id": "modr-test", "model": str(body.get("model", "")), "results": results}


def _file_object(file_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": len(str(body.get("file", ""))),
        "created_at": int(time.time()),
        "filename": str(body.get("filename", "batch.jsonl")),
        "purpose": body.get("purpose", "batch"),
        "status": "processed",
    }


def _batch_object(batch_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.get("endpoint"),
        "input_file_id": body.get("input_file_id"),
        "completion_window": body.get("completion_window"),
        "metadata": body.get("metadata"),
        "status": "in_progress",
        "created_at": int(time.time()),
        "output_file_id": None,
        "error_file_id": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "retrieves": 0,
    }


def _schema_name(body: dict[str, Any]) -> str:
    """The json_schema name the client asked for; "" for json_object and plain text."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return ""
    return str((fmt.get("json_schema") or {}).get("name", ""))


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            headers = {k.lower(): v for k, v in self.headers.items()}
            content_type = headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                body = multipart_fields(content_type, raw)
            else:
                body = json.loads(raw or b"{}")
            self._send(server.respond(ReceivedRequest(self.path, headers, body)))

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._send(server.respond(ReceivedRequest(self.path, headers, {})))

        def _send(self, response: ScriptedResponse) -> None:
            if response.delay_s and server.stopping.wait(response.delay_s):
                return
            body = response.body if isinstance(response.body, str) else json.dumps(response.body)
            payload = body.encode()
            try:
                self.send_response(response.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests); nothing to tell it

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

    return Handler


@contextlib.contextmanager
def running_openai_server(mode: Mode = "json_schema") -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(mode)
    server.start()
    try:
        yield server
    finally:
        server.stop()
