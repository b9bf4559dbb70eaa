"""Offline provider: a SIMULATOR of an LLM provider, not a language model.

It makes no network calls and needs no key. The demo, the tests, the benchmark and fault-injection
runs use it in place of a real model. Every response is built from templates filled with the facts
the pipeline puts in `CompletionRequest.context` (topic, level, place in the outline, learning
objectives ...), so the content reads like templated teaching prose about the topic and is the
same every time for the same topic, task kind, outline position and COURSEGEN_OFFLINE_SEED.

What it does simulate closely is how a real provider behaves:

* output that validates against the request's schema and passes the content checks, sized like
  real course content; a request for one part (`context["part"]`, targeted regeneration) gets that
  part alone, and a `variant` (a regenerated version) draws different content;
* token usage counted with tiktoken, including prompt-cache hits when a long system prompt repeats;
* latency: a per-tier time to first token plus output tokens at a per-tier rate, times a scale;
* injected faults (429, 503, timeouts, truncated JSON, schema-invalid JSON with one varied
  mistake in one part), a file-driven outage, and cut-off output when `max_output_tokens` is too
  small;
* an optional call log, one JSON line per call, safe across threads and processes.

Content is always English whatever `language` says, and free-text `instructions` are ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from django.conf import settings

from generation.checks import is_near_duplicate
from generation.parts import extract, merge, parts_of
from generation.providers.base import (
    Completion,
    CompletionRequest,
    InvalidOutputError,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.providers.ratelimit import ProviderRateLimit
from generation.schemas import OUTPUT_SCHEMAS, TaskKind, Tier
from generation.tokens import count_message_tokens, count_tokens, encoding

__all__ = [
    "DEFAULT_LATENCY",
    "FAULT_KINDS",
    "FaultRates",
    "OfflineProvider",
    "TierLatency",
    "build_content",
    "make_invalid",
]

Data = dict[str, Any]


# === Latency model ================================================================================
@dataclass(frozen=True)
class TierLatency:
    """How long a simulated call takes on one tier, before `latency_scale` is applied."""

    time_to_first_token_s: float
    output_tokens_per_s: float

    def seconds(self, output_tokens: int) -> float:
        return self.time_to_first_token_s + output_tokens / self.output_tokens_per_s


DEFAULT_LATENCY: Mapping[Tier, TierLatency] = {
    Tier.COMPLEX: TierLatency(time_to_first_token_s=0.5, output_tokens_per_s=80.0),
    Tier.SIMPLE: TierLatency(time_to_first_token_s=0.3, output_tokens_per_s=150.0),
}


# === Fault injection ==============================================================================
FAULT_KINDS = ("rate_limit", "server_error", "timeout", "malformed", "invalid")
_TRANSIENT_FAULTS = {
    # fault: (message, HTTP status, wait before failing in units of time-to-first-token)
    "rate_limit": ("simulated rate limit (429 Too Many Requests)", 429, 0.0),
    "server_error": ("simulated server error (503 Service Unavailable)", 503, 1.0),
    "timeout": ("timeout: simulated request timeout", None, 2.0),
}


@dataclass(frozen=True)
class FaultRates:
    """Probability of each injected fault per call; at most one fault fires per call."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    timeout: float = 0.0
    malformed: float = 0.0
    invalid: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> FaultRates:
        """Parse "rate_limit=0.05,invalid=0.1"; raise ValueError naming the bad part."""
        rates: dict[str, float] = {}
        for part in (p.strip() for p in (spec or "").split(",")):
            if part:
                name, rate = _parse_fault_part(part, rates)
                rates[name] = rate
        total = sum(rates.values())
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"fault rates in {spec!r} sum to {total:g}; they must sum to at most 1"
            )
        return cls(**rates)

    def pick(self, roll: float) -> str | None:
        """The fault a uniform roll in [0, 1) lands on, or None for a clean call."""
        threshold = 0.0
        for item in fields(self):
            threshold += getattr(self, item.name)
            if roll < threshold:
                return item.name
        return None


def _parse_fault_part(part: str, seen: Mapping[str, float]) -> tuple[str, float]:
    name, sep, value = (s.strip() for s in part.partition("="))
    if not sep:
        raise ValueError(f"bad fault spec part {part!r}: expected name=probability")
    if name not in FAULT_KINDS:
        raise ValueError(
            f"unknown fault {name!r} in fault spec part {part!r}; "
            f"expected one of {', '.join(FAULT_KINDS)}"
        )
    if name in seen:
        raise ValueError(f"fault {name!r} appears twice in the fault spec")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"bad fault spec part {part!r}: {value!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:  # also rejects nan, which fails every comparison
        raise ValueError(f"bad fault spec part {part!r}: probability must be between 0 and 1")
    return name, rate


class _SeenPrefixes:
    """A small thread-safe LRU set of prompt-prefix hashes: the simulated provider-side cache."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen_before(self, key: str) -> bool:
        """Record `key` and say whether it was already there."""
        with self._lock:
            seen = key in self._keys
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
            return seen


class _OutageFile:
    """A file holding a unix timestamp: while it is in the future, every call fails with 503."""

    def __init__(self, path: str) -> None:
        self.path = path
        # (mtime_ns, size) -> parsed timestamp, kept as one tuple so threads swap it atomically.
        self._cached: tuple[tuple[int, int], float | None] | None = None

    def until(self) -> float | None:
        if not self.path:
            return None
        try:
            stat = os.stat(self.path)  # the only syscall on the hot path when nothing changed
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cached
        if cached is None or cached[0] != stamp:
            cached = (stamp, _read_timestamp(self.path))
            self._cached = cached
        return cached[1]


def _read_timestamp(path: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return float(handle.read().strip())
    except (OSError, ValueError):
        return None  # half-written or garbage: no outage rather than a crash


# === The provider =================================================================================
class OfflineProvider(Provider):
    """Simulated LLM provider (no network, no key): templated content, real token counts,
    modelled latency and injectable faults. See the module docstring."""

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
    ) -> None:
        if not latency_scale >= 0.0:
            raise ValueError(f"latency_scale must be >= 0, got {latency_scale!r}")
        self.latency_scale = float(latency_scale)
        self.faults = faults if isinstance(faults, FaultRates) else FaultRates.parse(faults)
        self.seed = int(seed)
        self.call_log = call_log
        self.latency: dict[Tier, TierLatency] = {**DEFAULT_LATENCY, **(latency or {})}
        self._outage = _OutageFile(outage_file)
        self.rate_limit = rate_limit if rate_limit is not None and rate_limit.enabled else None
        self._prefixes = _SeenPrefixes()
        # Faults come from their own stream so content stays deterministic per request, while
        # the fault sequence is reproducible for one process given the seed.
        self._fault_rng = random.Random(_stable_int("faults", self.seed))
        self._fault_lock = threading.Lock()

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
            rate_limit=_rate_limit_from_settings(),
        )

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.perf_counter()
        self._log_call(request)
        self._check_outage(started)
        fault = self._roll_fault()
        if fault in _TRANSIENT_FAULTS:
            self._fail_transiently(fault, request.tier, started)
        data, raw_text, problem = self._render(request, fault)
        usage = self._usage(request, raw_text)
        headers = self._admit(request.model, usage, started)
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

    # --- steps of complete() ---------------------------------------------------------------------
    def _render(self, request: CompletionRequest, fault: str | None) -> tuple[Data, str, str]:
        """The response body, and a problem message when it is not a usable JSON object."""
        data = build_content(request.task_kind, request.context, seed=self.seed)
        part = request.context.get("part") or ""
        if part:  # targeted regeneration: a request for one part of the object
            data = _part_content(request.task_kind, request.context, data, part, self.seed)
        if fault == "invalid":
            with self._fault_lock:
                pick = self._fault_rng.random()
            data = make_invalid(request.task_kind, data, part=part, pick=pick)
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

    def _usage(self, request: CompletionRequest, raw_text: str) -> Usage:
        return Usage(
            input_tokens=count_message_tokens([m.as_dict() for m in request.messages]),
            cached_tokens=self._cached_tokens(request),
            output_tokens=count_tokens(raw_text),
        )

    def _cached_tokens(self, request: CompletionRequest) -> int:
        """Like OpenAI: a repeated prefix of >= 1024 tokens is served from cache in 128s."""
        if not request.messages or request.messages[0].role != "system":
            return 0
        system = request.messages[0].content
        tokens = count_tokens(system)
        if tokens < 1024:
            return 0
        key = hashlib.sha256(f"{request.model}\0{system}".encode()).hexdigest()
        return tokens // 128 * 128 if self._prefixes.seen_before(key) else 0

    def _wait(self, modelled_s: float, started: float) -> float:
        """Sleep the scaled modelled time; return the measured latency of the whole call."""
        delay = modelled_s * self.latency_scale
        if delay > 0:
            time.sleep(delay)
        return time.perf_counter() - started

    def _admit(self, model: str, usage: Usage, started: float) -> dict[str, str]:
        """The emulated provider rate limit: its headers, or a 429 when a bucket is short."""
        if self.rate_limit is None:
            return {}
        admission = self.rate_limit.take(model, usage.input_tokens + usage.output_tokens)
        if not admission.admitted:
            raise TransientProviderError(
                f"simulated provider rate limit for {model} (429 Too Many Requests)",
                status_code=429,
                retry_after=admission.retry_after_s,
                latency_s=time.perf_counter() - started,
            )
        return admission.headers

    def _roll_fault(self) -> str | None:
        with self._fault_lock:
            roll = self._fault_rng.random()
        return self.faults.pick(roll)

    def _fail_transiently(self, fault: str, tier: Tier, started: float) -> NoReturn:
        message, status, ttft_units = _TRANSIENT_FAULTS[fault]
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

    def _log_call(self, request: CompletionRequest) -> None:
        if not self.call_log:
            return
        context = request.context
        entry = {
            "ts": time.time(),
            "pid": os.getpid(),
            "model": request.model,
            "kind": request.task_kind.value,
            "task_key": context.get("task_key"),
            "job_id": context.get("job_id"),
            "attempt": context.get("attempt"),
        }
        line = (json.dumps(entry, default=str) + "\n").encode()
        # O_APPEND plus one write() per line: concurrent writers never interleave within a line.
        fd = os.open(self.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _rate_limit_from_settings() -> ProviderRateLimit | None:
    rpm, tpm = settings.COURSEGEN_OFFLINE_RPM, settings.COURSEGEN_OFFLINE_TPM
    if not rpm and not tpm:
        return None
    from generation.concurrency import redis_client

    client = redis_client(settings.REDIS_URL) if settings.REDIS_URL else None
    return ProviderRateLimit(rpm=rpm, tpm=tpm, client=client)


# === Deterministic seeding ========================================================================
def _stable_int(*parts: object) -> int:
    """A process-independent 64-bit seed (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _content_rng(
    seed: int, topic: str, kind: TaskKind, module: int, lesson: int, variant: int = 0
) -> random.Random:
    # A variant (a regenerated version, a replacement part) draws again, like sampling anew.
    extra = (variant,) if variant else ()
    return random.Random(
        _stable_int("content", seed, topic.strip().lower(), kind.value, module, lesson, *extra)
    )


# === Facts: the request context with fallbacks ====================================================
@dataclass(frozen=True)
class _Lesson:
    title: str
    focus: str  # a noun phrase for prose: "the key vocabulary of chemistry"
    summary: str
    objectives: tuple[str, ...]


@dataclass(frozen=True)
class _Module:
    title: str
    focus: str
    description: str
    lessons: tuple[_Lesson, ...]


@dataclass(frozen=True)
class _Course:
    title: str
    description: str
    modules: tuple[_Module, ...]


@dataclass(frozen=True)
class _Facts:
    seed: int
    topic: str
    audience: str
    level: str
    questions: int
    module_index: int
    lesson_index: int
    plan: _Course  # the simulator's own outline; fills in whatever the context leaves out
    course_title: str
    module: _Module
    module_title: str
    lesson_title: str
    lesson_focus: str
    lesson_summary: str
    objectives: tuple[str, ...]
    sketch: tuple[tuple[str, tuple[str, ...]], ...]  # (module title, lesson titles) per module

    def words(self, **extra: str) -> dict[str, str]:
        """The placeholders every template may use."""
        objectives = self.objectives
        second = (
            objectives[1] if len(objectives) > 1 else f"apply {self.lesson_focus} to a new case"
        )
        return {
            "t": self.topic,
            "T": _title_case(self.topic),
            "audience": self.audience,
            "level": self.level,
            "course": self.course_title,
            "module": self.module_title,
            "lesson": self.lesson_title,
            "focus": self.lesson_focus,
            "summary": _sentence(self.lesson_summary),
            "obj0": _lc_first(objectives[0]),
            "obj1": _lc_first(second),
            **extra,
        }


_LEVELS = ("beginner", "intermediate", "advanced")


def _facts(context: Mapping[str, Any], seed: int) -> _Facts:
    topic = _text(context, "topic", "General Studies")
    level = _text(context, "level", "beginner").lower()
    level = level if level in _LEVELS else "beginner"
    audience = _text(context, "audience", "general learners")
    size = (_int(context, "num_modules", 4), _int(context, "lessons_per_module", 3))
    plan = _plan_course(topic, level, audience, size, seed)
    module_index, lesson_index = _int(context, "module_index", 1), _int(context, "lesson_index", 1)
    module = plan.modules[(module_index - 1) % len(plan.modules)]
    lesson = module.lessons[(lesson_index - 1) % len(module.lessons)]
    lesson_title = _text(context, "lesson_title", lesson.title)
    return _Facts(
        seed=seed,
        topic=topic,
        audience=audience,
        level=level,
        questions=_int(context, "questions_per_lesson", 4),
        module_index=module_index,
        lesson_index=lesson_index,
        plan=plan,
        course_title=_text(context, "course_title", plan.title),
        module=module,
        module_title=_text(context, "module_title", module.title),
        lesson_title=lesson_title,
        lesson_focus=_focus(lesson_title, lesson),
        lesson_summary=_text(context, "lesson_summary", lesson.summary),
        objectives=_strings(context.get("learning_objectives")) or lesson.objectives,
        sketch=_sketch(context.get("outline")) or _plan_sketch(plan),
    )


def _focus(lesson_title: str, planned: _Lesson) -> str:
    """A noun phrase for prose; titles from someone else's outline get a neutral wrapper."""
    return planned.focus if lesson_title == planned.title else f"the ideas in {lesson_title}"


def _text(context: Mapping[str, Any], key: str, default: str) -> str:
    value = context.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else default


def _int(context: Mapping[str, Any], key: str, default: int) -> int:
    try:
        value = int(context.get(key) or default)
    except (TypeError, ValueError):
        value = default
    return max(1, value)


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v.strip() for v in value if isinstance(v, str) and v.strip())


def _sketch(outline: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The context's outline as (module title, lesson titles); () when absent or unusable."""
    if not isinstance(outline, list | tuple):
        return ()
    modules = []
    for item in outline:
        if (
            isinstance(item, Mapping)
            and isinstance(item.get("title"), str)
            and item["title"].strip()
        ):
            lessons = item.get("lessons") or []
            titles = [x.get("title") if isinstance(x, Mapping) else x for x in lessons]
            modules.append((item["title"].strip(), _strings(titles)))
    return tuple(modules)


def _plan_sketch(plan: _Course) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((m.title, tuple(lesson.title for lesson in m.lessons)) for m in plan.modules)


# --- Text helpers ---------------------------------------------------------------------------------
_SMALL_WORDS = {
    "a",
    "an",
    "and",
    "as",
    "at",
    "by",
    "for",
    "in",
    "of",
    "on",
    "or",
    "the",
    "to",
    "with",
}


def _title_case(text: str) -> str:
    """Title-case an all-lowercase topic; leave one the user already capitalised alone."""
    if text != text.lower():
        return text
    words = text.split()
    return " ".join(
        w if i and w in _SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(words)
    )


def _lc_first(text: str) -> str:
    text = text.strip().rstrip(".")
    if len(text) > 1 and text[1].isupper():  # an acronym such as "SQL" keeps its case
        return text
    return text[:1].lower() + text[1:]


def _uc_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _an(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _distinct(items: Sequence[str], limit: int) -> list[str]:
    """Drop entries equal after case/space normalisation (the schema rejects those)."""
    seen: set[str] = set()
    result = []
    for item in items:
        key = " ".join(item.lower().split())
        if key and key not in seen:
            seen.add(key)
            result.append(item)
    return result[:limit]


# === The simulator's own outline ==================================================================
@dataclass(frozen=True)
class _Phase:
    """One stage of a course arc: module title phrasings, its focus, its typical lessons."""

    titles: tuple[str, ...]
    focus: str
    lessons: tuple[tuple[str, str], ...]  # (title, focus) templates


_FOUNDATIONS = _Phase(
    ("Foundations of {T}", "Getting Started with {T}", "{T} Fundamentals"),
    "the foundations of {t}",
    (
        ("What {T} Is and Why It Matters", "the scope and purpose of {t}"),
        ("Key Vocabulary of {T}", "the key vocabulary of {t}"),
        ("How {T} Developed", "the development of {t}"),
        ("Setting Up to Learn {T}", "a practical setup for {t}"),
        ("A First Look at {T} in Action", "a first worked example of {t}"),
    ),
)
_CAPSTONE = _Phase(
    ("Capstone: Bringing {T} Together", "Putting It All Together: {T}", "Your {T} Project"),
    "bringing {t} together in a project",
    (
        ("Planning Your {T} Project", "project planning in {t}"),
        ("Building Your {T} Project", "building a project in {t}"),
        ("Reviewing and Improving Your {T} Project", "reviewing and improving work in {t}"),
        ("Presenting Your {T} Project", "presenting work in {t}"),
        ("Next Steps in {T}", "next steps in {t}"),
    ),
)
_MIDDLE_PHASES = (
    _Phase(
        ("Core Concepts in {T}", "The Building Blocks of {T}", "Key Principles of {T}"),
        "the core concepts of {t}",
        (
            ("The Central Ideas of {T}", "the central ideas of {t}"),
            ("How the Parts of {T} Fit Together", "the structure of {t}"),
            ("Mental Models for {T}", "useful mental models for {t}"),
            ("Common Misconceptions about {T}", "common misconceptions about {t}"),
            ("Interpreting Results in {T}", "interpreting results in {t}"),
        ),
    ),
    _Phase(
        ("Methods and Techniques in {T}", "Working Methods for {T}", "Essential {T} Techniques"),
        "the main methods and techniques of {t}",
        (
            ("Choosing the Right {T} Technique", "choosing a suitable technique in {t}"),
            ("Step-by-Step {T} Workflows", "step-by-step workflows for {t}"),
            ("Tools of the Trade for {T}", "the main tools used in {t}"),
            ("Checking Your {T} Work", "checking work in {t}"),
            ("Documenting {T} Decisions", "documenting decisions in {t}"),
        ),
    ),
    _Phase(
        ("Applying {T} in Practice", "{T} in the Real World", "Putting {T} to Work"),
        "applying {t} to real tasks",
        (
            ("Planning a {T} Task", "task planning in {t}"),
            ("A {T} Case Study", "a realistic case study in {t}"),
            ("Adapting {T} to New Situations", "adapting to new situations in {t}"),
            ("Collaborating on {T} Work", "collaborating with others on {t}"),
            ("Measuring Success in {T}", "measuring success in {t}"),
        ),
    ),
    _Phase(
        ("Common Pitfalls in {T}", "Troubleshooting {T}", "Avoiding Mistakes in {T}"),
        "the common pitfalls of {t} and how to avoid them",
        (
            ("Diagnosing Problems in {T}", "diagnosing problems in {t}"),
            ("Edge Cases in {T}", "edge cases in {t}"),
            ("Recovering from {T} Mistakes", "recovering from mistakes in {t}"),
            ("Quality Checks for {T}", "quality checks for {t}"),
            ("Learning from {T} Failures", "learning from failures in {t}"),
        ),
    ),
    _Phase(
        ("Advanced {T}", "Deepening Your {T} Skills", "{T} Beyond the Basics"),
        "advanced work in {t}",
        (
            ("Advanced Patterns in {T}", "advanced patterns in {t}"),
            ("Scaling Up {T} Work", "scaling up work in {t}"),
            ("Optimizing {T} Approaches", "optimizing approaches to {t}"),
            ("Trade-offs in Advanced {T}", "advanced trade-offs in {t}"),
            ("Combining {T} Techniques", "combining techniques in {t}"),
        ),
    ),
    _Phase(
        ("Evaluating {T} Work", "Judging Quality in {T}", "Assessment and Feedback in {T}"),
        "evaluating {t} work",
        (
            ("Criteria for Good {T} Work", "quality criteria in {t}"),
            ("Giving Feedback on {T}", "giving feedback in {t}"),
            ("Self-Assessment in {T}", "self-assessment in {t}"),
            ("Comparing {T} Outcomes", "comparing outcomes in {t}"),
            ("Evidence and Reasoning in {T}", "evidence and reasoning in {t}"),
        ),
    ),
    _Phase(
        ("Communicating about {T}", "Explaining {T} to Others", "{T} for Teams"),
        "communicating about {t}",
        (
            ("Explaining {T} Clearly", "clear explanations of {t}"),
            ("Presenting {T} Results", "presenting results in {t}"),
            ("Writing about {T}", "writing about {t}"),
            ("{T} for Non-Specialists", "speaking to non-specialists about {t}"),
            ("Answering Questions about {T}", "answering questions about {t}"),
        ),
    ),
    _Phase(
        ("Case Studies in {T}", "Learning {T} from Real Examples", "{T} Case Studies"),
        "real case studies in {t}",
        (
            ("A Success Story in {T}", "a success story in {t}"),
            ("A Cautionary Tale in {T}", "a cautionary tale from {t}"),
            ("Comparing Two {T} Projects", "comparing two projects in {t}"),
            ("Lessons from Everyday {T}", "everyday lessons from {t}"),
            ("Analyzing a {T} Decision", "analyzing a decision in {t}"),
        ),
    ),
    _Phase(
        ("Ethics and Responsibility in {T}", "Responsible {T}", "{T} and Its Wider Impact"),
        "ethics and responsibility in {t}",
        (
            ("Risks and Responsibilities in {T}", "risks and responsibilities in {t}"),
            ("Fairness and Access in {T}", "fairness and access in {t}"),
            ("Safety Considerations in {T}", "safety considerations in {t}"),
            ("The Long-Term Impact of {T}", "the long-term impact of {t}"),
            ("Professional Standards in {T}", "professional standards in {t}"),
        ),
    ),
    _Phase(
        ("Current Trends in {T}", "The Future of {T}", "What's Next in {T}"),
        "current trends in {t}",
        (
            ("Recent Developments in {T}", "recent developments in {t}"),
            ("Emerging Tools for {T}", "emerging tools for {t}"),
            ("Open Questions in {T}", "open questions in {t}"),
            ("Staying Current with {T}", "staying current with {t}"),
            ("Where {T} Is Heading", "the future direction of {t}"),
        ),
    ),
)
# Lessons beyond a phase's own five: generic angles on the module's subject ({M} its title).
_EXTRA_LESSONS = (
    ("{M}: Worked Examples", "worked examples of {mf}"),
    ("{M}: Common Mistakes", "common mistakes with {mf}"),
    ("{M}: Hands-On Practice", "hands-on practice with {mf}"),
    ("{M}: Review and Reflection", "a review of {mf}"),
    ("{M}: Going Further", "further directions in {mf}"),
)
_COURSE_TITLES = {
    "beginner": ("{T} for Beginners", "A Practical Introduction to {T}", "{T}: A Beginner's Guide"),
    "intermediate": (
        "{T}: From Fundamentals to Practice",
        "Building Skills in {T}",
        "{T} in Practice",
    ),
    "advanced": ("Advanced {T}", "Mastering {T}", "{T}: Advanced Methods and Practice"),
}
# Phrased to read well around any noun phrase, since {focus} varies from lesson to lesson.
_OBJECTIVES = {
    "beginner": (
        "Explain {focus} in your own words",
        "Give a concrete example of {focus}",
        "Recognize common mistakes related to {focus}",
        "Describe how {focus} connects to the rest of the course",
    ),
    "intermediate": (
        "Relate {focus} to a realistic task",
        "Compare different perspectives on {focus}",
        "Diagnose common mistakes related to {focus}",
        "Explain the trade-offs involved in {focus}",
    ),
    "advanced": (
        "Evaluate competing views on {focus}",
        "Critique real work for its handling of {focus}",
        "Justify decisions about {focus} under constraints",
        "Design an exercise that builds on {focus}",
    ),
}
_LESSON_SUMMARIES = (
    "Introduces {focus} with short examples.",
    "Covers {focus} and its common pitfalls.",
    "A practical look at {focus}.",
)
_PREPOSITIONS = ("of", "in", "for", "about", "with", "from", "to")


def _phases_for(count: int) -> list[_Phase]:
    """Foundations first, a capstone last, middle stages in teaching order (cycled if needed)."""
    if count == 1:
        return [_FOUNDATIONS]
    middle = [_MIDDLE_PHASES[i % len(_MIDDLE_PHASES)] for i in range(count - 2)]
    return [_FOUNDATIONS, *middle, _CAPSTONE]


@functools.lru_cache(maxsize=64)  # every task of a job re-derives the same plan
def _plan_course(
    topic: str, level: str, audience: str, size: tuple[int, int], seed: int
) -> _Course:
    # Seeded exactly like an outline request, so the fallback plan IS the outline it would write.
    rng = _content_rng(seed, topic, TaskKind.OUTLINE, 0, 0)
    names = {"t": topic, "T": _title_case(topic), "audience": audience, "level": level}
    modules: list[_Module] = []
    for number, phase in enumerate(_phases_for(size[0]), start=1):
        repeat = (number - 2) // len(_MIDDLE_PHASES) if 1 < number < size[0] else 0
        modules.append(_plan_module(rng, phase, names, size[1], repeat))
    title = rng.choice(_COURSE_TITLES[level]).format(**names)
    description = (
        f"{_an(level).capitalize()} {level} course on {topic} for {audience}: it starts with "
        f"{modules[0].focus} and ends with {modules[-1].focus}."
    )
    return _Course(title, description, tuple(modules))


def _plan_module(
    rng: random.Random, phase: _Phase, names: dict[str, str], count: int, repeat: int
) -> _Module:
    # Past twelve modules the arc repeats; "(Part 2)" keeps every title in the outline unique.
    part = f" (Part {repeat + 1})" if repeat else ""
    title = rng.choice(phase.titles).format(**names) + part
    focus = phase.focus.format(**names)
    picks = sorted(rng.sample(range(len(phase.lessons)), min(count, len(phase.lessons))))
    templates = [phase.lessons[i] for i in picks] + _extra_lessons(count - len(picks))
    extra = {"M": title, "mf": focus}
    lessons = tuple(
        _plan_lesson(
            rng,
            t.format(**names, **extra) + (part if "{M}" not in t else ""),
            f.format(**names, **extra),
            names,
        )
        for t, f in templates
    )
    return _Module(title, focus, _module_description(focus, lessons, names), lessons)


def _extra_lessons(count: int) -> list[tuple[str, str]]:
    extras = list(_EXTRA_LESSONS[:count])
    extras += [
        (f"{{M}}: Practice Session {n}", "further practice with {mf}")
        for n in range(1, count - len(extras) + 1)
    ]
    return extras


def _plan_lesson(rng: random.Random, title: str, focus: str, names: dict[str, str]) -> _Lesson:
    patterns = _OBJECTIVES[names["level"]]
    picks = sorted(rng.sample(range(len(patterns)), rng.choice((2, 2, 2, 3))))
    short = {**names, "focus": _short_focus(focus, names["t"])}
    objectives = tuple(patterns[i].format(**short) for i in picks)
    summary = rng.choice(_LESSON_SUMMARIES).format(**names, focus=focus)
    return _Lesson(title, focus, summary, objectives)


def _short_focus(focus: str, topic: str) -> str:
    """Drop a trailing "of <topic>": objectives sit under a title that already names the topic,
    and real outlines keep them terse."""
    if not focus.endswith(" " + topic):
        return focus
    head = focus[: -len(topic) - 1]
    words = head.split()
    return " ".join(words[:-1]) if len(words) >= 2 and words[-1] in _PREPOSITIONS else focus


def _module_description(focus: str, lessons: Sequence[_Lesson], names: dict[str, str]) -> str:
    del names  # the audience is in the course description; modules stay short like real ones
    count = "a single lesson" if len(lessons) == 1 else f"{len(lessons)} lessons"
    return f"Covers {focus} in {count}, each with examples and practice."


# === Builders, one per task kind ==================================================================
def build_content(kind: TaskKind, context: Mapping[str, Any], *, seed: int = 0) -> Data:
    """Schema-valid content for one task, deterministic for (topic, kind, position, seed)."""
    facts = _facts(context, seed)
    module, lesson = _position(kind, facts)
    variant = context.get("variant")
    rng = _content_rng(seed, facts.topic, kind, module, lesson, int(variant or 0))
    return _BUILDERS[kind](facts, rng)


def _position(kind: TaskKind, facts: _Facts) -> tuple[int, int]:
    """Which indices make a task unique: course tasks have none, module tasks only a module."""
    if kind in {TaskKind.OUTLINE, TaskKind.MIND_MAP, TaskKind.METADATA}:
        return 0, 0
    if kind is TaskKind.MODULE_SUMMARY:
        return facts.module_index, 0
    return facts.module_index, facts.lesson_index


def _build_outline(facts: _Facts, rng: random.Random) -> Data:
    del rng  # the plan has its own stream, shared with every fallback that reads it
    plan = facts.plan
    return {
        "title": facts.course_title,
        "description": plan.description,
        "modules": [
            {
                "title": m.title,
                "description": m.description,
                "lessons": [
                    {
                        "title": lesson.title,
                        "summary": lesson.summary,
                        "learning_objectives": list(lesson.objectives),
                    }
                    for lesson in m.lessons
                ],
            }
            for m in plan.modules
        ],
    }


# --- Lesson section -------------------------------------------------------------------------------
_INTROS = (
    "This lesson, {lesson}, is part of {module}. It is written for {audience} at the {level} "
    "level and assumes only what earlier lessons covered. By the end you should be able to {obj0}. "
    "We start with the intuition behind {focus}, then look at how it is used in {t}, and finish "
    "with examples you can adapt to your own work.",
    "{lesson} is where {module} turns background knowledge into something you can use. Over the "
    "next few pages we look at how {focus} plays out in {t}, why it matters to {audience}, and "
    "how to work with it without falling into the usual traps. Keep one goal in mind as you read: "
    "to {obj0}.",
    "Anyone who spends time with {t} runs into {focus} sooner or later. This lesson explains it "
    "step by step for {audience}, as part of {module}. It builds toward one practical goal, to "
    "{obj0}, through plain explanations, short examples and a summary you can come back to when "
    "you need a refresher.",
)
_WHY = (
    "Start with the question this lesson answers. In {t}, understanding {focus} matters because it "
    "shapes the "
    "decisions you make before any detailed work begins. People who skip it tend to copy "
    "procedures without knowing when they apply, and they struggle as soon as a problem looks "
    "slightly different from the example they learned. People who understand it can explain their "
    "choices, notice when something is off, and adapt. That difference is why {module} spends "
    "time here before moving on.",
    "Why spend a whole lesson on {focus}? Because much of the later work in {t} quietly depends on "
    "it. When the idea is clear, new techniques feel like variations on something familiar; when "
    "it is fuzzy, every new technique feels like a separate rule to memorize. For {audience}, the "
    "payoff is practical: fewer mistakes, faster progress, and the confidence to explain why a "
    "result makes sense rather than hoping that it does.",
)
_CORE = (
    "Here is what this lesson sets out to do, in one line: {summary} Put differently, this lesson "
    "asks you to do two things: first, {obj0}; second, {obj1}. Each of these is a skill rather "
    "than a fact, so you build it by practicing on varied cases and checking your reasoning, not "
    "by rereading a definition. The two goals support each other: the first gives you a clear "
    "picture, and the second shows you where that picture earns its keep in real {t} work.",
    "The lesson summary puts the heart of the matter briefly: {summary} To make that concrete, "
    "the lesson has two aims: to {obj0}, and to {obj1}. Neither aim is reached by memorizing a "
    "sentence. You reach them by looking at several cases, asking what they have in common, and "
    "testing your explanation on a case you have not seen before. If your explanation survives "
    "that test, you understand {focus}; if it does not, you have found exactly what to study "
    "next.",
)
_HOW = (
    "In practice, working with {focus} follows a short, repeatable cycle. Begin by stating the "
    "goal in one sentence of plain language. Next, list the constraints: time, tools, the "
    "information you have and the information you lack. Then try the simplest approach that could "
    "work on a small case, and compare the outcome with what you expected. Finally, adjust one "
    "thing at a time and write down what changed. The cycle looks obvious on paper, yet it is "
    "exactly what experienced practitioners of {t} do, often without saying so.",
    "A useful way to approach {focus} is to move from the concrete to the general. Pick one small, "
    "specific case and work through it completely, noting every decision you make along the way. "
    "Then change one detail of the case and see which decisions still hold. After two or three "
    "rounds the general pattern becomes visible, and you can state it in your own words. This is "
    "slower than reading a summary, but what you learn this way in {t} tends to stick.",
)
_PITFALLS = (
    "A few mistakes come up again and again. The first is treating {focus} as a checklist rather "
    "than a way of thinking, which produces work that looks correct but does not fit the "
    "situation. The second is changing several things at once, so that when results improve or "
    "get worse nobody can say why. The third is skipping the comparison with a simple baseline. "
    "Each mistake is easy to avoid once you know to look for it, and avoiding them is much of what "
    "separates confident work in {t} from guesswork.",
    "Watch for three traps. Learners new to {focus} often trust the first result they get, without "
    "asking whether a simpler explanation fits just as well. They also tend to generalize from a "
    "single example, assuming that what worked once will work everywhere in {t}. And they rarely "
    "write down what they tried, so the same mistake gets made twice. None of these traps needs "
    "special talent to avoid; each needs only a habit, and the examples below build those habits.",
)
_CONNECT = (
    "Finally, place this lesson in the wider course. {module} builds its later lessons on the "
    "ideas introduced here, and {course} returns to them repeatedly, usually in more demanding "
    "settings. If a later topic feels hard, coming back to {focus} is often the fastest way to "
    "find the missing piece. The practical advice for {level} learners is to work through the "
    "examples below before moving on, and to explain each key concept aloud in your own words.",
    "It helps to see where this fits. {course} treats {t} as a set of connected skills, and "
    "understanding {focus} is one of the links that holds them together. You will meet it again "
    "in later lessons of {module} and beyond, each time in a slightly harder form. Treat this "
    "lesson as a foundation to return to rather than a box to tick: when something later does not "
    "make sense, the explanation is often here.",
)
_LESSON_SUMMARY_TEXTS = (
    "In short, understanding {focus} gives you a way to reason about {t} rather than a list of "
    "rules to follow. You should now be able to {objs}. Practice on small cases, compare against "
    "a simple baseline, and change one thing at a time; the next lessons build directly on these "
    "habits.",
    "To recap: this lesson explained {focus}, why it matters in {t}, and the mistakes to watch "
    "for. The goal was to {objs}. Before moving on, try the examples again without looking at the "
    "text, and note any step you could not explain in your own words.",
)
_CONCEPTS = (
    (
        "Mental model",
        "A simplified picture of how {t} behaves that lets you predict an outcome "
        "before you try it, and notice quickly when reality disagrees.",
    ),
    (
        "Baseline",
        "The simplest reasonable approach or result in {t}, used as a reference point so "
        "that any improvement can be measured honestly.",
    ),
    (
        "Trade-off",
        "A choice where gaining one quality, such as speed or simplicity, costs another; "
        "much of the judgment in {t} lies in weighing these.",
    ),
    (
        "Constraint",
        "A limit on time, tools, information or resources that decides which "
        "approaches to {focus} are realistic in a given situation.",
    ),
    (
        "Feedback loop",
        "The cycle of trying something, observing the result and adjusting, which "
        "is how skill in {t} actually grows over time.",
    ),
    (
        "Edge case",
        "An unusual situation at the boundary of normal use, where a method that "
        "handles typical {t} cases often breaks.",
    ),
    (
        "Worked example",
        "A fully solved problem, shown step by step, that makes the reasoning "
        "behind {focus} visible rather than just the answer.",
    ),
    (
        "Misconception",
        "A plausible but wrong belief about {t}; naming it explicitly is one of the "
        "quickest ways to correct it.",
    ),
    (
        "Transfer",
        "Applying what you learned in one {t} situation to a new one that looks "
        "different on the surface but shares the same structure.",
    ),
    (
        "Success criterion",
        "A clear, checkable statement of what a good result looks like in {t}, "
        "agreed before the work begins rather than after.",
    ),
)
_EXAMPLES = (
    (
        "A first small task",
        "A newcomer to {t} applies {focus} to a deliberately small task. They "
        "write down the goal, try the simplest approach, and compare the result with what they "
        "expected. The gap between the two becomes the starting point for the next attempt.",
    ),
    (
        "Reviewing a colleague's work",
        "Two people review a piece of {t} work together. Instead of "
        "asking whether it looks right, they check it against the success criteria agreed at the "
        "start and ask which assumptions it relies on, turning a vague impression into fixable "
        "points.",
    ),
    (
        "Before and after",
        "A small team compares how they handled {focus} before and after "
        "studying it. Before, they changed several things at once and could not tell what helped. "
        "After, they change one thing at a time and reach a better result in fewer attempts.",
    ),
    (
        "When the standard recipe fails",
        "A learner follows a standard {t} recipe that works on the "
        "textbook example but fails on a real case. Finding the edge case responsible teaches them "
        "why the recipe works at all, and when it needs adapting.",
    ),
    (
        "Explaining it to a friend",
        "A learner explains {focus} to a friend who knows nothing about "
        "{t}. Finding simple words for each step exposes the parts they had only memorized, and "
        "those become the parts they go back and study again.",
    ),
)


def _build_lesson_section(facts: _Facts, rng: random.Random) -> Data:
    # The summary names every objective: lesson sections must cover all of them.
    words = facts.words(objs=_join([_lc_first(o) for o in facts.objectives]))
    dropped = rng.choice((_WHY, _HOW, _PITFALLS, _CONNECT))  # four of five paragraph roles
    roles = [r for r in (_WHY, _CORE, _HOW, _PITFALLS, _CONNECT) if r is not dropped]
    lead = {"term": _uc_first(facts.lesson_focus), "definition": _sentence(facts.lesson_summary)}
    concepts = rng.sample(_CONCEPTS, 3)
    return {
        "introduction": rng.choice(_INTROS).format(**words),
        "detailed_explanation": "\n\n".join(rng.choice(r).format(**words) for r in roles),
        "key_concepts": [lead]
        + [{"term": t, "definition": d.format(**words)} for t, d in concepts],
        "examples": [
            {"title": t, "description": d.format(**words)} for t, d in rng.sample(_EXAMPLES, 2)
        ],
        "summary": rng.choice(_LESSON_SUMMARY_TEXTS).format(**words),
    }


# --- Assessment -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Choice:
    """A multiple-choice template: options are written to comparable lengths."""

    stem: str
    correct: str
    distractors: tuple[str, str, str]
    explanation: str
    bloom: str


@dataclass(frozen=True)
class _Claim:
    """A true/false or short-answer template."""

    stem: str
    answer: str
    explanation: str


_MULTIPLE_CHOICE = (
    _Choice(
        "Which statement best captures the purpose of {focus} within {t}?",
        "It explains how the ideas fit together so you can apply them with confidence",
        (
            "It lists facts to memorize without needing to connect them to any practice",
            "It replaces practice with one fixed recipe that always works the same way",
            "It matters only to experts, so newcomers can safely skip it entirely",
        ),
        "Understanding how the ideas connect is what lets you apply them to new cases; the other "
        "options describe memorization, rigid recipes or skipping the topic, all of which fail.",
        "understand",
    ),
    _Choice(
        'A learner working toward "{objective}" gets a surprising result. What should they do '
        "first?",
        "Compare the result with a simple baseline and check each assumption in turn",
        (
            "Start over from scratch with a completely different approach and new tools",
            "Assume the result is right because the procedure was followed exactly",
            "Ask someone else to redo the work without looking at the first attempt",
        ),
        "Checking against a baseline and testing assumptions locates the cause of the surprise; "
        "starting over, trusting the procedure blindly or delegating all throw that evidence away.",
        "apply",
    ),
    _Choice(
        "Which of these is the best evidence that someone has understood {focus}?",
        "They can explain it in their own words and apply it to a new case",
        (
            "They can repeat the textbook definition word for word from memory",
            "They have read every available resource on the subject at least once",
            "They finished the exercises quickly without checking any answers",
        ),
        "Explaining an idea in your own words and transferring it to a new case shows real "
        "understanding; recall, reading volume and speed can all exist without it.",
        "evaluate",
    ),
    _Choice(
        "Why do experienced practitioners often begin work on {focus} with a small, simple case?",
        "A small case exposes misunderstandings early, while they are cheap to fix",
        (
            "Small cases are a tradition in the field but they teach nothing new",
            "Larger cases are always wrong, so they should be avoided entirely",
            "Small cases run faster, and speed is the only thing that matters",
        ),
        "Starting small makes mistakes visible and cheap to correct before they spread; larger "
        "cases are not wrong, and neither tradition nor speed is the real reason.",
        "understand",
    ),
    _Choice(
        "When comparing two approaches to {focus}, what should guide the choice?",
        "The goal, the constraints and the trade-offs each approach brings",
        (
            "Whichever approach was learned first, since it feels most familiar",
            "The approach with the most steps, since it must be more thorough",
            "Whatever is most popular online this month, whatever the task is",
        ),
        "A sound choice weighs the goal, the constraints and the trade-offs; familiarity, "
        "complexity and popularity say nothing about fitness for the task at hand.",
        "analyze",
    ),
    _Choice(
        "Which habit most reliably improves your work on {focus} over time?",
        "Reviewing results against clear criteria and changing one thing at a time",
        (
            "Changing many things at once so that progress happens as fast as possible",
            "Avoiding all feedback until the work is completely finished and polished",
            "Relying on intuition alone and never writing down what has been tried",
        ),
        "Clear criteria and one change at a time show which change helped; changing many things, "
        "delaying feedback and keeping no notes all hide the cause of success or failure.",
        "apply",
    ),
    _Choice(
        "What is the main risk of skipping the groundwork on {focus}?",
        "Later topics turn into guesswork because the underlying ideas are missing",
        (
            "There is no risk, because later modules repeat everything from scratch",
            "The course simply takes less time to finish and nothing else changes",
            "Only assessment scores suffer, while real understanding stays the same",
        ),
        "Later lessons build on this groundwork, so skipping it leaves gaps that make later work "
        "guesswork; the course does not repeat it, and understanding suffers, not just scores.",
        "analyze",
    ),
    _Choice(
        "Which question should you ask first when applying {focus} to a new problem?",
        "What exactly am I trying to achieve, and how will I know that it worked?",
        (
            "Which tool has the most features, regardless of what the task needs?",
            "How can I finish as fast as possible without checking anything at all?",
            "What did I do last time, so that I can copy it without any changes?",
        ),
        "A clear goal and a success criterion come first, because every later decision depends "
        "on them; tool features, speed and copying past work ignore what the problem needs.",
        "apply",
    ),
    _Choice(
        "For {audience}, what makes {focus} worth learning carefully?",
        "It underpins later lessons and shows up in many everyday tasks",
        (
            "It is rarely used, so it matters only for passing the assessment",
            "It is purely historical and has no bearing on current practice",
            "It is a shortcut that removes the need to understand anything else",
        ),
        "The idea recurs throughout later lessons and in routine {t} work; it is neither rare, "
        "merely historical, nor a substitute for understanding the rest.",
        "understand",
    ),
    _Choice(
        "Which situation shows {focus} being applied well?",
        "A plan is tried on a small case, checked against criteria, then scaled up",
        (
            "A plan is applied everywhere at once and judged only by how busy it looks",
            "A plan is copied from an unrelated project without checking whether it fits",
            "A plan is changed daily based on opinion, with no record of what happened",
        ),
        "Trying small, checking against agreed criteria and only then scaling up is good practice; "
        "the other options skip the checks that reveal whether the approach works.",
        "evaluate",
    ),
)
_TRUE_FALSE = (
    _Claim(
        "True or false: understanding {focus} is only relevant to experts and can safely be "
        "skipped by {audience}.",
        "False",
        "False. The idea underpins later lessons and everyday {t} work, so skipping it leaves "
        "gaps that show up quickly in practice.",
    ),
    _Claim(
        "True or false: comparing your result with a simple baseline is a reliable way to catch "
        "mistakes in {focus}.",
        "True",
        "True. A baseline gives you a reference point, so an implausible result stands out "
        "instead of passing unnoticed.",
    ),
    _Claim(
        "True or false: being able to {objective_lc} depends on understanding the ideas, not just "
        "memorizing definitions.",
        "True",
        "True. Definitions help, but applying and explaining the idea in new situations requires "
        "understanding why it works.",
    ),
    _Claim(
        "True or false: when working on {focus}, changing several things at once makes it easier "
        "to see which change helped.",
        "False",
        "False. Changing several things at once hides which change caused the effect; change one "
        "thing at a time and note the result.",
    ),
    _Claim(
        "True or false: the ideas of {focus} connect directly to practical work later in the "
        "course.",
        "True",
        "True. Each module builds on the earlier ones, and these ideas return in later, more "
        "demanding lessons.",
    ),
    _Claim(
        "True or false: once a technique for {focus} works on one example, it is guaranteed to "
        "work on every other case.",
        "False",
        "False. Edge cases and different constraints can break a technique that worked once, so "
        "each new case needs checking.",
    ),
)
_SHORT_ANSWER = (
    _Claim(
        "In two or three sentences, explain how you would {objective_lc}.",
        "State the goal, work through a small concrete case step by step, check the result "
        "against a baseline or clear criterion, and explain each decision in your own words.",
        "A strong answer names a clear goal, uses a concrete case and includes a check; vague "
        "answers that only restate a definition miss the point.",
    ),
    _Claim(
        "Describe one common mistake people make with {focus} and how to avoid it.",
        "A common mistake is changing several things at once; avoid it by changing one thing at "
        "a time and recording the effect of each change.",
        "Any well-explained mistake with a matching habit that prevents it earns full credit, for "
        "example trusting a single example or skipping a baseline.",
    ),
    _Claim(
        "Give a short real-world example in which {focus} matters, and say why it matters there.",
        "For example, a small team planning a {t} task must get this right first, because every "
        "later decision they make depends on it.",
        "Good answers give a specific situation and connect it explicitly to the idea; a "
        "situation without that link is only half an answer.",
    ),
    _Claim(
        "Summarize the key idea of {lesson} for a colleague who is new to {t}.",
        "The key idea is to reason from clear goals and small, checked steps rather than "
        "following a fixed recipe, so that you can adapt when the situation changes.",
        "A good summary is short, accurate and free of jargon, and it shows why the idea is "
        "useful rather than only what it is called.",
    ),
    _Claim(
        "If your work on {focus} gave a result that looked wrong, what would you check first, "
        "and why?",
        "First check the assumptions and the inputs against a simple baseline, because most "
        "surprising results come from a wrong assumption rather than from the method.",
        "Answers should name a concrete first check and justify it; checking assumptions or a "
        "baseline first is the most efficient way to locate the problem.",
    ),
    _Claim(
        "Explain why {focus} matters for the rest of {module}.",
        "Later lessons in the module build on it, so understanding it now makes those lessons "
        "easier and prevents mistakes from spreading into later work.",
        "Full credit needs a clear link between this idea and later lessons; simply saying that it "
        "is important is not enough.",
    ),
)
_QUESTION_CYCLE = ("multiple_choice", "true_false", "multiple_choice", "short_answer")
_DIFFICULTY = {"beginner": 0, "intermediate": 1, "advanced": 2}
_DIFFICULTIES = ("easy", "medium", "hard")
_SHORT_ANSWER_BLOOM = {"beginner": "understand", "intermediate": "apply", "advanced": "evaluate"}


def _build_assessment(facts: _Facts, rng: random.Random) -> Data:
    kinds = [_QUESTION_CYCLE[i % len(_QUESTION_CYCLE)] for i in range(facts.questions)]
    # Each template is used at most once per assessment, so no two stems are alike.
    pools: dict[str, list[Any]] = {
        "multiple_choice": rng.sample(_MULTIPLE_CHOICE, len(_MULTIPLE_CHOICE)),
        "true_false": rng.sample(_TRUE_FALSE, len(_TRUE_FALSE)),
        "short_answer": rng.sample(_SHORT_ANSWER, len(_SHORT_ANSWER)),
    }
    questions = []
    for index, kind in enumerate(kinds):
        objective = facts.objectives[index % len(facts.objectives)]
        template = pools[kind][(kinds[:index].count(kind)) % len(pools[kind])]
        questions.append(_QUESTION_WRITERS[kind](facts, rng, template, objective))
    for question in questions:  # like an LMS quiz item, each question carries its lesson
        question["stem"] = f"[{facts.lesson_title}] {question['stem']}"
    return {"questions": _unique_stems(questions)}


def _question_words(facts: _Facts, objective: str) -> dict[str, str]:
    return facts.words(objective=objective.rstrip("."), objective_lc=_lc_first(objective))


def _explain(item: _Choice | _Claim, words: dict[str, str]) -> str:
    # Real explanations tie the answer back to the lesson goal; so do these.
    return f"{item.explanation.format(**words)} It tests the lesson goal: {words['objective_lc']}."


def _difficulty(facts: _Facts, shift: int) -> str:
    return _DIFFICULTIES[min(max(_DIFFICULTY[facts.level] + shift, 0), 2)]


def _multiple_choice(facts: _Facts, rng: random.Random, item: _Choice, objective: str) -> Data:
    words = _question_words(facts, objective)
    correct = item.correct.format(**words)
    options = [correct, *(d.format(**words) for d in item.distractors)]
    rng.shuffle(options)
    return {
        "type": "multiple_choice",
        "stem": item.stem.format(**words),
        "options": options,
        "correct_answer": correct,
        "explanation": _explain(item, words),
        "difficulty": _difficulty(facts, 0),
        "bloom_level": item.bloom,
        "objective": objective,
    }


def _true_false(facts: _Facts, rng: random.Random, item: _Claim, objective: str) -> Data:
    del rng  # options are fixed by the schema
    words = _question_words(facts, objective)
    return {
        "type": "true_false",
        "stem": item.stem.format(**words),
        "options": ["True", "False"],
        "correct_answer": item.answer,
        "explanation": _explain(item, words),
        "difficulty": _difficulty(facts, -1),
        "bloom_level": "understand",
        "objective": objective,
    }


def _short_answer(facts: _Facts, rng: random.Random, item: _Claim, objective: str) -> Data:
    del rng  # nothing to shuffle
    words = _question_words(facts, objective)
    return {
        "type": "short_answer",
        "stem": item.stem.format(**words),
        "options": [],
        "correct_answer": item.answer.format(**words),
        "explanation": _explain(item, words),
        "difficulty": _difficulty(facts, 1),
        "bloom_level": _SHORT_ANSWER_BLOOM[facts.level],
        "objective": objective,
    }


_QUESTION_WRITERS: dict[str, Callable[[_Facts, random.Random, Any, str], Data]] = {
    "multiple_choice": _multiple_choice,
    "true_false": _true_false,
    "short_answer": _short_answer,
}


def _unique_stems(questions: list[Data]) -> list[Data]:
    """Past the template pools (more than 10 multiple-choice questions) stems would repeat;
    number the repeats so every stem stays distinct."""
    seen: dict[str, int] = {}
    for question in questions:
        stem = question["stem"]
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            question["stem"] = f"(Scenario {seen[stem]}) {stem}"
    return questions


# --- Brain bytes ----------------------------------------------------------------------------------
_SCRIPT_PARTS = (
    (
        "Welcome to this Brain Byte on {focus}. In the next couple of minutes we will take one "
        "idea from {t} and make it stick. No notes needed; just listen, and pause whenever you "
        "want to think something through.",
        "Here is a quick question to start: could you explain {focus} to a friend in under a "
        "minute? If not, that is fine. This short audio is designed to get you there, one step at "
        "a time, using plain language and one simple example from {t}.",
    ),
    (
        "First, the big picture, in one line: {summary} Everything else in this lesson hangs off "
        "that idea, so it is worth saying it to yourself once more in your own words before we go "
        "on. If you can do that, you already have the hardest part.",
        "Let's start with the core of {focus}, in one line: {summary} Notice that this is a way of "
        "thinking, not a formula. Once you see it that way, a lot of the detail in {t} starts to "
        "fall into place on its own.",
    ),
    (
        "Second, how you use it. Start small: pick one simple case, say what you expect to "
        "happen, and then check. When the result surprises you, change just one thing and check "
        "again. That loop of predicting, checking and adjusting is how people who are good at {t} "
        "actually work.",
        "Now for how it works in practice. Experienced people in {t} rarely jump straight to the "
        "complicated version. They try the simplest approach first, compare it with what they "
        "expected, and only then add detail. Doing the same will save you a lot of time and "
        "frustration.",
    ),
    (
        "Picture a small example. Someone new to {t} tries the idea on a single, simple case. "
        "They write down what they expect, run through it, and compare. The result is slightly "
        "off, so they change one detail and try again. Three rounds later they understand why it "
        "works, not just that it works.",
        "Let's make it concrete. Imagine you are helping a friend with a first {t} task. Instead "
        "of handing them the answer, you ask them to predict the outcome, try it, and explain any "
        "difference. That small routine teaches more about {focus} than any amount of rereading.",
    ),
    (
        "Third, a trap to avoid. It is tempting to trust the first result you get, or to change "
        "several things at once when something goes wrong. Both habits hide what is really going "
        "on. Slow down, change one thing at a time, and keep a short note of what you tried.",
        "One common mistake is to learn {focus} as a list of steps to memorize. Steps are useful, "
        "but they break the moment a problem looks a little different. Aim instead to understand "
        "why each step is there; then you can adapt when the situation changes.",
    ),
    (
        "So, to wrap up: working with {focus} comes down to clear goals, small experiments and "
        "honest checking. Your goal from this lesson is to {obj0}. Try it once today on a small "
        "example, and you will remember it far better than if you only listen.",
        "That's it for this Brain Byte. Remember the three ideas: the core of {focus}, how to use "
        "it with small, checked steps, and the trap of changing too much at once. Next time you "
        "work on {t}, try to {obj0}, and notice how much easier it gets.",
    ),
)
_SPOKEN_WORDS_PER_MINUTE = 150


def _build_brain_bytes(facts: _Facts, rng: random.Random) -> Data:
    words = facts.words()
    script = " ".join(rng.choice(part).format(**words) for part in _SCRIPT_PARTS)
    script = _fit(script, 3000)
    seconds = round(len(script.split()) * 60 / _SPOKEN_WORDS_PER_MINUTE)
    return {
        "title": f"Brain Byte: {facts.lesson_title}",
        "script": script,
        "estimated_seconds": min(max(seconds, 20), 240),
    }


def _fit(text: str, limit: int) -> str:
    """Cut at a sentence boundary when a very long title or topic pushes text past `limit`."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(". ") + 1] or cut


# --- Module summary -------------------------------------------------------------------------------
_MODULE_SUMMARIES = (
    "{module} took you through {count}: {lessons}. Together they build a working grasp of "
    "{mfocus}, which supports everything else you do in {t}. The common thread is a habit of "
    "working in small, checked steps: state the goal, try the simplest approach, compare the "
    "result with what you expected, and adjust one thing at a time. If any lesson felt shaky, "
    "revisit it before moving on, because the rest of the course builds on these ideas directly.",
    "This module, {module}, covered {count}: {lessons}. Each one looked at a different side of "
    "{mfocus}, from the basic idea to the mistakes that most often trip learners up. Together "
    "they give {audience} a working foundation in this part of {t}: enough to tackle realistic "
    "tasks, explain your reasoning, and recognize when a result does not add up.",
)
_TAKEAWAYS = (
    "{lesson}: later work in {t} depends on it, so make sure it is solid.",
    "{lesson}: approach it in small, checked steps rather than big leaps.",
    "{lesson}: most mistakes come from skipping the comparison with a simple baseline.",
    "{lesson}: explaining it in your own words is the real test of understanding.",
    "{lesson}: work one concrete example all the way through before generalizing.",
)


def _build_module_summary(facts: _Facts, rng: random.Random) -> Data:
    lessons = _module_lessons(facts)
    mfocus = facts.module.focus if facts.module_title == facts.module.title else "these ideas"
    count = f"{len(lessons)} lesson{'s' if len(lessons) != 1 else ''}"
    words = facts.words(count=count, lessons=_join(lessons), mfocus=mfocus)
    templates = rng.sample(_TAKEAWAYS, len(_TAKEAWAYS))
    pairs = zip(templates, lessons[:4], strict=False)  # at most four, one per lesson
    takeaways = [t.format(**{**words, "lesson": lesson}) for t, lesson in pairs]
    if len(takeaways) < 2:
        takeaways.append(
            f"Revisit {facts.module_title} whenever later work in {facts.topic} feels uncertain."
        )
    return {
        "summary": rng.choice(_MODULE_SUMMARIES).format(**words),
        "key_takeaways": takeaways,
    }


def _module_lessons(facts: _Facts) -> list[str]:
    for title, lessons in facts.sketch:
        if title == facts.module_title and lessons:
            return list(lessons)
    return [lesson.title for lesson in facts.module.lessons]


# --- Mind map -------------------------------------------------------------------------------------
_LESSON_FACETS = ("Key terms", "Worked example", "Common mistakes", "Practice", "Review")


def _build_mind_map(facts: _Facts, rng: random.Random) -> Data:
    modules = facts.sketch[:12]
    small = sum(len(lessons) for _, lessons in modules) <= 4
    nodes = [
        {"label": title, "children": [_lesson_node(rng, title, small) for title in lessons[:12]]}
        for title, lessons in modules
    ]
    if len(nodes) < 12:
        # A cross-cutting branch; it also keeps a one-module course above the two-node minimum.
        ideas = [{"label": term, "children": []} for term, _ in rng.sample(_CONCEPTS, 3)]
        nodes.append({"label": f"Key Ideas in {_title_case(facts.topic)}", "children": ideas})
    return {"central_topic": facts.topic, "nodes": nodes}


def _lesson_node(rng: random.Random, title: str, detailed: bool) -> Data:
    facets = rng.sample(_LESSON_FACETS, 2) if detailed else []
    return {"label": title, "children": [{"label": f, "children": []} for f in facets]}


# --- Metadata -------------------------------------------------------------------------------------
_CATEGORY_LEVELS = {
    "beginner": "Introductory Courses",
    "intermediate": "Intermediate Courses",
    "advanced": "Advanced Courses",
}
_CATEGORIES = ("Professional Development", "Personal Development", "Skills and Training")
_STOP_WORDS = _SMALL_WORDS | {"from", "into", "your", "what", "how", "why", "intro", "introduction"}


def _build_metadata(facts: _Facts, rng: random.Random) -> Data:
    modules = facts.sketch or _plan_sketch(facts.plan)
    lessons = sum(len(lessons) or 1 for _, lessons in modules)
    hours = round(lessons * rng.uniform(0.6, 0.9) + len(modules) * 0.5, 1)
    title = facts.course_title if len(facts.course_title) >= 5 else f"{facts.course_title} course"
    return {
        "title": title[:120],
        "description": _metadata_description(facts, modules, lessons, hours),
        "categories": _distinct(
            [_title_case(facts.topic), rng.choice(_CATEGORIES), _CATEGORY_LEVELS[facts.level]], 5
        ),
        "tags": _tags(facts),
        "level": facts.level,
        "estimated_hours": min(hours, 500.0),
    }


def _metadata_description(
    facts: _Facts, modules: Sequence[tuple[str, Any]], lessons: int, hours: float
) -> str:
    span = (
        f"It moves from {modules[0][0]} to {modules[-1][0]}"
        if len(modules) > 1
        else f"It centers on {modules[0][0]}"
    )
    text = (
        f"{facts.course_title} is a {len(modules)}-module, {lessons}-lesson course on "
        f"{facts.topic} for {facts.audience}. {span}, mixing clear explanations, worked examples, "
        f"short audio Brain Bytes and assessments. Designed for {facts.level} learners, it takes "
        f"about {math.ceil(hours)} hours at a comfortable pace."
    )
    return _fit(text, 1500)


def _tags(facts: _Facts) -> list[str]:
    topic = facts.topic.lower()
    keywords = [w.strip(",.:;!?()") for w in topic.split()]
    keywords = [w for w in keywords if len(w) > 3 and w not in _STOP_WORDS]
    tags = [topic, *keywords, f"{topic} {facts.level}", facts.level, "online course"]
    tags += ["self-paced", "worked examples", "assessments", "brain bytes"]
    return _distinct(tags, 12)


_BUILDERS: dict[TaskKind, Callable[[_Facts, random.Random], Data]] = {
    TaskKind.OUTLINE: _build_outline,
    TaskKind.LESSON_SECTION: _build_lesson_section,
    TaskKind.ASSESSMENT: _build_assessment,
    TaskKind.BRAIN_BYTES: _build_brain_bytes,
    TaskKind.MODULE_SUMMARY: _build_module_summary,
    TaskKind.MIND_MAP: _build_mind_map,
    TaskKind.METADATA: _build_metadata,
}


# === Parts (targeted regeneration) ================================================================
def _part_content(
    kind: TaskKind, context: Mapping[str, Any], data: Data, part: str, seed: int
) -> Any:
    """One part of the content. Given stems to avoid (a replacement for a duplicate question), it
    draws again until its question differs from them, as a model told what not to repeat would."""
    value = extract(data, part)
    avoid = [str(s) for s in context.get("avoid") or []]
    topic = str(context.get("topic", ""))
    for variant in range(1, 50):
        stem = value.get("stem") if isinstance(value, dict) else None
        if not (avoid and stem and any(is_near_duplicate(stem, a, topic=topic) for a in avoid)):
            break
        value = extract(build_content(kind, {**context, "variant": variant}, seed=seed), part)
    return value


# === Schema-invalid variants (the "invalid" fault) ================================================
def make_invalid(kind: TaskKind, data: Data, *, part: str = "", pick: float = 0.0) -> Data:
    """A copy of valid content with one realistic mistake in ONE part (one question, one field),
    which the kind's schema rejects; `pick` in [0, 1) chooses the part and the mistake, so the
    mistakes vary like a model's do. For a part request (`part` set) the data is that part."""
    broken = json.loads(json.dumps(data))  # deep copy; the input stays valid
    if part:
        return _break_part(part, broken, pick)
    choices = parts_of(OUTPUT_SCHEMAS[kind], broken)
    chosen = choices[min(int(pick * len(choices)), len(choices) - 1)]
    rest = pick * len(choices) % 1.0  # the remainder of the roll picks the mistake
    return merge(broken, chosen, _break_part(chosen, extract(broken, chosen), rest))


def _break_part(part: str, value: Any, pick: float) -> Any:
    if "." not in part:  # a field part: {"field": value}
        ((field, inner),) = value.items()
        return {field: _break_scalar(inner, pick)}
    if "options" in value:
        return _break_question(value, pick)
    texts = [k for k, v in value.items() if isinstance(v, str)]  # an item: concept, module ...
    key = texts[min(int(pick * len(texts)), len(texts) - 1)]
    return {**value, key: _break_scalar(value[key], pick * len(texts) % 1.0)}


def _break_scalar(value: Any, pick: float) -> Any:
    mistakes: tuple[Any, ...]
    if isinstance(value, list):
        mistakes = ([], "see below", [""])  # too few items, not a list, an empty item
    elif isinstance(value, bool | str) or value is None:
        mistakes = ("", None)  # empty, missing
    else:
        mistakes = (-1, 10**6, "soon")  # too small, too large, not a number
    return mistakes[min(int(pick * len(mistakes)), len(mistakes) - 1)]


def _break_question(question: Data, pick: float) -> Data:
    mistake = int(pick * 4)
    if mistake == 0 and question["type"] == "multiple_choice":
        question["correct_answer"] = "An answer that is not among the options"
    elif mistake == 0:
        question["options"] = ["Yes", "No", "Maybe"]
    elif mistake == 1:
        question["stem"] = "Why?"
    elif mistake == 2:
        question["explanation"] = "See notes."
    else:
        question["difficulty"] = "trivial"
    return question
