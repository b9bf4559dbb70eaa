"""List prices per model, and the one function that turns usage into dollars.

Prices are USD per million tokens (OpenAI's published list prices for these models). Cached input
is the part of the prompt served from the provider's prompt cache; the Batch API halves all prices.
Unknown models cost nothing rather than failing a generation, and are flagged in the logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

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
    if model in PRICES:
        return PRICES[model]
    # Dated snapshots ("gpt-4.1-mini-2025-04-14") cost what their family costs.
    family = max((name for name in PRICES if model.startswith(name + "-")), key=len, default=None)
    return PRICES[family] if family else None


def cost_of(usage: Usage, model: str, *, batch: bool = False) -> Decimal:
    price = price_for(model)
    if price is None:
        logger.warning("no price for model %s; counting its cost as 0", model)
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
