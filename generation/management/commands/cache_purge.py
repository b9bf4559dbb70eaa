"""Delete course_generation_cache entries: all, by kind, by age, by organisation, or the
expired and outdated ones (what the beat task does)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organisation
from generation import cache
from generation.cache import CACHED_KINDS


class Command(BaseCommand):
    help = (
        "Delete cache entries: --all, or those matching every one of --kind, --older-than "
        "(days) and --organisation (slug); --expired deletes the expired and outdated ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="every entry")
        parser.add_argument("--expired", action="store_true", help="expired and outdated entries")
        parser.add_argument("--kind", choices=[k.value for k in CACHED_KINDS])
        parser.add_argument("--older-than", type=float, metavar="DAYS", help="created before")
        parser.add_argument("--organisation", metavar="SLUG")

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = options["kind"] or options["older_than"] is not None or options["organisation"]
        if sum(map(bool, (options["all"], options["expired"], chosen))) != 1:
            raise CommandError(
                "give one of --all, --expired, or any of --kind/--older-than/--organisation"
            )
        if options["older_than"] is not None and options["older_than"] < 0:
            raise CommandError("--older-than takes a number of days, 0 or more")
        if options["expired"]:
            deleted = cache.cache_purge_expired()
        else:
            deleted = cache.cache_purge(
                everything=options["all"],
                kind=options["kind"],
                older_than_days=options["older_than"],
                organisation_id=self._organisation(options["organisation"]),
            )
        self.stdout.write(f"deleted {deleted} cache entries")

    def _organisation(self, slug: str | None) -> Any:
        if slug is None:
            return None
        found = Organisation.objects.filter(slug=slug).values_list("pk", flat=True).first()
        if found is None:
            raise CommandError(f"no organisation with the slug {slug!r}")
        return found
