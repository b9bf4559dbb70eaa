"""Prices: the table, COURSEGEN_MODEL_PRICES for any other model, one warning per unpriced model."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from coursegen.settings import env_prices
from generation import pricing
from generation.providers.base import Usage

USAGE = Usage(input_tokens=1_000_000, cached_tokens=0, output_tokens=1_000_000)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    pricing._warned.clear()


def test_it_prices_a_local_model_at_zero_without_a_warning(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.COURSEGEN_MODEL_PRICES = {"local": ("0", "0", "0")}

    assert pricing.cost_of(USAGE, "local") == Decimal(0)
    assert not [r for r in caplog.records if r.name == "coursegen.pricing"]


def test_it_prices_a_configured_model_and_overrides_the_table(settings: Any) -> None:
    settings.COURSEGEN_MODEL_PRICES = {
        "my-model": ("0.20", "0.05", "0.80"),
        "gpt-4.1-mini": ("1", "1", "1"),
    }

    assert pricing.cost_of(USAGE, "my-model") == Decimal("1.00")
    assert pricing.cost_of(USAGE, "gpt-4.1-mini") == Decimal("2.00")


def test_it_warns_once_per_unknown_model_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="coursegen.pricing"):
        for _ in range(5):
            assert pricing.cost_of(USAGE, "mystery-model") == Decimal(0)

    (warning,) = [r for r in caplog.records if r.name == "coursegen.pricing"]
    assert "no price for model mystery-model" in warning.getMessage()
    assert "COURSEGEN_MODEL_PRICES" in warning.getMessage()


def test_the_system_check_warns_once_per_configured_model_without_a_price(settings: Any) -> None:
    settings.COURSEGEN_MODEL_COMPLEX = "local"
    settings.COURSEGEN_MODEL_SIMPLE = "local"
    settings.COURSEGEN_JUDGE_MODEL = ""

    (warning,) = pricing.check_model_prices(None)

    assert warning.id == "generation.W001"
    assert (
        "'local'" in warning.msg
        and "COURSEGEN_MODEL_COMPLEX, COURSEGEN_MODEL_SIMPLE" in warning.msg
    )
    settings.COURSEGEN_MODEL_PRICES = {"local": ("0", "0", "0")}
    assert pricing.check_model_prices(None) == []


def test_it_parses_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P", "local=0, my-model=0.20/0.05/0.80")

    assert env_prices("P") == {
        "local": ("0", "0", "0"),
        "my-model": ("0.20", "0.05", "0.80"),
    }


@pytest.mark.parametrize("value", ["local", "local=free", "m=1/2", "m=-1", "=0"])
def test_it_refuses_a_malformed_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("P", value)

    with pytest.raises(ImproperlyConfigured):
        env_prices("P")
