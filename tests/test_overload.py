"""A request that finds every pooled database connection busy answers 503, not 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from psycopg_pool import PoolTimeout
from rest_framework.test import APIClient

from coursegen.overload import is_pool_timeout

pytestmark = pytest.mark.django_db


def _pool_timeout() -> OperationalError:
    # What Django's DatabaseErrorWrapper raises when psycopg_pool's getconn times out.
    try:
        try:
            raise PoolTimeout("couldn't get a connection after 10.00 sec")
        except PoolTimeout as exc:
            raise OperationalError(*exc.args) from exc
    except OperationalError as wrapped:
        return wrapped


def test_a_pool_timeout_answers_a_json_503_with_retry_after(
    teacher: Any, client_for: Callable[[Any], APIClient]
) -> None:
    with mock.patch("generation.apis.job_progress_visible", side_effect=_pool_timeout()):
        response = client_for(teacher).get(
            "/api/jobs/00000000-0000-0000-0000-000000000001/progress/"
        )
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "busy"


def test_other_database_errors_are_not_dressed_up_as_busy(
    teacher: Any, client_for: Callable[[Any], APIClient]
) -> None:
    boom = OperationalError("server closed the connection unexpectedly")
    with (
        mock.patch("generation.apis.job_progress_visible", side_effect=boom),
        pytest.raises(OperationalError),
    ):
        client_for(teacher).get("/api/jobs/00000000-0000-0000-0000-000000000001/progress/")
    assert is_pool_timeout(_pool_timeout())
    assert not is_pool_timeout(boom)
