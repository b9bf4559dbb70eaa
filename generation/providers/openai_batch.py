"""The Batch API of OpenAI (and compatible servers) through the official SDK (docs/batch.md):
`client.files.create` uploads the JSONL, `client.batches.create`/`retrieve`/`cancel` run the
batch, `client.files.content` reads its output and error files. Mixed into OpenAIProvider, whose
request bodies, constraint steps and error classification it uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import openai

from generation.providers.base import (
    BATCH_KEY,
    BatchLine,
    BatchLineResult,
    BatchState,
    CompletionRequest,
)
from generation.providers.batchfiles import jsonl, line_result, read_lines
from generation.schemas import CONSTRAINT_LADDER, ConstraintStep

if TYPE_CHECKING:
    from generation.providers.base import ProviderError

BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
_MAX_ERROR_CHARS = 500
T = TypeVar("T")


class OpenAIBatches:
    name: str
    _client: openai.OpenAI

    def _body(self, request: CompletionRequest, *, step: ConstraintStep) -> dict[str, Any]:
        raise NotImplementedError

    def constraint_step(self, model: str) -> ConstraintStep | None:
        raise NotImplementedError

    def _classify(self, exc: openai.OpenAIError, latency_s: float) -> ProviderError:
        raise NotImplementedError

    # One JSONL line per request at the step this server settled on for the model (a batch
    # cannot step down the ladder: a refused line fails, and its retry goes live).
    def batch_upload(self, lines: Sequence[BatchLine], *, filename: str = "batch.jsonl") -> str:
        rows = [
            {
                "custom_id": line.custom_id,
                "method": "POST",
                "url": BATCH_ENDPOINT,
                "body": self._body(
                    line.request,
                    step=self.constraint_step(line.request.model) or CONSTRAINT_LADDER[0],
                ),
            }
            for line in lines
        ]
        upload = self._batch_call(
            lambda: self._client.files.create(file=(filename, jsonl(rows)), purpose="batch")
        )
        return str(upload.id)

    def batch_create(self, *, input_file_id: str, metadata: Mapping[str, str]) -> BatchState:
        return _batch_state(
            self._batch_call(
                lambda: self._client.batches.create(
                    input_file_id=input_file_id,
                    endpoint=BATCH_ENDPOINT,
                    completion_window="24h",
                    metadata=dict(metadata),
                )
            )
        )

    # Both lists come newest first, a page at a time (the SDK fetches the next page as the loop
    # goes on); the walk stops at the first item older than `since`.
    def batch_file_find(self, filename: str, *, since: float) -> str | None:
        def walk() -> str | None:
            for upload in self._client.files.list(purpose="batch", order="desc", limit=100):
                if upload.created_at < since:
                    return None
                if upload.filename == filename:
                    return str(upload.id)
            return None

        return self._batch_call(walk)

    def batch_find(self, key: str, *, since: float) -> BatchState | None:
        def walk() -> BatchState | None:
            for batch in self._client.batches.list(limit=100):
                if batch.created_at < since:
                    return None
                if (batch.metadata or {}).get(BATCH_KEY) == key:
                    return _batch_state(batch)
            return None

        return self._batch_call(walk)

    def batch_retrieve(self, batch_id: str) -> BatchState:
        return _batch_state(self._batch_call(lambda: self._client.batches.retrieve(batch_id)))

    def batch_results(self, state: BatchState) -> list[BatchLineResult]:
        results = []
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id:
                text = self._file_text(file_id)
                results += [line_result(line, provider=self.name) for line in read_lines(text)]
        return results

    def _file_text(self, file_id: str) -> str:
        return self._batch_call(lambda: self._client.files.content(file_id).text)

    def batch_cancel(self, batch_id: str) -> BatchState:
        return _batch_state(self._batch_call(lambda: self._client.batches.cancel(batch_id)))

    def _batch_call(self, call: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            return call()
        except openai.OpenAIError as exc:
            raise self._classify(exc, time.monotonic() - started) from exc


def _batch_state(batch: Any) -> BatchState:
    counts = batch.request_counts
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    return BatchState(
        id=batch.id,
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        errors="; ".join(f"{e.code}: {e.message}" for e in errors)[:_MAX_ERROR_CHARS],
    )
