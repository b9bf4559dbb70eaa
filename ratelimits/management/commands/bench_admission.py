"""Time one admission check: lock the usage row, count the windows and jobs, record.

Each check runs in its own transaction and is rolled back, so every check sees the same state
(the user's log of earlier admissions, seeded with --history rows spread over the last day).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Organisation, Role
from accounts.services import membership_set
from ratelimits.models import Admission, RateLimitUsage
from ratelimits.selectors import policy_get
from ratelimits.services import RateLimitExceeded, admission_check_and_record, policies_seed

BENCH_USER = "bench-admission"


class Command(BaseCommand):
    help = "Print the median and p99 time of one admission check against the configured database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--checks", type=int, default=2000)
        parser.add_argument("--warmup", type=int, default=200)
        parser.add_argument("--role", default=Role.ADMIN, choices=Role.values)
        parser.add_argument(
            "--history", type=int, default=500, help="earlier admissions in the user's day"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        role = Role(options["role"])
        user = self._bench_user(role=role, history=options["history"])
        timings = [self._one(user, role) for _ in range(options["warmup"] + options["checks"])]
        timings = timings[options["warmup"] :]
        outcome = "admitted" if self._one_outcome(user, role) else "refused"
        timings.sort()
        p99 = timings[min(len(timings) - 1, round(0.99 * len(timings)))]
        self.stdout.write(
            f"admission check on {connection.vendor} ({connection.settings_dict['NAME']}), "
            f"role {role}, {options['history']} admissions in the day, every check {outcome}:"
        )
        self.stdout.write(
            f"  median {statistics.median(timings) * 1000:.3f} ms   p99 {p99 * 1000:.3f} ms   "
            f"mean {statistics.fmean(timings) * 1000:.3f} ms   over {len(timings)} checks"
        )

    def _bench_user(self, *, role: Role, history: int) -> Any:
        policies_seed()
        org, _ = Organisation.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
        user, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
        membership_set(user=user, organisation=org, role=role)
        self.organisation_id = org.pk
        RateLimitUsage.objects.get_or_create(user=user)  # the steady state: the row exists
        # Spread the history over the day, older than an hour, below the day limit.
        history = min(history, policy_get(role=role).per_day - 1)
        now = timezone.now()
        step = timedelta(hours=22) / max(history, 1)
        Admission.objects.filter(user=user).delete()
        Admission.objects.bulk_create(
            Admission(user=user, admitted_at=now - timedelta(hours=1, minutes=5) - i * step)
            for i in range(history)
        )
        return user

    def _one(self, user: Any, role: Role) -> float:
        started = time.perf_counter()
        self._one_outcome(user, role)
        return time.perf_counter() - started

    def _one_outcome(self, user: Any, role: Role) -> bool:
        with transaction.atomic():
            try:
                # As job_submit asks: the role is read from the membership, with the usage.
                report = admission_check_and_record(user=user, organisation_id=self.organisation_id)
                assert report.role == role
            except RateLimitExceeded:
                return False
            finally:
                transaction.set_rollback(True)
        return True
