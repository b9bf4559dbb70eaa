"""Shared fixtures. Tests run against real PostgreSQL and Redis (see the Makefile's test target).

Celery runs eagerly in-process unless a test is marked `worker`, in which case it starts a real
worker process (tests/worker.py) and messages go through Redis, or through RabbitMQ for tests that
take the `broker_env` fixture (each of them runs on both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.core.cache import cache
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import BaseClass, Organisation, Role
from coursegen.celery import app as celery_app
from generation import pacer
from generation.providers import get_provider
from monitoring.correlation import reset_correlation_id, set_correlation_id
from monitoring.logs import flush_all, installed_handlers
from ratelimits.services import policies_seed
from tests.dbflush import transactional_tests_delete_rows
from tests.factories import BaseClassFactory, MembershipFactory, OrganisationFactory, UserFactory
from tests.worker import publishing_to, rabbitmq_vhost


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.browser import SAVED

    saved = [path for path in SAVED if path.exists()]
    if saved:
        terminalreporter.write_sep("-", f"{len(saved)} screenshot(s) saved")
        for path in saved:
            terminalreporter.write_line(str(path))


@pytest.fixture(scope="session", autouse=True)
def fast_password_hasher() -> Iterator[None]:
    # Django's advice for test suites: PBKDF2's default work factor costs ~0.3 s of CPU for every
    # user a factory makes on a 2-core machine, and the suite makes well over a thousand. No test
    # is about the hash's strength; the settings keep PBKDF2 for everything else.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(scope="session", autouse=True)
def transactional_teardown_by_delete() -> Iterator[None]:
    # ~0.3 s less for each of ~450 transactional tests (tests/dbflush.py says how and why).
    with transactional_tests_delete_rows():
        yield


@pytest.fixture(autouse=True)
def celery_eager(request: pytest.FixtureRequest) -> Iterator[None]:
    eager = request.node.get_closest_marker("worker") is None
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = eager
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The broker of a real-worker test, as the worker's extra environment: the test settings'
    Redis, or a fresh RabbitMQ vhost that this process publishes to as well."""
    if request.param == "redis":
        yield {}
        return
    with rabbitmq_vhost() as url, publishing_to(url):
        yield {"CELERY_BROKER_URL": url}


@pytest.fixture(autouse=True)
def clean_cache() -> Iterator[None]:
    # Circuit breaker state and rate counters live in the cache (Redis in tests), and so does
    # the pacer's: what this process remembers of it goes with it.
    cache.clear()
    pacer._unpaced_until.clear()
    yield


@pytest.fixture(autouse=True)
def fresh_provider() -> Iterator[None]:
    # Providers are cached per process; tests that change settings need a new one.
    get_provider.cache_clear()
    yield
    get_provider.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def log_writers_closed_before_the_test_database_goes(
    django_db_setup: None, django_db_blocker: Any
) -> Iterator[None]:
    # Otherwise the last buffered rows would be written at exit, into the non-test database.
    yield
    with django_db_blocker.unblock():
        for handler in installed_handlers():
            handler.close()


@pytest.fixture(scope="session", autouse=True)
def log_rows_written_by_each_test() -> Iterator[None]:
    # The settings' log handler writes its buffer from a thread of its own every second (or at
    # 500 rows). In tests that tick could land in a test without database access (the rows were
    # dropped, with a line on stderr) or outside a test's transaction (rows committed into later
    # tests' database). Here the thread keeps still and pytest_runtest_call below writes each
    # test's rows into that test's own database, before its teardown, or drops them.
    handlers = installed_handlers()
    before = [(handler.flush_interval, handler.batch_size) for handler in handlers]
    for handler in handlers:
        handler.flush_interval, handler.batch_size = 3600.0, 1_000_000
    yield
    for handler, (interval, batch) in zip(handlers, before, strict=True):
        handler.flush_interval, handler.batch_size = interval, batch


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield
    from django.db import connection

    try:
        connection.ensure_connection()
    except RuntimeError:  # pytest-django blocks the database in this test: nowhere to write them
        for handler in installed_handlers():
            handler.discard()
        return
    flush_all()


@pytest.fixture(autouse=True)
def fresh_correlation_id() -> Iterator[None]:
    # job_submit leaves the job's correlation id in force for the rest of its "request".
    token = set_correlation_id(None)
    yield
    reset_correlation_id(token)


@pytest.fixture(autouse=True)
def rate_limit_policies(request: pytest.FixtureRequest) -> None:
    # Transactional tests flush every table afterwards, the migration's seed rows included.
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    policies_seed()


@pytest.fixture(autouse=True)
def api_rate(settings: Any) -> None:
    # Request throttling has its own test; elsewhere it must not trip bursts or repeated runs.
    settings.COURSEGEN_API_RATE = "100000/m"


@pytest.fixture
def ratelimit_clock_still(monkeypatch: pytest.MonkeyPatch) -> float:
    """Holds django-ratelimit's clock still for a throttle test. It counts in fixed windows offset
    per key, so on a slow run N+1 requests against an N/m rate can straddle a window edge and find
    the count reset (CI of stops 29 and 30: 200 or 503 where 429 was due)."""
    frozen = time.time()
    monkeypatch.setattr("django_ratelimit.core.time", SimpleNamespace(time=lambda: frozen))
    return frozen


@pytest.fixture
def organisation(db: None) -> Organisation:
    return OrganisationFactory.create()


@pytest.fixture
def base_class(organisation: Organisation) -> BaseClass:
    return BaseClassFactory.create(organisation=organisation)


@pytest.fixture
def make_member(organisation: Organisation) -> Callable[..., AbstractUser]:
    def make(
        role: Role = Role.TEACHER, org: Organisation | None = None, **kwargs: Any
    ) -> AbstractUser:
        user: AbstractUser = UserFactory.create(**kwargs)
        MembershipFactory.create(user=user, organisation=org or organisation, role=role)
        return user

    return make


@pytest.fixture
def teacher(make_member: Callable[..., AbstractUser]) -> AbstractUser:
    return make_member(Role.TEACHER)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def client_for() -> Callable[[AbstractUser], APIClient]:
    def make(user: AbstractUser) -> APIClient:
        client = APIClient()
        client.force_authenticate(user=user)
        return client

    return make
