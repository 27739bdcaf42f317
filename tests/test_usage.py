"""Usage merging, pricing and bounded labels: pure functions, table tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from claude_gateway.usage import from_metadata
from claude_gateway.wire import USAGE_KEY

from server.reporting.metrics import OTHER, LabelCap
from server.reporting.prices import load
from server.reporting.record import CallRecord
from server.reporting.telemetry import Telemetry
from server.reporting.usage import Usage

START = {"input_tokens": 2100, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 4000, "output_tokens": 3}


def start(usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": usage}}


def delta(usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}


MERGES: list[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]] = [
    ("input side from message_start", [start(START)], START),
    (
        "message_delta counts are cumulative totals, not increments",
        [start(START), delta({"output_tokens": 40}), delta({"output_tokens": 95})],
        {**START, "output_tokens": 95},
    ),
    (
        "null in message_delta keeps the message_start value",
        [start(START), delta({"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 7})],
        {**START, "output_tokens": 7},
    ),
    (
        "absent keys keep their value; a repeated count replaces it",
        [start(START), delta({"input_tokens": 2200, "output_tokens": 9})],
        {**START, "input_tokens": 2200, "output_tokens": 9},
    ),
    (
        "nested objects merge key by key",
        [
            start({**START, "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500}}),
            delta(
                {"cache_creation": {"ephemeral_1h_input_tokens": None}, "server_tool_use": {"web_search_requests": 1}}
            ),
            delta({"server_tool_use": {"web_fetch_requests": 2}, "output_tokens_details": {"thinking_tokens": 12}}),
        ],
        {
            **START,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
            "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 2},
            "output_tokens_details": {"thinking_tokens": 12},
        },
    ),
    ("events without usage change nothing", [("content_block_delta", {"usage": {"output_tokens": 5}})], {}),
]


@pytest.mark.parametrize(("case", "events", "merged"), MERGES, ids=[m[0] for m in MERGES])
def test_usage_merges_as_the_api_defines_it(case: str, events: list[tuple[str, dict[str, Any]]], merged: Any) -> None:
    """Each event sequence merges to exactly the usage object the API means."""
    usage = Usage()
    for name, obj in events:
        usage.observe(name, obj)
    assert usage.values == merged


COUNTS: list[tuple[dict[str, Any], dict[str, int], int | None]] = [
    (
        {**START, "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500}},
        {"input": 2100, "output": 3, "cache_read": 4000, "cache_write_5m": 1000, "cache_write_1h": 500},
        None,
    ),
    (  # no breakdown: all cache writes at the default 5 minute lifetime
        START,
        {"input": 2100, "output": 3, "cache_read": 4000, "cache_write_5m": 1500, "cache_write_1h": 0},
        None,
    ),
    (
        {"input_tokens": 10, "output_tokens": 50, "output_tokens_details": {"thinking_tokens": 30}},
        {"input": 10, "output": 50, "cache_read": 0, "cache_write_5m": 0, "cache_write_1h": 0},
        30,
    ),
]


@pytest.mark.parametrize(("values", "tokens", "thinking"), COUNTS)
def test_usage_counts_each_token_type_once(
    values: dict[str, Any], tokens: dict[str, int], thinking: int | None
) -> None:
    """Priced token counts split cache writes by lifetime and report thinking tokens only when the API did."""
    usage = Usage()
    usage.merge(values)
    assert usage.tokens() == tokens
    assert usage.thinking_tokens == thinking


SONNET_46 = {**START, "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500}}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("not toml [", "not TOML"),
        ("[other]\nx = 1\n", r"no \[models\.NAME\]"),
        ("[models.m]\ninput = 1\n", "must set exactly"),
        (
            "[models.m]\ninput = -1\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\n",
            "must be a number >= 0",
        ),
    ],
)
def test_a_bad_prices_file_is_refused_with_what_is_wrong(tmp_path: Path, text: str, complaint: str) -> None:
    """A prices file that is not a complete table of numbers stops start-up with a message saying why."""
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=complaint):
        load(str(path))


def test_a_bounded_label_keeps_the_first_values_then_says_other() -> None:
    """Past its limit a label files new values under `other`, keeping those it already has and the always-kept."""
    cap = LabelCap(2, frozenset({"kept"}))
    assert [cap(v) for v in ("a", "b", "c", "a", "kept", "d")] == ["a", "b", OTHER, "a", "kept", OTHER]


def test_the_trailer_round_trips_through_the_client_parser() -> None:
    """What the server puts in the trailer is what the client library reads back."""
    record = CallRecord("StreamMessage", "claude-sonnet-4-6")
    record.usage.merge({**SONNET_46, "output_tokens": 95})
    Telemetry(load(), None).finish(record)
    parsed = from_metadata([("other", "x"), *Telemetry.trailer(record)])
    assert parsed is not None
    assert (parsed.model, parsed.cost_usd, parsed.partial) == ("claude-sonnet-4-6", 0.015675, True)
    assert parsed.usage == record.usage.values
    assert (parsed.input_tokens, parsed.output_tokens) == (2100, 95)
    assert from_metadata([("other", "x")]) is None
    with pytest.raises(ValueError, match=USAGE_KEY):
        from_metadata([(USAGE_KEY, "[]")])


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("a count past the bound", {"output_tokens": 10_000_001}, "output_tokens is 10000001, not a count"),
    ("a nested count that is a fraction", {"cache_creation": {"ephemeral_5m_input_tokens": 0.5}}, "cache_creation."),
    ("a long string", {"service_tier": "x" * 65}, "service_tier is a string of more than 64"),
    ("a key that is not a usage name", {"Input Tokens": 3}, "a key that is not a usage name"),
    ("a list", {"output_tokens": [1]}, "output_tokens is a list"),
    ("too many values", {f"count_{n}": n for n in range(40)}, "more than 32 values"),
]


@pytest.mark.parametrize(("case", "usage", "why"), INVALID, ids=[i[0] for i in INVALID])
def test_usage_that_does_not_check_is_left_out_and_marks_the_usage_invalid(
    case: str, usage: dict[str, Any], why: str
) -> None:
    """A usage object with a value out of bounds is not merged; the usage says why, and the call is not priced."""
    merged = Usage()
    merged.observe(*start(START))
    merged.observe(*delta(usage))
    assert merged.values == START
    assert merged.invalid is not None
    assert merged.invalid.startswith(why), merged.invalid
    record = CallRecord("StreamMessage", "claude-sonnet-4-6", usage=merged)
    Telemetry(load(), None).finish(record)
    assert record.cost is None
    assert record.summary()["usage_invalid"] == merged.invalid
