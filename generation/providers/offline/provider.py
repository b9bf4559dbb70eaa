"""The offline provider: each step of a simulated call, in order (call log, outage, fault roll,
content, usage, rate limit, latency), built from this package's modules."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import NoReturn

from django.conf import settings

from generation.providers.base import (
    BatchLine,
    BatchLineResult,
    BatchState,
    Completion,
    CompletionRequest,
    InvalidOutputError,
    ModerationRequest,
    ModerationResult,
    PermanentProviderError,
    Provider,
    TransientProviderError,
)
from generation.providers.batchfiles import line_result, read_lines
from generation.providers.offline.batch_http import SdkBatchClient, sdk_client
from generation.providers.offline.batches import BatchEmulator
from generation.providers.offline.calllog import call_log_append
from generation.providers.offline.content import Data, build_content, part_content
from generation.providers.offline.content.rules import followed_rules
from generation.providers.offline.faults import (
    TRANSIENT_FAULTS,
    FaultRates,
    OutageFile,
    make_invalid,
    make_unsafe,
)
from generation.providers.offline.judge import simulated_verdict
from generation.providers.offline.latency import DEFAULT_LATENCY, TierLatency, wait
from generation.providers.offline.moderation import UNSAFE_SENTENCE, simulated_moderation
from generation.providers.offline.ratelimit import admit, rate_limit_from_settings
from generation.providers.offline.seeding import stable_int
from generation.providers.offline.usage import SeenPrefixes, usage_of
from generation.providers.ratelimit import ProviderRateLimit
from generation.schemas import Tier
from generation.tokens import count_tokens, encoding


class OfflineProvider(Provider):
    """Simulated LLM provider (no network, no key): templated content, real token counts,
    modelled latency and injectable faults. See the package docstring."""

    name = "offline"

    def __init__(
        self,
        *,
        latency_scale: float = 0.0,
        faults: FaultRates | str = "",
        seed: int = 0,
        call_log: str = "",
        outage_file: str = "",
        latency: Mapping[Tier, TierLatency] | None = None,
        rate_limit: ProviderRateLimit | None = None,
        batches: BatchEmulator | None = None,
        batch_http: bool = False,
    ) -> None:
        if not latency_scale >= 0.0:
            raise ValueError(f"latency_scale must be >= 0, got {latency_scale!r}")
        self.latency_scale = float(latency_scale)
        self.faults = faults if isinstance(faults, FaultRates) else FaultRates.parse(faults)
        self.seed = int(seed)
        self.call_log = call_log
        self.latency: dict[Tier, TierLatency] = {**DEFAULT_LATENCY, **(latency or {})}
        self._outage = OutageFile(outage_file)
        self.rate_limit = rate_limit if rate_limit is not None and rate_limit.enabled else None
        self._prefixes = SeenPrefixes()
        # Faults come from their own stream so content stays deterministic per request, while
        # the fault sequence is reproducible for one process given the seed.
        self._fault_rng = random.Random(stable_int("faults", self.seed))
        self._fault_lock = threading.Lock()
        self.batches = batches
        self.batch_http = batch_http

    @classmethod
    def from_settings(cls) -> OfflineProvider:
        outage_file = getattr(settings, "COURSEGEN_OFFLINE_OUTAGE_FILE", "") or os.environ.get(
            "COURSEGEN_OFFLINE_OUTAGE_FILE", ""
        )
        return cls(
            latency_scale=float(settings.COURSEGEN_OFFLINE_LATENCY_SCALE),
            faults=FaultRates.parse(settings.COURSEGEN_OFFLINE_FAULTS),
            seed=int(settings.COURSEGEN_OFFLINE_SEED),
            call_log=settings.COURSEGEN_OFFLINE_CALL_LOG,
            outage_file=outage_file,
            rate_limit=rate_limit_from_settings(),
            batches=BatchEmulator(
                settings.COURSEGEN_OFFLINE_BATCH_DIR,
                delay_s=settings.COURSEGEN_OFFLINE_BATCH_DELAY_S,
                failed=settings.COURSEGEN_OFFLINE_BATCH_FAILED,
                unanswered=settings.COURSEGEN_OFFLINE_BATCH_UNANSWERED,
                seed=int(settings.COURSEGEN_OFFLINE_SEED),
            ),
            batch_http=settings.COURSEGEN_OFFLINE_BATCH_HTTP,
        )

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.perf_counter()
        if self.call_log:
            call_log_append(self.call_log, request)
        self._check_outage(started)
        fault = self._roll_fault()
        if fault in TRANSIENT_FAULTS:
            self._fail_transiently(fault, request.tier, started)
        data, raw_text, problem = self._render(request, fault)
        usage = usage_of(request, raw_text, self._prefixes)
        headers = admit(self.rate_limit, request.model, usage, started)
        latency_s = self._wait(self.latency[request.tier].seconds(usage.output_tokens), started)
        if problem:
            raise InvalidOutputError(problem, raw_text=raw_text, usage=usage, latency_s=latency_s)
        return Completion(
            data=data,
            raw_text=raw_text,
            usage=usage,
            latency_s=latency_s,
            model=request.model,
            provider=self.name,
            headers=headers,
        )

    def moderate(self, request: ModerationRequest) -> ModerationResult:
        """The simulated moderation endpoint (offline/moderation.py): rules, not a model."""
        return simulated_moderation(request)

    # --- the emulated Files and Batches endpoints (offline/batches.py) ---------------------------
    def _emulator(self) -> BatchEmulator:
        if self.batches is None:
            raise PermanentProviderError("this offline provider has no batch emulator")
        return self.batches

    # With `batch_http` (COURSEGEN_OFFLINE_BATCH_HTTP, the default) every call goes through the
    # official SDK to the emulator's loopback server (offline/batch_http.py), as a real
    # provider's would; without, straight to the emulator.
    def _sdk(self) -> SdkBatchClient | None:
        return sdk_client(self._emulator(), self.complete) if self.batch_http else None

    def batch_upload(self, lines: Sequence[BatchLine], *, filename: str = "batch.jsonl") -> str:
        if sdk := self._sdk():
            return sdk.batch_upload(lines, filename=filename)
        return self._emulator().upload(lines, filename=filename)

    def batch_file_find(self, filename: str, *, since: float) -> str | None:
        if sdk := self._sdk():
            return sdk.batch_file_find(filename, since=since)
        return self._emulator().file_find(filename, since=since)

    def batch_find(self, key: str, *, since: float) -> BatchState | None:
        if sdk := self._sdk():
            return sdk.batch_find(key, since=since)
        return self._emulator().find(key, since=since)

    def batch_create(self, *, input_file_id: str, metadata: Mapping[str, str]) -> BatchState:
        if sdk := self._sdk():
            return sdk.batch_create(input_file_id=input_file_id, metadata=metadata)
        return self._emulator().create(input_file_id=input_file_id, metadata=metadata)

    def batch_retrieve(self, batch_id: str) -> BatchState:
        if sdk := self._sdk():
            return sdk.batch_retrieve(batch_id)
        return self._emulator().retrieve(batch_id, self.complete)

    def batch_results(self, state: BatchState) -> list[BatchLineResult]:
        if sdk := self._sdk():
            return sdk.batch_results(state)
        files = [f for f in (state.output_file_id, state.error_file_id) if f]
        lines = [line for f in files for line in read_lines(self._emulator().content(f))]
        return [line_result(line, provider=self.name) for line in lines]

    def batch_cancel(self, batch_id: str) -> BatchState:
        if sdk := self._sdk():
            return sdk.batch_cancel(batch_id)
        return self._emulator().cancel(batch_id)

    # --- steps of complete() ---------------------------------------------------------------------
    def _render(self, request: CompletionRequest, fault: str | None) -> tuple[Data, str, str]:
        """The response body, and a problem message when it is not a usable JSON object."""
        if request.purpose == "judge":
            data = simulated_verdict(request.context.get("judged") or {})
            if fault == "invalid":  # a verdict that misses a criterion fails its schema
                data.pop(sorted(data)[0])
            return self._serialise(request, data, fault)
        context = {**request.context, "prompt_rules": followed_rules(request.messages)}
        data = build_content(request.task_kind, context, seed=self.seed)
        part = request.context.get("part") or ""
        if part:  # targeted regeneration: a request for one part of the object
            data = part_content(request.task_kind, context, data, part, self.seed)
        if fault == "invalid":
            with self._fault_lock:
                pick = self._fault_rng.random()
            data = make_invalid(request.task_kind, data, part=part, pick=pick)
        elif fault == "unsafe":
            data = make_unsafe(data, UNSAFE_SENTENCE)
        return self._serialise(request, data, fault)

    def _serialise(
        self, request: CompletionRequest, data: Data, fault: str | None
    ) -> tuple[Data, str, str]:
        raw_text, problem = json.dumps(data), ""
        if fault == "malformed":
            raw_text = raw_text[: max(1, len(raw_text) * 3 // 5)]  # a proper prefix never parses
            problem = "simulated malformed output: the response is truncated JSON"
        limit = request.max_output_tokens
        if limit is not None and count_tokens(raw_text) > limit:
            # A real model stops mid-JSON at the token limit; the caller sees unparseable text.
            raw_text = encoding().decode(encoding().encode(raw_text, disallowed_special=())[:limit])
            problem = f"output reached max_output_tokens={limit} and was cut off"
        return data, raw_text, problem

    def _wait(self, modelled_s: float, started: float) -> float:
        return wait(modelled_s, scale=self.latency_scale, started=started)

    def _roll_fault(self) -> str | None:
        with self._fault_lock:
            roll = self._fault_rng.random()
        return self.faults.pick(roll)

    def _fail_transiently(self, fault: str, tier: Tier, started: float) -> NoReturn:
        message, status, ttft_units = TRANSIENT_FAULTS[fault]
        latency_s = self._wait(self.latency[tier].time_to_first_token_s * ttft_units, started)
        # Short enough that retry tests never stall, scaled like the rest of the simulation.
        retry_after = min(1.0, 0.05 * max(self.latency_scale, 0.01)) if status == 429 else None
        raise TransientProviderError(
            message, status_code=status, retry_after=retry_after, latency_s=latency_s
        )

    def _check_outage(self, started: float) -> None:
        until = self._outage.until()
        if until is not None and until > time.time():
            raise TransientProviderError(
                f"simulated outage until {until:.0f} (503 Service Unavailable)",
                status_code=503,
                latency_s=time.perf_counter() - started,
            )
