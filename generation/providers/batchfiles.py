"""The Batch API's file formats, shared by the openai provider and the offline emulator.

An output or error file has one JSON line per request:
`{"custom_id": ..., "response": {"status_code": 200, "body": <chat.completion>}, "error": null}`,
or `"response": null` with `"error": {"code": "batch_expired", "message": ...}` for a request
the batch never ran. This module turns such a line into a `BatchLineResult` with the same
classification a live call gets: a completion (or `InvalidOutputError` when its text is not a
JSON object), a transient error (429, 5xx, expired, cancelled: worth another try), or a
permanent one (other 4xx).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from generation import parts
from generation.providers.base import (
    BatchLineResult,
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Message,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Usage,
)
from generation.schemas import TaskKind, Tier

UNANSWERED_CODES = ("batch_expired", "batch_cancelled")


def jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode()


def read_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def line_result(line: dict[str, Any], *, provider: str) -> BatchLineResult:
    """One line of an output or error file, classified."""
    custom_id = str(line.get("custom_id", ""))
    response = line.get("response") or None
    error = line.get("error") or None
    if response is None or error is not None:
        code = str((error or {}).get("code") or "no_response")
        message = str((error or {}).get("message") or "the batch returned no response")
        return BatchLineResult(
            custom_id, error=TransientProviderError(f"{code}: {message}"), code=code
        )
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if status != 200:
        return BatchLineResult(
            custom_id, error=_status_error(status, body), code=f"http_{status}", response=body
        )
    try:
        completion = completion_from_body(body, provider=provider)
    except InvalidOutputError as exc:
        return BatchLineResult(custom_id, error=exc, code="invalid_output", response=body)
    return BatchLineResult(custom_id, completion=completion, response=body)


def completion_from_body(body: dict[str, Any], *, provider: str) -> Completion:
    """A chat.completion body (a dict) as a Completion; InvalidOutputError, as a live call
    raises it, when its text is not one JSON object."""
    usage = _usage(body.get("usage") or {})
    choices = body.get("choices") or []
    if not choices:
        raise InvalidOutputError("the reply has no choices", raw_text="", usage=usage)
    choice = choices[0]
    message = choice.get("message") or {}
    if message.get("refusal"):
        refusal = str(message["refusal"])
        raise InvalidOutputError(f"the model refused: {refusal}", raw_text=refusal, usage=usage)
    text = str(message.get("content") or "")
    if choice.get("finish_reason") == "length":
        raise InvalidOutputError(
            "the reply was cut off at the output token limit", raw_text=text, usage=usage
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidOutputError(
            f"the reply is not JSON: {exc}", raw_text=text, usage=usage
        ) from None
    if not isinstance(data, dict):
        raise InvalidOutputError(
            f"the reply is JSON but not an object (got {type(data).__name__})",
            raw_text=text,
            usage=usage,
        )
    return Completion(
        data=data,
        raw_text=text,
        usage=usage,
        latency_s=0.0,
        model=str(body.get("model") or ""),
        provider=provider,
    )


def chat_completion(completion: Completion, *, request_id: str) -> dict[str, Any]:
    """A Completion as the chat.completion body of an output line."""
    message = {"role": "assistant", "content": completion.raw_text, "refusal": None}
    usage = completion.usage
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": 0,
        "model": completion.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        },
    }


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )


def _status_error(status: int, body: dict[str, Any]) -> ProviderError:
    detail = body.get("error") if isinstance(body, dict) else None
    message = (detail or {}).get("message") if isinstance(detail, dict) else None
    text = f"batch line {status}: {message or json.dumps(body)[:300]}"
    if status == 429 or status >= 500 or status == 0:
        return TransientProviderError(text, status_code=status)
    return PermanentProviderError(text, status_code=status)


# A request as a row keeps it (a batch line's repair, the emulator's input file): its whole
# context too (real providers read only the messages; the simulator answers from the context).
def request_dump(request: CompletionRequest) -> dict[str, Any]:
    return {
        "messages": [m.as_dict() for m in request.messages],
        "schema": _schema_ref(request.schema),
        "model": request.model,
        "tier": request.tier.value,
        "task_kind": request.task_kind.value,
        "context": json.loads(json.dumps(dict(request.context), default=str)),
        "max_output_tokens": request.max_output_tokens,
        "purpose": request.purpose,
    }


def request_load(data: dict[str, Any]) -> CompletionRequest:
    return CompletionRequest(
        messages=tuple(Message(m["role"], m["content"]) for m in data["messages"]),
        schema=_schema_load(str(data["schema"])),
        model=data["model"],
        tier=Tier(data["tier"]),
        task_kind=TaskKind(data["task_kind"]),
        context=data["context"],
        max_output_tokens=data["max_output_tokens"],
        purpose=data["purpose"],
    )


def _schema_ref(schema: type[BaseModel]) -> str:
    """module:QualName, or module:QualName#field for a field part's model (made on demand)."""
    origin = parts.part_origin(schema)
    if origin is not None:
        return f"{_schema_ref(origin[0])}#{origin[1]}"
    return f"{schema.__module__}:{schema.__qualname__}"


def _schema_load(ref: str) -> type[BaseModel]:
    ref, _, field = ref.partition("#")
    module, _, name = ref.partition(":")
    schema: Any = importlib.import_module(module)
    for attribute in name.split("."):
        schema = getattr(schema, attribute)
    return parts.part_schema(schema, field) if field else schema
