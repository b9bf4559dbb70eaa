"""The simulator's Files and Batches endpoints: batches that end after a delay, with a share of
failed lines and a share left unanswered at expiry (docs/batch.md).

State lives in a directory (COURSEGEN_OFFLINE_BATCH_DIR) shared by every process on the machine,
so a worker or beat restarted mid-poll finds its batches where they were. A batch is `in_progress`
until `delay_s` after its creation; the first retrieve after that answers its lines, each with the
offline provider's own `complete` (content, usage, injected faults), and writes the output and
error files in the Batch API's format. Which lines fail or go unanswered is drawn per
`custom_id` from the seed, so a batch ends the same way whichever process ends it. A batch with an
unanswered line ends `expired`; its answered lines are in the output file all the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from generation.providers.base import (
    BATCH_KEY,
    BatchLine,
    BatchState,
    Completion,
    CompletionRequest,
    InvalidOutputError,
    ProviderError,
    TransientProviderError,
)
from generation.providers.batchfiles import (
    chat_completion,
    jsonl,
    read_lines,
    request_dump,
    request_load,
)
from generation.providers.offline.seeding import stable_int

Answer = Callable[[CompletionRequest], Completion]


class BatchEmulator:
    def __init__(
        self, root: str | Path, *, delay_s: float, failed: float, unanswered: float, seed: int
    ) -> None:
        for name, share in (("failed", failed), ("unanswered", unanswered)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"the share of {name} lines must be 0-1, got {share}")
        self.root = Path(root)
        self.delay_s, self.failed, self.unanswered, self.seed = delay_s, failed, unanswered, seed

    # --- Files ------------------------------------------------------------------------------------
    def upload(self, lines: Sequence[BatchLine], *, filename: str = "batch.jsonl") -> str:
        file_id = f"file-offline-{uuid.uuid4().hex[:20]}"
        rows = [
            {"custom_id": line.custom_id, "request": request_dump(line.request)} for line in lines
        ]
        _write(self._dir("files") / f"{file_id}.jsonl", jsonl(rows))
        meta = {"id": file_id, "filename": filename, "created_at": time.time()}
        _write(self._dir("uploads") / f"{file_id}.json", json.dumps(meta).encode())
        return file_id

    def file_find(self, filename: str, *, since: float) -> str | None:
        """An uploaded input file by its name (files.list), newest first."""
        found = [m for m in _records(self._dir("uploads")) if m["filename"] == filename]
        found = [m for m in found if m["created_at"] >= since]
        return max(found, key=lambda m: m["created_at"])["id"] if found else None

    def content(self, file_id: str) -> str:
        return (self._dir("files") / f"{file_id}.jsonl").read_text()

    # --- Batches ----------------------------------------------------------------------------------
    def create(self, *, input_file_id: str, metadata: Mapping[str, str]) -> BatchState:
        lines = read_lines(self.content(input_file_id))  # a missing file fails here, as at OpenAI
        batch_id = f"batch_offline_{uuid.uuid4().hex[:20]}"
        record = {
            "id": batch_id,
            "status": "in_progress",
            "input_file_id": input_file_id,
            "created_at": time.time(),
            "metadata": dict(metadata),
            "total": len(lines),
        }
        _write(self._path(batch_id), json.dumps(record).encode())
        return _state(record)

    def find(self, key: str, *, since: float) -> BatchState | None:
        """A batch by its metadata's coursegen_key (batches.list), newest first."""
        found = [
            r
            for r in _records(self._dir("batches"))
            if (r.get("metadata") or {}).get(BATCH_KEY) == key and r["created_at"] >= since
        ]
        return _state(max(found, key=lambda r: r["created_at"])) if found else None

    def uploads(self) -> list[dict[str, Any]]:
        """The uploaded input files (files.list), newest first."""
        found = _records(self._dir("uploads"))
        return [
            {"object": "file", "purpose": "batch", "status": "processed", "bytes": 0}
            | m
            | {"created_at": int(m["created_at"])}
            for m in sorted(found, key=lambda m: m["created_at"], reverse=True)
        ]

    def records(self) -> list[dict[str, Any]]:
        """Every batch's record (batches.list), newest first."""
        found = _records(self._dir("batches"))
        return sorted(found, key=lambda r: r["created_at"], reverse=True)

    def record(self, batch_id: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self._path(batch_id).read_text())
        return record

    def count(self) -> int:
        """How many batches were ever created here (tests: none made twice)."""
        return len(list(self._dir("batches").glob("*.json")))

    def retrieve(self, batch_id: str, answer: Answer) -> BatchState:
        with self._locked(batch_id):
            record = json.loads(self._path(batch_id).read_text())
            due = record["created_at"] + self.delay_s
            if record["status"] == "in_progress" and time.time() >= due:
                record = self._end(record, answer)
                _write(self._path(batch_id), json.dumps(record).encode())
        return _state(record)

    def cancel(self, batch_id: str) -> BatchState:
        with self._locked(batch_id):
            record = json.loads(self._path(batch_id).read_text())
            if record["status"] == "in_progress":
                lines = read_lines(self.content(record["input_file_id"]))
                errors = [_unanswered(row["custom_id"], "batch_cancelled") for row in lines]
                record |= {"status": "cancelled", "error_file_id": self._file(errors)}
                _write(self._path(batch_id), json.dumps(record).encode())
        return _state(record)

    def _end(self, record: dict[str, Any], answer: Answer) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for row in read_lines(self.content(record["input_file_id"])):
            custom_id = row["custom_id"]
            roll = random.Random(stable_int("batch-line", self.seed, custom_id)).random()
            if roll < self.unanswered:
                errors.append(_unanswered(custom_id, "batch_expired"))
            elif roll < self.unanswered + self.failed:
                errors.append(_failed(custom_id, 500, "simulated failure of this batch line"))
            else:
                line, ok = _answer(custom_id, request_load(row["request"]), answer)
                (output if ok else errors).append(line)
        expired = any((e.get("error") or {}).get("code") == "batch_expired" for e in errors)
        return record | {
            "status": "expired" if expired else "completed",
            "output_file_id": self._file(output) if output else None,
            "error_file_id": self._file(errors) if errors else None,
            "completed": len(output),
            "failed": len(errors),
        }

    def _file(self, rows: list[dict[str, Any]]) -> str:
        file_id = f"file-offline-{uuid.uuid4().hex[:20]}"
        _write(self._dir("files") / f"{file_id}.jsonl", jsonl(rows))
        return file_id

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _path(self, batch_id: str) -> Path:
        if not batch_id.startswith("batch_offline_") or "/" in batch_id:
            raise TransientProviderError(f"no such batch {batch_id!r}", status_code=404)
        return self._dir("batches") / f"{batch_id}.json"

    @contextlib.contextmanager
    def _locked(self, batch_id: str) -> Iterator[None]:
        """One process ends a batch; another waits and reads what it wrote."""
        with open(self._dir("batches") / f"{batch_id}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _answer(custom_id: str, request: CompletionRequest, answer: Answer) -> tuple[dict, bool]:
    """A line answered by the simulator; an injected transport fault fails the line."""
    try:
        completion = answer(request)
    except InvalidOutputError as exc:  # a 200 with unusable text: the re-ask path repairs it
        completion = Completion({}, exc.raw_text, exc.usage, 0.0, request.model, "offline")
    except ProviderError as exc:
        status = getattr(exc, "status_code", None) or 500
        return _failed(custom_id, status, str(exc)), False
    body = chat_completion(completion, request_id=custom_id)
    line = {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None}
    return line | {"response": {"status_code": 200, "body": body}}, True


def _failed(custom_id: str, status: int, message: str) -> dict[str, Any]:
    body = {"error": {"message": message, "type": "server_error"}}
    response = {"status_code": status, "body": body}
    line = {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response}
    return line | {"error": None}


def _unanswered(custom_id: str, code: str) -> dict[str, Any]:
    message = "This request could not be executed before the batch ended."
    error = {"code": code, "message": message}
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": None} | {
        "error": error
    }


def _state(record: dict[str, Any]) -> BatchState:
    return BatchState(
        id=record["id"],
        status=record["status"],
        output_file_id=record.get("output_file_id"),
        error_file_id=record.get("error_file_id"),
        total=int(record.get("total", 0)),
        completed=int(record.get("completed", 0)),
        failed=int(record.get("failed", 0)),
    )


def _records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in folder.glob("*.json")]


def _write(path: Path, data: bytes) -> None:
    """Whole files only: a reader never sees half of one (write aside, then rename)."""
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
