"""What a call cost in USD, from a price table per model and the call's merged usage.

The table ships with the package (``server/reporting/prices.toml``, which says where its numbers come from
and as of when); an operator replaces it with their own file of the same format
(``GATEWAY_PRICES_FILE``) when prices change or they have a contract. Costs are computed in
``Decimal`` from the table's written values, so a call's cost is the exact sum of its parts.
A model missing from the table has no price: its cost is unknown (None), never zero.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from decimal import Decimal
from importlib import resources
from pathlib import Path

from server.reporting.usage import Usage

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name."""

    models: dict[str, Price]

    def price_of(self, model: str) -> Price | None:
        """The model's price: by exact name, else by the longest listed name it extends with "-"."""
        price = self.models.get(model)
        if price is not None:
            return price
        prefixes = [name for name in self.models if model.startswith(name + "-")]
        return self.models[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD the usage cost on ``model``; None when the model has no price."""
        price = self.price_of(model)
        if price is None:
            return None
        tokens = usage.tokens()
        total = sum((getattr(price, kind) * count for kind, count in tokens.items()), Decimal(0))
        return float(total / MILLION)


def load(path: str = "") -> PriceTable:
    """The price table in ``path``, or the one shipped with the gateway; ValueError naming what is wrong."""
    if path:
        text = Path(path).read_text()
        where = path
    else:
        text = resources.files("server.reporting").joinpath("prices.toml").read_text()
        where = "server/reporting/prices.toml"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not TOML: {exc}") from None
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{where}: no [models.NAME] tables")
    kinds = [f.name for f in fields(Price)]
    table = {}
    for name, row in models.items():
        if not isinstance(row, dict) or set(row) != set(kinds):
            raise ValueError(f"{where}: models.{name} must set exactly {', '.join(kinds)}")
        values = {}
        for kind in kinds:
            value = row[kind]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{where}: models.{name}.{kind} must be a number >= 0, not {value!r}")
            values[kind] = Decimal(str(value))
        table[name] = Price(**values)
    return PriceTable(table)
