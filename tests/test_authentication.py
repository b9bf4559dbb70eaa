"""Token authentication: DRF's behaviour, looked up in one statement."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.authentication import UncompiledTokenAuthentication

pytestmark = pytest.mark.django_db


def _get(api_client: Any, header: str) -> Any:
    return api_client.get("/api/jobs/", HTTP_AUTHORIZATION=header)


def test_a_valid_token_authenticates_its_user_in_one_statement(teacher: Any) -> None:
    stored = Token.objects.create(user=teacher)
    request = APIRequestFactory().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {stored.key}")

    with CaptureQueriesContext(connection) as queries:
        authenticated = UncompiledTokenAuthentication().authenticate(Request(request))

    assert authenticated is not None
    user, token = authenticated

    assert len(queries) == 1
    assert user == teacher and user.username == teacher.username
    assert (token.key, token.user_id, token.created) == (stored.key, teacher.pk, stored.created)
    assert token.user is user and not token._state.adding


def test_the_api_accepts_a_token_and_answers_401_as_drf_does(api_client: Any, teacher: Any) -> None:
    key = Token.objects.create(user=teacher).key

    assert _get(api_client, f"Token {key}").status_code == 200
    refused = _get(api_client, "Token not-a-real-key")
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Invalid token."}
    assert refused["WWW-Authenticate"] == "Token"
    assert _get(api_client, f"Token {key} extra").status_code == 401  # DRF's header parsing
    assert _get(api_client, "Token").status_code == 401

    teacher.is_active = False
    teacher.save()
    inactive = _get(api_client, f"Token {key}")
    assert inactive.status_code == 401
    assert inactive.json() == {"detail": "User inactive or deleted."}
