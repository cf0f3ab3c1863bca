"""Cost estimates for API models: a small, dated price table users can override.

Prices are US dollars per 1M tokens (input, output), OpenAI standard-tier list
prices as of ``PRICES_DATE``. They change: check https://openai.com/api/pricing
and override with a JSON file, either passed as ``path`` or named by the
``MTG_PRICING_FILE`` environment variable::

    {"date": "2026-01-01",
     "models": {"gpt-4o-mini": {"input": 0.15, "output": 0.60},
                "my-gateway-model": {"input": 1.0, "output": 2.0}}}

(a bare ``{"model": {"input": .., "output": ..}}`` mapping works too). Entries
in the file replace or add to the built-in ones. Models not in the table
(self-hosted ones, for instance) get ``None``: unknown, not free.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from engines.errors import UserError

PRICES_DATE = "2025-06-01"
PRICING_ENV = "MTG_PRICING_FILE"


@dataclasses.dataclass(frozen=True)
class Price:
    """Dollars per 1M input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"price {name} must be a finite number >= 0 (USD per 1M tokens), got {v!r}")


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o4-mini": Price(1.10, 4.40),
    "gpt-3.5-turbo": Price(0.50, 1.50),
}

# "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini".
_DATED_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


class PricingFileError(UserError, ValueError):
    """The pricing override file is missing or malformed."""


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, Price]:
    """The built-in table merged with an override file.

    Args:
        path: JSON override file; ``None`` uses ``$MTG_PRICING_FILE`` if set.

    Raises:
        PricingFileError: the file cannot be read or has a bad entry.
    """
    prices = dict(DEFAULT_PRICES)
    path = path if path is not None else os.environ.get(PRICING_ENV) or None
    if path is None:
        return prices
    try:
        data: Any = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PricingFileError(f"cannot read pricing file {path} ({PRICING_ENV}): {e}") from e
    models = data.get("models", data) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise PricingFileError(f"pricing file {path} must hold a JSON object of models, got {type(data).__name__}")
    for name, entry in models.items():
        if name == "date" and not isinstance(entry, dict):
            continue
        try:
            prices[name] = Price(float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError) as e:
            raise PricingFileError(
                f"pricing file {path}: model {name!r} needs numeric 'input' and 'output' "
                f"(USD per 1M tokens), got {entry!r} ({e})"
            ) from e
    return prices


def price_for(model: str, prices: dict[str, Price] | None = None) -> Price | None:
    """The price of ``model`` (exact name, then without a date suffix), or None."""
    table = prices if prices is not None else load_prices()
    if model in table:
        return table[model]
    return table.get(_DATED_SUFFIX.sub("", model))


def estimate_cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    prices: dict[str, Price] | None = None,
) -> float | None:
    """Estimated USD cost of that many tokens on ``model``.

    Args:
        model: API model name, e.g. ``gpt-4o-mini`` or ``gpt-4o-mini-2024-07-18``.
        prompt_tokens: input tokens, >= 0.
        completion_tokens: output tokens, >= 0.
        prices: a table to use instead of ``load_prices()``.

    Returns:
        Dollars, or None if the model has no known price.
    """
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {prompt_tokens}, {completion_tokens}")
    price = price_for(model, prices)
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def estimate_spec_cost(spec: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """``estimate_cost`` for an engine spec: priced only for ``openai:MODEL`` (None for local engines)."""
    backend, _, model = spec.partition(":")
    return estimate_cost(model, prompt_tokens, completion_tokens) if backend == "openai" else None
