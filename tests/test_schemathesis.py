"""Schemathesis over every operation of /api/schema/, as a teacher, a student and anonymous
(issue 21): no response is a 5xx, and every status and body is one the schema documents.

Requests go through Django's whole WSGI stack in this process (middleware, authentication, the
throttle, the parsers), against this test's database. Half the cases aim at objects that exist
(the caller's own finished job and its first task, the caller's class), so the fuzzer reaches
past the 404s and 400s of random ids. Nothing is delivered to workers: a submit, resume or
regeneration is admitted and recorded, and its Celery messages are dropped, so no provider is
called (the offline one is the tests' default anyway). Examples are bounded and derandomized:
each run sends the same requests (docs/development.md#schemathesis).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, settings, strategies
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import BaseClass, Role
from coursegen.celery import app as celery_app
from generation import messages
from generation.models import CourseGenerationJob
from ratelimits.models import OrganisationBudget
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
# Per operation and generation mode; 17 operations, 3 callers (docs/development.md).
MAX_EXAMPLES = 40


@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    job: CourseGenerationJob
    base_class: BaseClass


@pytest.fixture(params=["teacher", "student", "anonymous"])
def caller(
    request: pytest.FixtureRequest, make_member: Any, base_class: BaseClass, settings: Any
) -> Caller:
    settings.COURSEGEN_JUDGE_ENABLED = False
    owner = make_member(Role.TEACHER if request.param == "anonymous" else Role(request.param))
    job = finished_job(owner, base_class, num_modules=1, lessons_per_module=1)
    if request.param == "anonymous":
        return Caller("anonymous", {}, job, base_class)
    if request.param == "student":
        # The student's organisation has spent its month: paid work answers 402 (documented).
        OrganisationBudget.objects.create(
            organisation=base_class.organisation, monthly_usd=Decimal("0.01")
        )
    token = Token.objects.create(user=owner)
    return Caller(request.param, {"Authorization": f"Token {token.key}"}, job, base_class)


class _Dropped:
    """A Celery task whose messages go nowhere."""

    def apply_async(self, *args: Any, **kwargs: Any) -> None:
        return None

    def delay(self, *args: Any, **kwargs: Any) -> None:
        return None


def _one_live_worker(**kwargs: Any) -> list[dict[str, Any]]:
    return [{"celery@schemathesis": {"ok": "pong"}}]


@pytest.fixture
def api_schema(caller: Caller, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # After the caller's job is made (that one runs, eagerly, on the offline provider).
    monkeypatch.setattr(messages, "task", lambda name: _Dropped())
    # A deployment whose workers answer: health is 200 (and answers at once), not 503.
    monkeypatch.setattr(celery_app.control, "ping", _one_live_worker)
    yield schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())


schema = schemathesis.pytest.from_fixture("api_schema")


# Requests sent per caller, by operation and status: printed at the end of each caller's run.
SENT: dict[str, Counter[tuple[str, int]]] = {}


@pytest.fixture
def tally(caller: Caller, request: pytest.FixtureRequest) -> Iterator[Counter[tuple[str, int]]]:
    sent = SENT.setdefault(caller.name, Counter())
    yield sent
    statuses = Counter[int]()
    for (_, status), count in sent.items():
        statuses[status] += count
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"schemathesis {caller.name}: {sum(statuses.values())} requests over "
            f"{len({op for op, _ in sent})} operations, by status {dict(sorted(statuses.items()))}"
        )


def _aim(case: Any, caller: Caller) -> None:
    """Point the case at objects that exist and the caller may see (its own)."""
    path = case.path_parameters or {}
    if "job_id" in path:
        path["job_id"] = str(caller.job.pk)
    if "task_id" in path:
        path["task_id"] = caller.job.tasks.order_by("pk").values_list("pk", flat=True)[0]
    if isinstance(case.body, dict) and "base_class" in case.body:
        case.body["base_class"] = str(caller.base_class.pk)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@schema.given(aimed=strategies.booleans())
@schema.parametrize()
def test_every_operation_answers_as_documented(
    case: Any, aimed: bool, caller: Caller, tally: Counter[tuple[str, int]]
) -> None:
    if aimed:
        _aim(case, caller)

    response = case.call_and_validate(headers=caller.headers, checks=CHECKS)

    tally[(case.operation.label, response.status_code)] += 1
