"""What a call cost in USD: the model that served it, its merged usage, and a source of prices.

Two sources, one interface (``Prices``), chosen at start-up by ``load``:

- ``Catalog``, the default: the prices of ``genai-prices`` (pydantic's maintained price data, pinned in
  pyproject.toml: upgrading the package updates the prices). Every Claude model it knows, matched by its
  own rules (dated snapshots, aliases), with long-context tiers (above a number of input tokens every
  token of the call costs the tier's price), prices that change on a date, cache writes (5 minutes,
  1 hour), cache reads and web searches.
- ``PriceTable``: ``GATEWAY_PRICES_FILE``, an operator's TOML table (a contract, or prices newer than
  the package) that replaces the catalog whole: a model it does not list has no price.

A model with no price has its cost reported as unknown (None), never as zero. Costs are summed in
``Decimal`` and reported as a float.

A call is priced once, at its end (``server.reporting.telemetry``), never per event. genai-prices'
``calc_price`` takes a few hundred microseconds of CPU a call (it decomposes and validates a generic
usage object; docs/operations.md has the measurement and its command), so the catalog does less per
call: it matches each model name once (a bounded cache), resolves that model's prices once a day
(prices have start dates), and prices a call with genai-prices' own ``calc_unit_price`` (tiers
included) per kind of token; ``tests/test_prices.py`` checks that this equals ``calc_price`` for every
Claude model the package knows, below and above each tier.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.reporting.usage import Usage

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, Provider, TieredPrices

    Rate = Decimal | TieredPrices | None  # one price key's value: flat, tiered, or none

MILLION = Decimal(1_000_000)
PROVIDER = "anthropic"  # genai-prices' provider of the Messages API's models
MAX_CACHED_MODELS = 512  # model names remembered (found or not): names come from callers and the upstream

# Each kind of token the gateway counts (``Usage.tokens``), and the genai-prices price keys that price it,
# most specific first: a model without a key is priced by the next one, as genai-prices' unit tree does.
PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_mtok",),
    "output": ("output_mtok",),
    "cache_read": ("cache_read_mtok", "input_mtok"),
    "cache_write_5m": ("cache_write_5m_mtok", "cache_write_mtok", "input_mtok"),
    "cache_write_1h": ("cache_write_1h_mtok", "cache_write_mtok", "input_mtok"),
}
WEB_SEARCHES = "web_searches_kcount"  # USD per thousand web searches


class Prices(Protocol):
    """A source of prices."""

    @property
    def known(self) -> frozenset[str]:
        """The names of the models it prices (kept as metric labels)."""
        ...

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD that ``usage`` cost on ``model``; None when the model has no price."""
        ...


class Catalog:
    """Prices from genai-prices' bundled data, for the models of the Messages API."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        from genai_prices import data_snapshot  # its data builds in a fraction of a second: once, at start-up
        from genai_prices.types import calc_unit_price

        snapshot = data_snapshot.get_snapshot()
        provider = next((p for p in snapshot.providers if p.id == PROVIDER), None)
        if provider is None:
            raise ValueError(f"genai-prices has no provider {PROVIDER!r}: set GATEWAY_PRICES_FILE")
        self._provider: Provider = provider
        self._all = snapshot.providers
        self._unit = calc_unit_price
        self._clock = clock
        self._models: dict[str, ModelInfo | None] = {}
        # model id -> (the day its prices were resolved, the rate of each kind of token, of web searches)
        self._prices: dict[str, tuple[date, dict[str, Rate], Rate]] = {}
        self.known = frozenset(m.id for m in provider.models)

    def model(self, name: str) -> ModelInfo | None:
        """The genai-prices model ``name`` stands for, if any (remembered, up to MAX_CACHED_MODELS names)."""
        try:
            return self._models[name]
        except KeyError:
            pass
        found = self._provider.find_model(name, all_providers=self._all)
        if len(self._models) < MAX_CACHED_MODELS:
            self._models[name] = found
        return found

    def rates(self, name: str) -> tuple[dict[str, Rate], Rate] | None:
        """The rates in force today for the model ``name``, of each kind of token and of web searches; None
        when genai-prices does not know it. Resolved once a day per model: prices have start dates."""
        info = self.model(name)
        if info is None:
            return None
        now = self._clock()
        today = now.date()
        resolved = self._prices.get(info.id)
        if resolved is None or resolved[0] != today:
            price = info.get_prices(now)
            tokens = {
                kind: next((r for key in keys if (r := getattr(price, key)) is not None), None)
                for kind, keys in PRICE_KEYS.items()
            }
            resolved = self._prices[info.id] = (today, tokens, getattr(price, WEB_SEARCHES))
        return resolved[1], resolved[2]

    def cost(self, model: str, usage: Usage) -> float | None:
        rates = self.rates(model)
        if rates is None:
            return None
        per_token, per_search = rates
        tokens = usage.tokens()
        # A tier's threshold counts every input token: uncached, cache reads and cache writes.
        all_input = tokens["input"] + tokens["cache_read"] + tokens["cache_write_5m"] + tokens["cache_write_1h"]
        total = Decimal(0)
        for kind, count in tokens.items():
            if count:
                total += self._unit(per_token[kind], count, all_input, 1_000_000)
        searches = usage.web_searches
        if searches:
            total += self._unit(per_search, searches, all_input, 1000)
        return float(total)


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
    """Prices by model name, from an operator's file."""

    models: dict[str, Price]

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self.models)

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


def call_cost(prices: Prices, usage: Usage, served: str, asked: str, own: Prices | None = None) -> float | None:
    """What a call cost: by the model that served it, on its backend's ``own`` prices where it has them, then on
    ``prices``; a served model with no price is priced as the model the call asked for (a platform's own id,
    such as Bedrock's, stands for that model). None when neither has a price, or when the upstream's usage
    did not check (``Usage.invalid``: what it reported cannot be priced)."""
    if usage.invalid is not None:
        return None
    models = (served,) if served == asked else (served, asked)
    for source in (own, prices) if own is not None else (prices,):
        for model in models:
            cost = source.cost(model, usage)
            if cost is not None:
                return cost
    return None


def load(path: str = "") -> Prices:
    """The prices in the TOML file ``path``, or genai-prices' catalog; ValueError naming what is wrong."""
    return read_table(path) if path else Catalog()


def read_table(path: str, setting: str = "GATEWAY_PRICES_FILE") -> PriceTable:
    """The price table in ``path`` (which ``setting`` names); ValueError naming what is wrong."""
    try:
        document: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {setting}={path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path}: no [models.NAME] tables")
    kinds = [f.name for f in fields(Price)]
    table = {}
    for name, row in models.items():
        if not isinstance(row, dict) or set(row) != set(kinds):
            raise ValueError(f"{path}: models.{name} must set exactly {', '.join(kinds)}")
        values = {}
        for kind in kinds:
            value = row[kind]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{path}: models.{name}.{kind} must be a number >= 0, not {value!r}")
            values[kind] = Decimal(str(value))
        table[name] = Price(**values)
    return PriceTable(table)
