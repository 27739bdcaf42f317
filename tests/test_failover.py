"""Failover before the first content delta, never after: several simulators as the backends of one gateway,
each case on every entry (``tests.pools.VIAS``): StreamMessage and CreateMessage over gRPC and over Connect,
and /v1/messages streamed and whole, on the HTTP port."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from server.upstream import pool as pool_module
from simulator import HttpError, SpendLimit
from tests.harness import run
from tests.pools import ANTHROPIC_KEYS, MODEL_IDS, UNARY, VIAS, Pools, key_id, pools

NOWHERE = "[[sim@name=nobody:http_error 529]]"  # a directive that matches no backend: the same prompt, no fault


def failover_reasons(report: dict[str, object]) -> list[str]:
    failovers = report["failovers"]
    assert isinstance(failovers, list)
    return [f["reason"] for f in failovers]


async def first_key(p: Pools, via: str) -> str:
    """Serve one call and return the key (of the anthropic backend) it went to: the caller's key from now on."""
    served = await p.call(via, "warm up")
    assert served.ok, served
    assert served.report["backend"] == "anthropic"
    return next(k for k in ANTHROPIC_KEYS if key_id(k) == served.report["key_id"])


@pytest.mark.parametrize("via", VIAS)
def test_529_on_the_primary_is_served_by_bedrock_with_the_same_text(tmp_path: Path, via: str) -> None:
    """The primary answers 529: the caller gets Bedrock's reply, its text identical to an unfailed reply,
    and one trailer naming bedrock, its key and the model that served, with the failover and why."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock"), keys=2) as p:
            plain = await p.call(via, f"Tell me a story {NOWHERE}")
            assert plain.ok
            assert plain.report["backend"] == "anthropic"
            failed = await p.call(via, "Tell me a story [[sim@anthropic:http_error 529]]")
            assert failed.ok, failed
            assert failed.text == plain.text
            assert failed.text
            assert failed.report["backend"] == "bedrock"
            assert failed.report["response_model"] == MODEL_IDS["bedrock"]
            assert failover_reasons(failed.report) == ["overloaded"]
            assert failed.report["failovers"][0]["backend"] == "anthropic"
            assert failed.report["partial"] is False
            assert p.requests("anthropic") == 2  # an overload is the platform's: the other key is not burnt on it
            assert p.sims["bedrock"].requests[-1].model == MODEL_IDS["bedrock"]
            assert p.sims["bedrock"].requests[-1].anthropic_version == "bedrock-2023-05-31"

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_429_with_retry_after_cools_the_key_and_the_next_key_serves_until_the_time_passes(
    tmp_path: Path, via: str
) -> None:
    """A 429 with retry-after on the caller's key: the other key serves at once; that key is not tried
    again before its retry-after has passed, even when the other key is refused too."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic",), keys=2) as p:
            sim = p.sims["anthropic"]
            mine = await first_key(p, via)
            other = next(k for k in ANTHROPIC_KEYS[:2] if k != mine)
            sim.enqueue(HttpError(429, "rate_limit_error", retry_after=1.0), key=mine)
            moved = await p.call(via, "again")
            assert moved.ok, moved
            assert moved.report["key_id"] == key_id(other)
            assert moved.report["failovers"] == [
                {"backend": "anthropic", "key_id": key_id(mine), "reason": "rate_limited", "error": "rate_limit_error"}
            ]
            limited_at = next(r.received_at for r in sim.requests if r.key == mine and r.status == 429)
            # Now the other key is refused for a minute: the only way left is the cooled key, once it may be used.
            sim.enqueue(HttpError(429, "rate_limit_error", retry_after=60.0), key=other)
            back = await p.call(via, "and again")
            assert back.ok, back
            assert back.report["key_id"] == key_id(mine)
            retried_at = [r.received_at for r in sim.requests if r.key == mine][-1]
            assert retried_at - limited_at >= 1.0

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_spend_limit_marks_the_key_dead_with_a_warning_and_it_is_never_tried_again(
    tmp_path: Path, via: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 that says the spend limit is reached: the next key serves, the key is dead (a WARNING naming
    the backend and key id, never the key), and later calls do not try it even when the other key fails."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic",), keys=2) as p:
            sim = p.sims["anthropic"]
            mine = await first_key(p, via)
            other = next(k for k in ANTHROPIC_KEYS[:2] if k != mine)
            sim.enqueue(SpendLimit(), key=mine)
            with caplog.at_level(logging.WARNING, logger="server.upstream.pool"):
                moved = await p.call(via, "spend")
            assert moved.ok, moved
            assert moved.report["key_id"] == key_id(other)
            assert failover_reasons(moved.report) == ["spend_limit"]
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any("dead" in w and key_id(mine) in w and "spend_limit" in w for w in warnings), warnings
            assert not any(mine in w or other in w for w in warnings)
            tried = sim.count(key=mine)
            sim.enqueue(HttpError(429, "rate_limit_error", retry_after=0.2), key=other)
            later = await p.call(via, "later")
            assert later.ok, later
            assert later.report["key_id"] == key_id(other)
            assert sim.count(key=mine) == tried

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_an_overloaded_error_event_before_the_first_delta_fails_over_unseen(tmp_path: Path, via: str) -> None:
    """An `overloaded_error` event inside the primary's 200 stream, after message_start and before any
    content: the caller sees one whole reply from bedrock, nothing of the failed attempt."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock")) as p:
            plain = await p.call(via, f"Hold it {NOWHERE}")
            failed = await p.call(via, "Hold it [[sim@anthropic:error_event 2]]")
            assert failed.ok, failed
            assert failed.text == plain.text
            assert failed.report["backend"] == "bedrock"
            assert failover_reasons(failed.report) == ["overloaded"]
            assert p.sims["anthropic"].requests[-1].events_sent == 3  # message_start, block start, the error

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_an_overloaded_error_after_the_first_delta_is_the_callers_unavailable_with_partial_usage(
    tmp_path: Path, via: str
) -> None:
    """After the first content delta there is no failover: UNAVAILABLE, the events delivered, the partial
    usage in the trailer, and no second upstream call."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock")) as p:
            failed = await p.call(via, "Late [[sim@anthropic:error_event 6]]")
            assert failed.code == "UNAVAILABLE", failed
            assert failed.reason == "OVERLOADED_ERROR"
            assert failed.answered_as("UNAVAILABLE", "OVERLOADED_ERROR"), failed
            if via not in UNARY:  # a reply delivered whole delivers nothing before its end
                assert failed.events_delivered > 0
                assert failed.text
            assert failed.report["partial"] is True
            assert failed.report["usage"]["input_tokens"] > 0
            assert failed.report["backend"] == "anthropic"
            assert failed.report["failovers"] == []
            assert p.requests("anthropic") == 1
            assert p.requests("bedrock") == 0

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_deadline_shorter_than_the_next_backends_time_to_first_token_is_deadline_exceeded_at_once(
    tmp_path: Path, via: str
) -> None:
    """Bedrock takes a second to its first token (observed); a call with half a second left whose primary
    fails is not sent to bedrock: the gateway's own DEADLINE_EXCEEDED comes before the caller's deadline."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock")) as p:
            for _ in range(pool_module.TTFT_MIN_SAMPLES):
                slow = await p.call(via, "slow [[sim@anthropic:http_error 529]] [[sim@bedrock:ttft 1.0]]")
                assert slow.served_by("bedrock"), slow
            sent = p.requests("bedrock")
            started = time.monotonic()
            late = await p.call(via, "hurry [[sim@anthropic:http_error 529]]", timeout=0.5)
            elapsed = time.monotonic() - started
            # the gateway's status, not the client's own deadline
            assert late.answered_as("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"), late
            assert "not attempted" in late.message
            assert "bedrock" in late.message
            assert p.requests("bedrock") == sent
            assert elapsed < 0.5

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_the_callers_own_error_is_not_failed_over(tmp_path: Path, via: str) -> None:
    """A 400 invalid_request_error from the primary: the caller's INVALID_ARGUMENT, bedrock never asked."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock")) as p:
            refused = await p.call(via, "bad [[sim@anthropic:http_error 400]]")
            assert refused.answered_as("INVALID_ARGUMENT", "INVALID_REQUEST_ERROR"), refused
            assert refused.report["failovers"] == []
            assert refused.report["backend"] == "anthropic"
            assert p.requests("bedrock") == 0

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_refused_key_is_dead_until_its_credential_file_changes(
    tmp_path: Path, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 on the caller's key: the other key serves, and the refused one is not tried again; once its
    file holds a new key, the new key is used (and its id is the new key's)."""
    monkeypatch.setattr(pool_module, "RELOAD_SECONDS", 0.0)

    async def go() -> None:
        async with pools(tmp_path, ("anthropic",), keys=2) as p:
            sim = p.sims["anthropic"]
            mine = await first_key(p, via)
            other = next(k for k in ANTHROPIC_KEYS[:2] if k != mine)
            sim.enqueue(HttpError(401, "authentication_error", "invalid x-api-key"), key=mine)
            moved = await p.call(via, "refused")
            assert moved.ok, moved
            assert moved.report["key_id"] == key_id(other)
            assert failover_reasons(moved.report) == ["unauthorized"]
            fresh = ANTHROPIC_KEYS[2]
            (p.directory / f"anthropic-key-{ANTHROPIC_KEYS.index(mine)}").write_text(fresh + "\n")
            sim.enqueue(HttpError(429, "rate_limit_error", retry_after=60.0), key=other)
            renewed = await p.call(via, "renewed")
            assert renewed.ok, renewed
            assert renewed.report["key_id"] == key_id(fresh)
            assert sim.requests[-1].key == fresh
            assert sim.count(key=mine) == 2  # the warm-up and the 401: never again

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_5xx_and_a_refused_connection_move_to_the_next_backend(tmp_path: Path, via: str) -> None:
    """HTTP 500 from the primary, then the primary gone (connection refused): vertex serves both."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "vertex")) as p:
            failed = await p.call(via, "five hundred [[sim@anthropic:http_error 500]]")
            assert failed.served_by("vertex"), failed
            assert failover_reasons(failed.report) == ["unavailable"]
            assert p.sims["vertex"].requests[-1].model == MODEL_IDS["vertex"]
            await p.sims["anthropic"].stop()
            await asyncio.sleep(1.1)  # the primary's circuit (1 s) closes: it is tried first again
            gone = await p.call(via, "gone")
            assert gone.served_by("vertex"), gone
            assert gone.report["failovers"][0]["error"] == "UPSTREAM_UNREACHABLE"

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_backend_silent_past_its_first_event_timeout_is_left_for_the_next(tmp_path: Path, via: str) -> None:
    """The primary sends its headers and then nothing: after its first_event_timeout, bedrock serves."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock"), options={"anthropic": {"first_event_timeout": 0.3}}) as p:
            failed = await p.call(via, "stall [[sim@anthropic:stall 0]]")
            assert failed.served_by("bedrock"), failed
            assert failover_reasons(failed.report) == ["timeout"]
            assert failed.report["failovers"][0]["error"] == "FIRST_EVENT_TIMEOUT"

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_bedrock_exception_frame_before_the_first_delta_fails_over(tmp_path: Path, via: str) -> None:
    """Bedrock's in-stream throttlingException (its form of an overload inside the stream) after
    message_start: vertex serves the call."""

    async def go() -> None:
        async with pools(tmp_path, ("bedrock", "vertex")) as p:
            failed = await p.call(via, "throttle [[sim@bedrock:error_event 1]]")
            assert failed.served_by("vertex"), failed
            assert failed.report["failovers"][0]["backend"] == "bedrock"
            assert failed.report["failovers"][0]["error"] == "rate_limit_error"

    run(go)


# The rows of the classification table (server/upstream/verdicts.py) not met above, each as a fault of the
# first backend of a layout: (layout, directive, the verdict it fails over with, or the caller's code and
# reason when it does not fail over).
ROWS = {
    "403 permission_error": (("anthropic", "bedrock"), "[[sim@anthropic:http_error 403]]", "unauthorized"),
    "429 without retry-after": (("anthropic", "bedrock"), "[[sim@anthropic:http_error 429]]", "rate_limited"),
    "402 billing_error": (("anthropic", "bedrock"), "[[sim@anthropic:http_error 402]]", "spend_limit"),
    "bedrock 503 ServiceUnavailable": (("bedrock", "vertex"), "[[sim@bedrock:http_error 529]]", "overloaded"),
    "vertex 429 RESOURCE_EXHAUSTED": (("vertex", "anthropic"), "[[sim@vertex:http_error 429]]", "rate_limited"),
    "vertex 500": (("vertex", "bedrock"), "[[sim@vertex:http_error 500]]", "unavailable"),
    "404 not_found_error": (
        ("anthropic", "bedrock"), "[[sim@anthropic:http_error 404]]", ("NOT_FOUND", "NOT_FOUND_ERROR")
    ),
    "413 request_too_large": (
        ("anthropic", "bedrock"), "[[sim@anthropic:http_error 413]]", ("INVALID_ARGUMENT", "REQUEST_TOO_LARGE")
    ),
}  # fmt: skip


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("row", ROWS)
def test_each_row_of_the_classification_table_on_each_entry(tmp_path: Path, via: str, row: str) -> None:
    """A fault of the first backend that fails over is served by the second, the failover named with its
    verdict; one that is the caller's own is the caller's status, the second backend never asked."""
    layout, directive, expected = ROWS[row]

    async def go() -> None:
        async with pools(tmp_path, layout) as p:
            first, second = layout
            outcome = await p.call(via, f"row {directive}")
            if isinstance(expected, str):
                assert outcome.served_by(second), outcome
                assert outcome.report["failovers"][0]["backend"] == first
                assert failover_reasons(outcome.report) == [expected]
                assert p.requests(first) == 1
            else:
                assert outcome.answered_as(*expected), outcome
                assert outcome.report["failovers"] == []
                assert p.requests(second) == 0

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_every_attempt_counts_against_max_attempts(tmp_path: Path, via: str) -> None:
    """Three backends, all overloaded, two attempts allowed: two are tried, the caller gets the last failure."""

    async def go() -> None:
        async with pools(tmp_path, max_attempts=2) as p:
            failed = await p.call(via, "all down [[sim:http_error 529]]")
            assert failed.answered_as("UNAVAILABLE", "OVERLOADED_ERROR"), failed
            assert len(failed.report["failovers"]) == 1  # the first moved on; the second ended the call
            assert p.requests("anthropic") + p.requests("bedrock") + p.requests("vertex") == 2

    run(go)


def test_a_burst_of_200_calls_against_an_overloaded_primary_has_no_caller_failure(tmp_path: Path) -> None:
    """200 concurrent calls, the primary answering 529 to every one: every caller gets its reply, from bedrock."""

    async def go() -> None:
        async with pools(tmp_path, ("anthropic", "bedrock")) as p:
            outcomes = await asyncio.gather(
                *(p.call("stream", f"burst {i} [[sim@anthropic:http_error 529]]", timeout=60) for i in range(200))
            )
            failures = [o for o in outcomes if not o.ok]
            assert failures == []
            assert {o.report["backend"] for o in outcomes} == {"bedrock"}
            print(f"burst: 200 calls, 0 failures; primary attempts {p.requests('anthropic')}")

    run(go)
