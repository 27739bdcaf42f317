"""Prices from genai-prices: every Claude model it knows, tiers, cache and web searches, as its own calc_price
says; GATEWAY_PRICES_FILE in its place; one model name matched once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot

from server.reporting.prices import MAX_CACHED_MODELS, Catalog, PriceTable, load
from server.reporting.usage import Usage

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CLAUDE = [m.id for p in data_snapshot.get_snapshot().providers if p.id == "anthropic" for m in p.models]


def usage(**values: Any) -> Usage:
    merged = Usage()
    merged.merge(values)
    return merged


# Below every tier, and above the 200k one (every token then costs the tier's price).
CALLS = {
    "small": usage(
        input_tokens=1200,
        cache_read_input_tokens=4000,
        cache_creation_input_tokens=500,
        cache_creation={"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
        output_tokens=350,
        server_tool_use={"web_search_requests": 2},
    ),
    "long context": usage(
        input_tokens=150_000,
        cache_read_input_tokens=60_000,
        cache_creation_input_tokens=9000,
        cache_creation={"ephemeral_5m_input_tokens": 5000, "ephemeral_1h_input_tokens": 4000},
        output_tokens=2000,
    ),
}


def reference(model: str, call: Usage) -> float:
    """What genai-prices' own calc_price says ``call`` cost on ``model`` (its usage counts every input token
    in input_tokens, and every cache write in cache_write_tokens)."""
    writes = call.cache_write_5m_tokens + call.cache_write_1h_tokens
    theirs = genai_prices.Usage(
        input_tokens=call.input_tokens + call.cache_read_tokens + writes,
        cache_read_tokens=call.cache_read_tokens,
        cache_write_tokens=writes,
        cache_write_1h_tokens=call.cache_write_1h_tokens,
        output_tokens=call.output_tokens,
        web_searches=call.web_searches,
    )
    price = genai_prices.calc_price(theirs, model, provider_id="anthropic", genai_request_timestamp=NOW)
    return float(price.total_price)


@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
def test_every_claude_model_is_priced_as_genai_prices_own_calc_price_prices_it(call: str) -> None:
    """The catalog's per-kind pricing equals calc_price for every Claude model the package knows, on a call with
    every kind of token and web searches, below and above the long-context tier."""
    catalog = Catalog(clock=lambda: NOW)
    assert len(CLAUDE) >= 20
    for model in CLAUDE:
        assert catalog.cost(model, CALLS[call]) == pytest.approx(reference(model, CALLS[call]), rel=1e-12), model


@pytest.mark.parametrize(
    ("model", "values", "cost"),
    [
        # Sonnet 4.5 above 200k input tokens: $6 / $22.50 per million for every token of the call, not $3 / $15.
        ("claude-sonnet-4-5", {"input_tokens": 250_000, "output_tokens": 1000}, (250_000 * 6 + 1000 * 22.5) / 1e6),
        ("claude-sonnet-4-5-20250929", {"input_tokens": 150_000, "output_tokens": 1000}, (150_000 * 3 + 15_000) / 1e6),
        # The threshold counts cache reads too.
        ("claude-sonnet-4-5", {"input_tokens": 1000, "cache_read_input_tokens": 200_000}, (6000 + 200_000 * 0.6) / 1e6),
        # Cache prices: a 5 minute write, a 1 hour write, a read, per million.
        ("claude-haiku-4-5-20251001", {"cache_creation_input_tokens": 1_000_000}, 1.25),
        ("claude-haiku-4-5", {"cache_creation": {"ephemeral_1h_input_tokens": 1_000_000}}, 2.0),
        ("claude-haiku-4-5", {"cache_read_input_tokens": 1_000_000}, 0.1),
        # Models the hand-written table did not know.
        ("claude-opus-4-1", {"input_tokens": 1_000_000}, 15.0),
        ("claude-sonnet-4-20250514", {"output_tokens": 1_000_000}, 15.0),
        ("claude-3-7-sonnet-20250219", {"input_tokens": 1_000_000}, 3.0),
        ("claude-3-5-haiku-20241022", {"input_tokens": 1_000_000}, 0.8),
        # Web searches, per thousand.
        ("claude-sonnet-4-6", {"server_tool_use": {"web_search_requests": 1000}}, 10.0),
        ("claude-opus-4-6", {}, 0.0),  # a priced model that reported nothing cost nothing
        ("claude-unknown-9", {"input_tokens": 10, "output_tokens": 10}, None),  # unknown, never zero
    ],
)
def test_the_catalog_prices_tiers_cache_and_older_models(
    model: str, values: dict[str, Any], cost: float | None
) -> None:
    """Published prices, by name and dated snapshot: the long-context tier, cache writes and reads, older models."""
    got = Catalog(clock=lambda: NOW).cost(model, usage(**values))
    assert got == (None if cost is None else pytest.approx(cost, rel=1e-12))


def test_a_model_name_is_matched_once_and_the_names_remembered_are_bounded() -> None:
    """Names are matched once (cached), and a flood of made-up names (callers choose them) stays bounded."""
    catalog = Catalog(clock=lambda: NOW)
    first = catalog.model("claude-sonnet-4-6")
    assert first is not None
    assert catalog.model("claude-sonnet-4-6") is first
    for i in range(MAX_CACHED_MODELS + 100):
        assert catalog.cost(f"claude-made-up-{i}", usage(input_tokens=1)) is None
    assert len(catalog._models) == MAX_CACHED_MODELS
    assert catalog.cost("claude-sonnet-4-6", usage(input_tokens=1_000_000)) == 3.0  # still priced


def test_prices_change_on_their_date() -> None:
    """Prices resolved for one day are resolved again the next: genai-prices' dated prices take effect."""
    day = [datetime(2026, 3, 12, tzinfo=UTC)]
    catalog = Catalog(clock=lambda: day[0])
    long_call = usage(input_tokens=300_000)
    assert catalog.cost("claude-sonnet-4-6", long_call) == pytest.approx(300_000 * 6 / 1e6)  # tiered then
    day[0] = datetime(2026, 3, 14, tzinfo=UTC)
    assert catalog.cost("claude-sonnet-4-6", long_call) == pytest.approx(300_000 * 3 / 1e6)  # flat since


def test_a_prices_file_replaces_the_catalog_whole(tmp_path: Path) -> None:
    """GATEWAY_PRICES_FILE's table prices its models, and a model it does not list has no price."""
    path = tmp_path / "prices.toml"
    path.write_text("[models.claude-sonnet-4-6]\ninput = 1\noutput = 2\ncache_write_5m = 0\ncache_write_1h = 0\n"
                    "cache_read = 0\n")  # fmt: skip
    table = load(str(path))
    assert isinstance(table, PriceTable)
    assert table.cost("claude-sonnet-4-6-20260101", usage(input_tokens=500_000, output_tokens=250_000)) == 1.0
    assert table.cost("claude-haiku-4-5", usage(input_tokens=1)) is None
    assert isinstance(load(), Catalog)
