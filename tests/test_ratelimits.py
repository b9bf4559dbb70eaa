"""Rate limits: sliding windows in time, the 429 answer, the usage endpoint, policies, roles.

Time moves with time-machine (frozen, then shifted), never with sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection, transaction
from django.utils.dateparse import parse_datetime

from accounts.models import BaseClass, Membership, Role
from coursegen import db
from generation.models import CourseGenerationJob
from monitoring.models import Alert, AlertKind
from ratelimits.models import Admission, RateLimitPolicy, RateLimitViolation, Window
from ratelimits.selectors import NotAMemberError, PolicyMissingError
from ratelimits.serializers import RateLimitExceededOutputSerializer
from ratelimits.services import RateLimitExceeded, admission_check_and_record
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
BODY = {"topic": "Rate limited fractions", "num_modules": 1, "lessons_per_module": 1}


@pytest.fixture(autouse=True, params=["sql", "orm"])
def admission_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both paths: PostgreSQL's statements and the ORM's (SQLite, the demo)."""
    if request.param == "orm":
        monkeypatch.setattr(db, "hand_written_sql", lambda: False)
    return str(request.param)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def nothing_starts(settings: Any) -> None:
    # No running capacity: admitted jobs wait in the queue and keep their concurrency slots.
    settings.COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = 0


def _admit(user: Any, role: Role) -> RateLimitExceeded | None:
    """One admission in its own transaction, as job_submit makes it: under the role the user
    holds in the organisation, read by the admission itself. The refusal if refused."""
    organisation_id = Membership.objects.get(user=user).organisation_id
    try:
        with transaction.atomic():
            report = admission_check_and_record(user=user, organisation_id=organisation_id)
    except RateLimitExceeded as exc:
        assert exc.role == role
        return exc
    assert report.role == role
    return None


def _unlimited_concurrency(role: Role) -> None:
    RateLimitPolicy.objects.filter(role=role).update(max_concurrent=1000)


def _submit(client: Any, base_class: BaseClass) -> Any:
    return client.post("/api/jobs/", {"base_class": str(base_class.pk), **BODY}, format="json")


# --- Windows in time ---------------------------------------------------------------------------
def test_it_answers_429_naming_the_limit_its_window_and_reset_and_creates_nothing(
    client_for: Any,
    teacher: Any,
    base_class: BaseClass,
    clock: time_machine.Traveller,
    nothing_starts: None,
) -> None:
    _unlimited_concurrency(Role.TEACHER)
    client = client_for(teacher)
    for _ in range(5):
        assert _submit(client, base_class).status_code == 201
        clock.shift(timedelta(seconds=4))
    clock.move_to(T0 + timedelta(seconds=20))

    response = _submit(client, base_class)

    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == "40"
    body = response.json()
    assert body["window"] == "minute" and body["window_seconds"] == 60
    assert (body["limit"], body["used"], body["role"]) == (5, 5, "teacher")
    assert parse_datetime(body["reset_at"]) == T0 + timedelta(seconds=60)
    assert body["retry_after_s"] == 40
    assert "5 course generation requests per minute" in body["detail"]
    assert CourseGenerationJob.objects.filter(owner=teacher).count() == 5
    violation = RateLimitViolation.objects.get(user=teacher)
    assert (violation.role, violation.window, violation.limit) == ("teacher", "minute", 5)
    assert violation.at == T0 + timedelta(seconds=20)

    clock.shift(timedelta(seconds=39))
    assert _submit(client, base_class).status_code == 429
    clock.shift(timedelta(seconds=1))  # Retry-After has passed: admitted
    assert _submit(client, base_class).status_code == 201
    # Both refusals became one rate-limit alert for this user, counted twice (deduplicated).
    alert = Alert.objects.get(kind=AlertKind.RATE_LIMIT_VIOLATION)
    assert (alert.subject, alert.count) == (f"user:{teacher.pk}", 2)


def test_it_slides_the_window_so_a_boundary_never_doubles_the_limit(
    make_member: Any, clock: time_machine.Traveller
) -> None:
    student = make_member(Role.STUDENT)
    _unlimited_concurrency(Role.STUDENT)
    clock.move_to(T0 + timedelta(seconds=58))
    assert _admit(student, Role.STUDENT) is None
    clock.shift(timedelta(seconds=1))
    assert _admit(student, Role.STUDENT) is None

    # A fixed window would reset at 09:01:00 and let two more through within two seconds.
    clock.move_to(T0 + timedelta(seconds=61))
    refused = _admit(student, Role.STUDENT)

    assert refused is not None and refused.window == Window.MINUTE
    assert refused.reset_at == T0 + timedelta(seconds=118)
    assert refused.retry_after_s == 57
    clock.move_to(T0 + timedelta(seconds=118))
    assert _admit(student, Role.STUDENT) is None
    assert _admit(student, Role.STUDENT) is not None  # 09:00:59 is still in the window


def test_it_resets_the_hour_window_on_time(make_member: Any, clock: time_machine.Traveller) -> None:
    student = make_member(Role.STUDENT)
    _unlimited_concurrency(Role.STUDENT)
    for _ in range(10):
        assert _admit(student, Role.STUDENT) is None
        clock.shift(timedelta(minutes=1))

    refused = _admit(student, Role.STUDENT)

    assert refused is not None and refused.window == Window.HOUR
    assert refused.reset_at == T0 + timedelta(hours=1)
    clock.move_to(T0 + timedelta(hours=1) - timedelta(microseconds=1))
    assert _admit(student, Role.STUDENT) is not None
    clock.move_to(T0 + timedelta(hours=1))
    assert _admit(student, Role.STUDENT) is None


def test_it_counts_the_day_limit_across_hours(
    make_member: Any, clock: time_machine.Traveller
) -> None:
    student = make_member(Role.STUDENT)
    _unlimited_concurrency(Role.STUDENT)
    for batch in range(5):  # 10 an hour (the hour limit), every other hour: 50 in 9 hours
        clock.move_to(T0 + timedelta(hours=2 * batch))
        for _ in range(10):
            assert _admit(student, Role.STUDENT) is None
            clock.shift(timedelta(minutes=1))

    clock.move_to(T0 + timedelta(hours=12))
    refused = _admit(student, Role.STUDENT)

    assert refused is not None and refused.window == Window.DAY
    assert (refused.limit, refused.used) == (50, 50)
    assert refused.reset_at == T0 + timedelta(days=1)
    assert refused.retry_after_s == 12 * 3600
    clock.move_to(T0 + timedelta(days=1))
    assert _admit(student, Role.STUDENT) is None


def test_it_prunes_admissions_older_than_the_longest_window(
    make_member: Any, clock: time_machine.Traveller
) -> None:
    student = make_member(Role.STUDENT)
    _unlimited_concurrency(Role.STUDENT)
    assert _admit(student, Role.STUDENT) is None
    clock.shift(timedelta(minutes=5))
    assert _admit(student, Role.STUDENT) is None
    clock.move_to(T0 + timedelta(days=1, minutes=1))

    assert _admit(student, Role.STUDENT) is None

    kept = list(Admission.objects.filter(user=student).values_list("admitted_at", flat=True))
    assert kept == [T0 + timedelta(minutes=5), T0 + timedelta(days=1, minutes=1)]


def test_it_refuses_to_admit_under_a_role_without_a_policy(make_member: Any) -> None:
    student = make_member(Role.STUDENT)
    RateLimitPolicy.objects.filter(role=Role.STUDENT).delete()

    organisation_id = Membership.objects.get(user=student).organisation_id
    with pytest.raises(PolicyMissingError), transaction.atomic():
        admission_check_and_record(user=student, organisation_id=organisation_id)

    assert not Admission.objects.filter(user=student).exists()


def test_it_admits_only_members_of_the_organisation_under_their_role_there(
    make_member: Any,
) -> None:
    student = make_member(Role.STUDENT)
    elsewhere = OrganisationFactory.create()

    with pytest.raises(NotAMemberError), transaction.atomic():
        admission_check_and_record(user=student, organisation_id=elsewhere.pk)
    assert not Admission.objects.filter(user=student).exists()

    Membership.objects.create(user=student, organisation=elsewhere, role=Role.ADMIN)
    with transaction.atomic():
        there = admission_check_and_record(user=student, organisation_id=elsewhere.pk)
    assert there.role == Role.ADMIN
    assert there.max_concurrent == RateLimitPolicy.objects.get(role=Role.ADMIN).max_concurrent


def test_it_waits_for_enough_requests_to_leave_when_a_limit_was_lowered(
    teacher: Any, clock: time_machine.Traveller
) -> None:
    _unlimited_concurrency(Role.TEACHER)
    for _ in range(5):
        assert _admit(teacher, Role.TEACHER) is None
        clock.shift(timedelta(seconds=1))
    RateLimitPolicy.objects.filter(role=Role.TEACHER).update(per_minute=2)

    refused = _admit(teacher, Role.TEACHER)

    # Five in the window, two allowed: the fourth oldest (09:00:03) must leave first.
    assert refused is not None and refused.reset_at == T0 + timedelta(seconds=63)
    clock.move_to(T0 + timedelta(seconds=62))
    assert _admit(teacher, Role.TEACHER) is not None
    clock.move_to(T0 + timedelta(seconds=63))
    assert _admit(teacher, Role.TEACHER) is None


def test_it_keeps_the_usage_row_of_the_specification(
    teacher: Any, clock: time_machine.Traveller
) -> None:
    for seconds in (0, 10, 20):
        clock.move_to(T0 + timedelta(seconds=seconds))
        assert _admit(teacher, Role.TEACHER) is None

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT role, minute_count, minute_window_start, hour_count, day_count, active_jobs"
            " FROM course_generation_rate_limits WHERE user_id = %s",
            [teacher.pk],
        )
        row = cursor.fetchone()

    assert row == ("teacher", 3, T0, 3, 3, 1)  # no jobs in this test: the admission's own


# --- Concurrent jobs ---------------------------------------------------------------------------
def test_it_frees_the_concurrency_slot_when_the_job_ends(
    client_for: Any, make_member: Any, base_class: BaseClass, nothing_starts: None
) -> None:
    student = make_member(Role.STUDENT)
    client = client_for(student)
    first = _submit(client, base_class).json()
    refused = _submit(client, base_class)
    assert refused.status_code == 429 and refused.json()["window"] == "concurrent"
    assert refused.json()["reset_at"] is None
    assert refused["Retry-After"] == "30"  # COURSEGEN_RATELIMIT_CONCURRENT_RETRY_S

    assert client.post(f"/api/jobs/{first['id']}/cancel/").status_code == 200

    assert _submit(client, base_class).status_code == 201


# --- Policies and roles change on the next request ---------------------------------------------
def test_it_applies_a_policy_edited_in_the_admin_on_the_next_request(
    admin_client: Any, client_for: Any, make_member: Any, base_class: BaseClass
) -> None:
    student = make_member(Role.STUDENT)
    client = client_for(student)
    assert [_submit(client, base_class).status_code for _ in range(3)] == [201, 201, 429]
    policy = RateLimitPolicy.objects.get(role=Role.STUDENT)

    saved = admin_client.post(
        "/admin/ratelimits/ratelimitpolicy/",
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-MIN_NUM_FORMS": "0",
            "form-MAX_NUM_FORMS": "1000",
            "form-0-id": str(policy.pk),
            "form-0-per_minute": "3",
            "form-0-per_hour": "10",
            "form-0-per_day": "50",
            "form-0-max_concurrent": "1",
            "form-0-tasks_per_hour": "430",
            "form-0-tasks_per_day": "2150",
            "form-0-regenerations_per_hour": "10",
            "form-0-resumes_per_hour": "3",
            "_save": "Save",
        },
    )

    assert saved.status_code == 302, saved.content[-2000:]
    assert RateLimitPolicy.objects.get(role=Role.STUDENT).per_minute == 3
    assert _submit(client, base_class).status_code == 201


def test_it_applies_a_role_changed_in_the_admin_on_the_next_request(
    admin_client: Any,
    client_for: Any,
    make_member: Any,
    base_class: BaseClass,
    nothing_starts: None,
) -> None:
    student = make_member(Role.STUDENT)
    client = client_for(student)
    assert _submit(client, base_class).status_code == 201
    assert _submit(client, base_class).status_code == 429  # one unfinished job for a student
    membership = Membership.objects.get(user=student)

    saved = admin_client.post(
        f"/admin/accounts/membership/{membership.pk}/change/",
        {"user": student.pk, "organisation": str(membership.organisation_id), "role": "teacher"},
    )

    assert saved.status_code == 302, saved.content[-2000:]
    assert _submit(client, base_class).status_code == 201
    usage = client.get("/api/user/rate-limits").json()
    assert (usage["role"], usage["concurrent_limit"], usage["active_jobs"]) == ("teacher", 3, 2)


# --- GET /api/user/rate-limits -----------------------------------------------------------------
def test_it_reports_each_limit_with_used_remaining_and_reset(
    client_for: Any,
    teacher: Any,
    base_class: BaseClass,
    clock: time_machine.Traveller,
    nothing_starts: None,
) -> None:
    client = client_for(teacher)
    _submit(client, base_class)
    clock.shift(timedelta(seconds=15))
    _submit(client, base_class)
    clock.shift(timedelta(seconds=15))

    response = client.get("/api/user/rate-limits")

    assert response.status_code == 200
    body = response.json()
    assert body["role"] == "teacher"
    assert body["organisation"] == str(base_class.organisation_id)
    assert (body["active_jobs"], body["concurrent_limit"], body["concurrent_remaining"]) == (
        2,
        3,
        1,
    )
    limits = {item["window"]: item for item in body["limits"]}
    assert {w: (v["limit"], v["used"], v["remaining"]) for w, v in limits.items()} == {
        "minute": (5, 2, 3),
        "hour": (30, 2, 28),
        "day": (200, 2, 198),
        "tasks_hour": (1290, 14, 1276),  # two 1x1 courses of 7 tasks each
        "tasks_day": (8600, 14, 8586),
        "regenerations_hour": (60, 0, 60),
        "resumes_hour": (10, 0, 10),
    }
    assert parse_datetime(limits["minute"]["resets_at"]) == T0 + timedelta(minutes=1)
    assert parse_datetime(limits["day"]["resets_at"]) == T0 + timedelta(days=1)
    clock.shift(timedelta(seconds=31))  # the first request has left the minute window
    minute = client.get("/api/user/rate-limits/").json()["limits"][0]
    assert (minute["used"], minute["remaining"]) == (1, 4)
    assert parse_datetime(minute["resets_at"]) == T0 + timedelta(seconds=75)


def test_it_uses_the_role_of_the_organisation_asked_for_and_else_the_highest(
    client_for: Any, make_member: Any, organisation: Any
) -> None:
    other = OrganisationFactory.create()
    user = make_member(Role.STUDENT)
    Membership.objects.create(user=user, organisation=other, role=Role.ADMIN)
    client = client_for(user)

    assert client.get("/api/user/rate-limits").json()["role"] == "admin"
    in_first = client.get(f"/api/user/rate-limits?organisation={organisation.pk}").json()
    assert (in_first["role"], in_first["concurrent_limit"]) == ("student", 1)
    assert in_first["limits"][0]["limit"] == 2
    foreign = OrganisationFactory.create()
    assert client.get(f"/api/user/rate-limits?organisation={foreign.pk}").status_code == 404
    bad = client.get("/api/user/rate-limits?organisation=nope")
    assert bad.status_code == 400 and "organisation" in bad.json()


def test_it_requires_authentication_for_the_usage_endpoint(api_client: Any) -> None:
    assert api_client.get("/api/user/rate-limits").status_code == 401


# --- Request-level throttling ------------------------------------------------------------------
def test_it_throttles_a_client_hammering_any_endpoint_with_a_json_429(
    client_for: Any, teacher: Any, make_member: Any, settings: Any, ratelimit_clock_still: float
) -> None:
    settings.COURSEGEN_API_RATE = "3/m"
    cache.clear()  # this test's Redis database: no counts left from an earlier run
    client = client_for(teacher)
    assert [client.get("/api/jobs/").status_code for _ in range(3)] == [200, 200, 200]

    throttled = client.get("/api/user/rate-limits")

    assert throttled.status_code == 429
    assert throttled["Content-Type"] == "application/json"
    body = throttled.json()
    assert "throttled" in body["detail"]
    assert 1 <= int(throttled["Retry-After"]) <= 60
    # The same body as job admission's 429 (one shape in the schema).
    assert set(body) == set(RateLimitExceededOutputSerializer().fields)
    assert body["window"] == "requests" and body["role"] is None
    assert (body["limit"], body["window_seconds"], body["used"]) == (3, 60, 4)
    assert body["retry_after_s"] == int(throttled["Retry-After"]) and body["requested"] == 1
    assert client_for(make_member(Role.TEACHER)).get("/api/jobs/").status_code == 200


# --- Admin -------------------------------------------------------------------------------------
def test_it_shows_usage_and_violations_read_only_in_the_admin(
    admin_client: Any, client_for: Any, make_member: Any, base_class: BaseClass
) -> None:
    student = make_member(Role.STUDENT)
    client = client_for(student)
    for _ in range(3):
        _submit(client, base_class)

    for page in ("ratelimitusage", "ratelimitviolation", "ratelimitpolicy"):
        listing = admin_client.get(f"/admin/ratelimits/{page}/")
        assert listing.status_code == 200
    violations = admin_client.get("/admin/ratelimits/ratelimitviolation/?window__exact=minute")
    assert student.username in violations.content.decode()
    assert admin_client.get("/admin/ratelimits/ratelimitviolation/add/").status_code == 403
    assert admin_client.get("/admin/ratelimits/ratelimitusage/add/").status_code == 403
