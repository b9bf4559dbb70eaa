"""Production safety nets (issue 21, item 9): the development secret key is refused outside DEBUG,
HTTPS settings come from the environment, DRF tokens expire, sign-in attempts are throttled."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from coursegen.checks import check_secret_key, refuse_insecure_secret_key
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent
DEV_KEY = "insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"


def test_the_development_key_is_an_error_outside_debug(settings: Any) -> None:
    settings.DEBUG, settings.SECRET_KEY = False, DEV_KEY

    errors = check_secret_key()

    assert [e.id for e in errors] == ["coursegen.E001"]
    with pytest.raises(ImproperlyConfigured, match=r"coursegen\.E001"):
        refuse_insecure_secret_key()


@pytest.mark.parametrize(("debug", "key"), [(True, DEV_KEY), (False, "a-real-" + "k" * 50)])
def test_a_real_key_or_debug_passes(debug: bool, key: str, settings: Any) -> None:
    settings.DEBUG, settings.SECRET_KEY = debug, key

    assert check_secret_key() == []


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_refuses_the_development_key_outside_debug() -> None:
    result = _manage("check", DJANGO_DEBUG="false")

    assert result.returncode != 0
    assert "coursegen.E001" in result.stderr


def test_the_https_settings_pass_djangos_deployment_checks() -> None:
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "k3y-" + "x7Qp9" * 12,
        "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
        "DJANGO_SECURE_SSL_REDIRECT": "true",
        "DJANGO_SECURE_COOKIES": "true",
        "DJANGO_SECURE_HSTS_SECONDS": "31536000",
        "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "DJANGO_SECURE_HSTS_PRELOAD": "true",
    }

    result = _manage("check", "--deploy", "--fail-level", "ERROR", **env)

    assert result.returncode == 0, result.stderr
    assert "security." not in result.stderr, result.stderr
    without = _manage(
        "check", "--deploy", DJANGO_DEBUG="false", **{"DJANGO_SECRET_KEY": env["DJANGO_SECRET_KEY"]}
    )
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in without.stderr


@pytest.mark.django_db
def test_a_token_older_than_its_lifetime_is_refused(settings: Any) -> None:
    settings.API_TOKEN_TTL_HOURS = 24
    user = UserFactory.create()
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/jobs/").status_code == 200

    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(hours=25))
    response = client.get("/api/jobs/")

    assert response.status_code == 401
    assert response.json()["detail"] == "Token has expired."
    settings.API_TOKEN_TTL_HOURS = 0  # never expire
    assert client.get("/api/jobs/").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/admin/login/", "/accounts/login/"])
def test_sign_in_attempts_are_throttled_per_ip_and_per_username(
    path: str, settings: Any, ratelimit_clock_still: float
) -> None:
    settings.COURSEGEN_LOGIN_RATE = "3/m"
    UserFactory.create(username="victim")
    client = Client()

    answers = [
        client.post(path, {"username": "victim", "password": f"guess{i}"}).status_code
        for i in range(4)
    ]

    assert answers[:3] == [200, 200, 200] and answers[3] == 429  # the form again, then refused
    other_ip = Client(REMOTE_ADDR="10.0.0.9")
    refused = other_ip.post(path, {"username": "Victim", "password": "guess"})
    assert refused.status_code == 429  # the same username from elsewhere
    assert int(refused["Retry-After"]) >= 1
    assert other_ip.get(path).status_code == 200  # the form itself is never refused
