"""Check the cache against labelled pairs of course requests (docs/cache.md#checking-it-on-pairs).

Each JSON line is {"a": <course request>, "b": <course request>} (as POST /api/jobs/ takes it,
without base_class), optionally with a "label" ("paraphrase", or the kind of near-miss). For each
pair `a`'s outline-level entry is stored in a scratch organisation and `b` is looked up; one JSON
line per pair, then a JSON last line with the counts. The scratch organisation and its entries
are deleted at the end.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from pydantic import ValidationError

from accounts.models import Organisation
from generation import cache
from generation.cache_models import CacheEntry
from generation.schemas import CourseRequest

PARAPHRASE = "paraphrase"


def _request(value: Any, where: str) -> CourseRequest:
    if not isinstance(value, dict):
        raise CommandError(f"{where}: not a course request object")
    try:
        return CourseRequest.model_validate(value)
    except ValidationError as exc:
        raise CommandError(f"{where}: {exc.errors(include_url=False)}") from exc


def _pairs(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from exc
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandError(f"line {number}: not JSON ({exc})") from exc
        if not isinstance(row, dict) or "a" not in row or "b" not in row:
            raise CommandError(f'line {number}: needs "a" and "b"')
        row["a"] = _request(row["a"], f"line {number} a")
        row["b"] = _request(row["b"], f"line {number} b")
        pairs.append(row)
    return pairs


def match_pair(a: CourseRequest, b: CourseRequest, organisation: Organisation) -> cache.Found:
    """Store `a`'s outline entry in `organisation`, look `b` up, delete the entry."""
    stored = cache.cache_entry_put(
        key=cache.outline_key(a),
        organisation=organisation,
        output={"scratch": True},
        moderation="passed",  # synthetic: what a moderated generation would have stored
        quality=1.0,
        cost_usd=Decimal(0),
        duration_ms=0,
    )
    try:
        return cache.cache_find(key=cache.outline_key(b), organisation=organisation)
    finally:
        if stored is not None:
            CacheEntry.objects.filter(pk=stored.pk).delete()


class Command(BaseCommand):
    help = "Store each pair's a, look its b up, and print whether the cache served it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--pairs", required=True, type=Path, metavar="FILE")

    def handle(self, *args: Any, **options: Any) -> None:
        pairs = _pairs(options["pairs"])
        slug = f"cache-match-{uuid.uuid4().hex[:12]}"
        organisation = Organisation.objects.create(name="cache_match scratch", slug=slug)
        counts: Counter[str] = Counter()
        try:
            for index, pair in enumerate(pairs):
                found = match_pair(pair["a"], pair["b"], organisation)
                self._report(index, pair.get("label"), found, counts)
        finally:
            organisation.delete()
        self.stdout.write(json.dumps({"pairs": len(pairs), **dict(sorted(counts.items()))}))

    def _report(
        self, index: int, label: str | None, found: cache.Found, counts: Counter[str]
    ) -> None:
        hit = found.entry is not None
        match = found.similar
        line = {
            "index": index,
            "hit": hit,
            "score": 1.0 if found.layer == "exact" else (match.score if match else None),
            "rejected_by": None if hit or match is None else match.rejected_by,
        }
        if label is not None:
            line["label"] = label
            counts[f"{label}_pairs"] += 1
            counts[f"{label}_hits"] += hit
            counts["false_hits"] += hit and label != PARAPHRASE
        counts["hits" if hit else "misses"] += 1
        self.stdout.write(json.dumps(line))
