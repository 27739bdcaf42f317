"""Keys chosen by the headroom their rate-limit headers report, before a 429: the arithmetic, then keys
of one simulator whose buckets run low."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.upstream.backends import BackendSpec
from server.upstream.headroom import Cost, Headroom
from server.upstream.pool import TTFT_SAMPLES, Backend
from server.upstream.state import PoolState
from simulator import Limits
from tests.harness import run
from tests.pools import ANTHROPIC_KEYS, VIAS, key_id, pools

NOW = 1_000_000.0


def headers(kind: str, limit: int, remaining: int, reset_in: float) -> list[tuple[str, str]]:
    reset = datetime.fromtimestamp(NOW + reset_in, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    prefix = f"anthropic-ratelimit-{kind}-"
    return [(prefix + "limit", str(limit)), (prefix + "remaining", str(remaining)), (prefix + "reset", reset)]


def test_headroom_refills_at_the_limit_per_window_up_to_the_limit() -> None:
    room = Headroom()
    assert room.report(headers("requests", 60, 0, 60.0), NOW)
    one = Cost(input_tokens=100, output_tokens=100)
    assert not room.fits(one, NOW)
    assert room.buckets["requests"].now(NOW + 0.5) == pytest.approx(0.5)
    assert room.fits(one, NOW + 1.0)
    assert room.buckets["requests"].now(NOW + 600) == 60  # capped at the limit
    room.reserve(one, NOW + 1.0)
    assert not room.fits(one, NOW + 1.0)  # the reservation holds until the next report


def test_the_window_is_read_from_a_distant_reset_and_kept_from_a_near_one() -> None:
    room = Headroom()
    room.report(headers("output-tokens", 8000, 0, 120.0), NOW)  # empty, full in two minutes: a 2 min window
    assert room.buckets["output-tokens"].window == pytest.approx(120.0, abs=1.0)
    room.report(headers("output-tokens", 8000, 7000, 1.0), NOW)  # a reset a second away says little
    assert room.buckets["output-tokens"].window == pytest.approx(120.0, abs=1.0)


def test_a_call_fits_when_every_reported_bucket_has_room_and_the_score_is_the_tightest() -> None:
    room = Headroom()
    room.report(headers("input-tokens", 10_000, 5_000, 30.0) + headers("output-tokens", 1000, 900, 6.0), NOW)
    assert room.fits(Cost(4_000, 800), NOW)
    assert not room.fits(Cost(4_000, 950), NOW)  # output tokens (max_tokens) do not fit
    assert room.score(Cost(4_000, 800), NOW) == pytest.approx(min((5000 - 4000) / 10_000, (900 - 800) / 1000))
    assert Headroom().fits(Cost(10**9, 10**9), NOW)  # nothing reported: nothing known against it


def test_malformed_rate_limit_headers_are_ignored() -> None:
    room = Headroom()
    bad = [("anthropic-ratelimit-requests-limit", "lots"), ("anthropic-ratelimit-requests-remaining", "-1")]
    assert not room.report(bad, NOW)
    assert not room.report(
        [("anthropic-ratelimit-tokens-limit", "0"), ("anthropic-ratelimit-tokens-remaining", "0")], NOW
    )


def test_a_served_response_is_read_when_the_headroom_is_next_needed_the_latest_one_winning() -> None:
    """A key's first served response is read at once; later ones are kept as they came (the response's headers)
    and read when the buckets are next needed, a report not read yet superseded by the next."""
    state = PoolState()
    state.served("a:1", "sonnet", dict(headers("requests", 60, 10, 60.0)), NOW)
    room = state.headroom("a:1", "sonnet")
    assert room is not None
    assert room.buckets["requests"].remaining == 10
    state.served("a:1", "sonnet", dict(headers("requests", 60, 20, 60.0)), NOW + 1)
    state.served(
        "a:1",
        "sonnet",
        {"Anthropic-RateLimit-Requests-Limit": "60", "anthropic-ratelimit-requests-remaining": "30"},
        NOW + 2,
    )
    assert state.headroom("a:1", "sonnet") is room
    assert (room.buckets["requests"].remaining, room.buckets["requests"].at) == (30, NOW + 2)
    room.reserve(Cost(1, 1), NOW + 2)
    assert room.buckets["requests"].remaining == 29  # read, then reserved: no report is pending
    state.served("b:1", "sonnet", {"content-type": "text/event-stream"}, NOW)  # no rate limits: nothing known
    assert state.headroom("b:1", "sonnet") is None


def test_the_slowest_time_to_first_token_makes_way_with_its_sample() -> None:
    """A backend is passed over for a deadline shorter than its p50; once the slow samples have made way for
    fast ones (the recent TTFT_SAMPLES), it is not."""
    backend = Backend(BackendSpec(name="a", kind="anthropic", priority=0))
    for ttft in [9.0] * TTFT_SAMPLES:
        backend.observe(ttft)
    assert backend.slower_than(5.0) == 9.0
    for n in range(TTFT_SAMPLES):
        backend.observe(0.1)
        assert backend.slower_than(5.0) == (9.0 if n < TTFT_SAMPLES // 2 - 1 else None)  # while most are slow
    backend.observe(7.0)  # the slowest now, though one sample of many
    assert backend.slower_than(6.0) is None
    assert backend.slower_than(0.05) == 0.1
    assert max(backend.ttfts) == 7.0


@pytest.mark.parametrize("via", VIAS)
def test_a_key_that_reports_no_headroom_is_passed_over_with_no_429_seen(tmp_path: Path, via: str) -> None:
    """The caller's key reports 0 requests left (a bucket of 10 a minute, enforced): the next call goes to
    the other key at once, and no request of the pair is ever refused."""

    async def go() -> None:
        limits = Limits(requests=10, enforce=True)
        async with pools(tmp_path, ("anthropic",), keys=2, sim_options={"anthropic": {"limits": limits}}) as p:
            sim = p.sims["anthropic"]
            first = await p.call(via, "first")
            mine = next(k for k in ANTHROPIC_KEYS if key_id(k) == first.report["key_id"])
            other = next(k for k in ANTHROPIC_KEYS[:2] if k != mine)
            drained = await p.call(via, f"drain [[sim@key={mine}:ratelimit requests 0]]")
            assert drained.ok, drained
            assert drained.report["key_id"] == key_id(mine)  # the caller's key while it had room
            moved = await p.call(via, "next")
            assert moved.ok, moved
            assert moved.report["key_id"] == key_id(other)
            assert moved.report["failovers"] == []  # chosen, not failed over to
            assert [r.status for r in sim.requests] == [200, 200, 200]

    run(go)


def test_with_one_key_of_three_running_dry_fewer_than_1_percent_of_calls_meet_a_429(tmp_path: Path) -> None:
    """Three keys of 100 requests a minute, enforced; one of them is drained to 0 by every call it serves.
    20 callers, 200 calls, 10 at a time: once each key's headers are in, the gateway keeps off the dry key
    until it has refilled, so (almost) no request is refused upstream."""

    async def go() -> None:
        tokens = [f"tok-caller-{i}-SECRET" for i in range(20)]
        callers = tmp_path / "callers"
        callers.write_text(
            "".join(f"{hashlib.sha256(t.encode()).hexdigest()} caller-{i}\n" for i, t in enumerate(tokens))
        )
        limits = Limits(requests=100, enforce=True)
        dry = ANTHROPIC_KEYS[0]
        async with pools(
            tmp_path,
            ("anthropic",),
            keys=3,
            sim_options={"anthropic": {"limits": limits}},
            caller_identity="token",
            callers_file=str(callers),
        ) as p:
            sim = p.sims["anthropic"]
            prompt = f"burst [[sim@key={dry}:ratelimit requests 0]]"
            outcomes, ends = [], []
            for start in range(0, 200, 10):
                outcomes += await asyncio.gather(
                    *(p.call("stream", prompt, token=tokens[i % 20], timeout=30) for i in range(start, start + 10))
                )
                ends.append(asyncio.get_running_loop().time())  # the simulator's clock: it runs on this loop
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
            refused = sum(r.status == 429 for r in sim.requests)
            served_by_dry = sum(r.key == dry and r.status == 200 for r in sim.requests)
            # Once the gateway has read the dry key's headers (by the end of the batch that first reached it), no
            # call should meet a 429; the calls of that batch, sent at once, could not know.
            first = min(r.received_at for r in sim.requests if r.key == dry)
            heard = min(end for end in ends if end > first)
            after = sum(r.status == 429 and r.received_at > heard for r in sim.requests)
            print(
                f"headroom: 200 calls, {refused} upstream 429s ({refused / 200:.1%}), {after} once the dry key's "
                f"headers were read ({after / 200:.1%}); dry key served {served_by_dry}"
            )
            assert after < 2  # < 1% of 200
            assert refused <= 10  # at most the first concurrent batch, sent before any answer
            assert served_by_dry >= 1  # it was used, and drained, at least once

    run(go)
