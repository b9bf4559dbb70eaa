"""List prices per model, and the one function that turns usage into dollars.

Prices are USD per million tokens (OpenAI's published list prices for these models). Cached input
is the part of the prompt served from the provider's prompt cache; the Batch API halves all prices.
`COURSEGEN_MODEL_PRICES` adds models (a local model at 0) or overrides a row. A model with no price
costs nothing rather than failing a generation: a system check warns once at start for each
configured model without one, and each process logs it once, not per call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core import checks

from generation.providers.base import Usage

logger = logging.getLogger("coursegen.pricing")

MILLION = Decimal(1_000_000)
BATCH_DISCOUNT = Decimal("0.5")


@dataclass(frozen=True)
class ModelPrice:
    input: Decimal
    cached_input: Decimal
    output: Decimal


PRICES: dict[str, ModelPrice] = {
    "gpt-4.1": ModelPrice(Decimal("2.00"), Decimal("0.50"), Decimal("8.00")),
    "gpt-4.1-mini": ModelPrice(Decimal("0.40"), Decimal("0.10"), Decimal("1.60")),
    "gpt-4.1-nano": ModelPrice(Decimal("0.10"), Decimal("0.025"), Decimal("0.40")),
    "gpt-4o": ModelPrice(Decimal("2.50"), Decimal("1.25"), Decimal("10.00")),
    "gpt-4o-mini": ModelPrice(Decimal("0.15"), Decimal("0.075"), Decimal("0.60")),
}


def price_for(model: str) -> ModelPrice | None:
    configured = settings.COURSEGEN_MODEL_PRICES.get(model)
    if configured is not None:
        return ModelPrice(*(Decimal(p) for p in configured))
    if model in PRICES:
        return PRICES[model]
    # Dated snapshots ("gpt-4.1-mini-2025-04-14") cost what their family costs.
    family = max((name for name in PRICES if model.startswith(name + "-")), key=len, default=None)
    return PRICES[family] if family else None


def cost_of(usage: Usage, model: str, *, batch: bool = False) -> Decimal:
    price = price_for(model)
    if price is None:
        _warn_once(model)
        return Decimal(0)
    uncached = max(usage.input_tokens - usage.cached_tokens, 0)
    dollars = (
        uncached * price.input
        + usage.cached_tokens * price.cached_input
        + usage.output_tokens * price.output
    ) / MILLION
    if batch:
        dollars *= BATCH_DISCOUNT
    return dollars.quantize(Decimal("0.00000001"))


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(model: str) -> None:
    with _warned_lock:
        if model in _warned:
            return
        _warned.add(model)
    logger.warning(
        "no price for model %s; counting its cost as 0 (set COURSEGEN_MODEL_PRICES, e.g. %s=0)",
        model,
        model,
    )


def warn_unpriced_models() -> None:
    """Log each configured model without a price once (a worker's start)."""
    for model in configured_models().values():
        if price_for(model) is None:
            _warn_once(model)


def configured_models() -> dict[str, str]:
    """The models the settings route work to, by the setting that names them."""
    named = {
        "COURSEGEN_MODEL_COMPLEX": settings.COURSEGEN_MODEL_COMPLEX,
        "COURSEGEN_MODEL_SIMPLE": settings.COURSEGEN_MODEL_SIMPLE,
        "COURSEGEN_JUDGE_MODEL": settings.COURSEGEN_JUDGE_MODEL,
    }
    return {setting: model for setting, model in named.items() if model}


@checks.register()
def check_model_prices(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """One warning at start per configured model without a price (its cost counts as 0)."""
    missing: dict[str, list[str]] = {}
    for setting, model in configured_models().items():
        if price_for(model) is None:
            missing.setdefault(model, []).append(setting)
    return [
        checks.Warning(
            f"no price for model {model!r} ({', '.join(names)}): its calls count as $0",
            hint=f"Set COURSEGEN_MODEL_PRICES, e.g. {model}=0 for a local model or "
            f"{model}=0.40/0.10/1.60 (USD per million input/cached/output tokens).",
            id="generation.W001",
        )
        for model, names in missing.items()
    ]
