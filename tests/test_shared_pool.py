"""The pool's state shared by replicas through a real redis-server: cool-downs, dead keys, circuits and
headroom learnt by one replica are what another chooses by, including one that starts later."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from server.app import Gateway, build_server
from server.config import Settings
from server.upstream.pool import family_of
from server.upstream.redis_state import RedisPoolState
from simulator import HttpError, Limits, SpendLimit
from tests.harness import run
from tests.pools import ANTHROPIC_KEYS, MODEL, VIAS, Pools, key_id, pools
from tests.store import RedisServer, redis_server


@asynccontextmanager
async def replica(first: Pools, store: RedisServer) -> AsyncIterator[Pools]:
    """A second gateway on the same backends file and the same Redis as ``first``."""
    config = Settings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        backends_file=str(first.directory / "backends.yaml"),
        redis_url=store.url,
    )
    gateway: Gateway = await build_server(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield Pools(
            first.sims, gateway, channel, first.directory, f"http://127.0.0.1:{gateway.http_port}", first.session
        )
    finally:
        await channel.close()
        await gateway.close()


def member_id(key: str) -> str:
    return f"anthropic:{key_id(key)}"


@pytest.mark.parametrize("via", VIAS)
def test_a_replica_that_starts_later_learns_a_cool_down_and_does_not_try_that_key(tmp_path: Path, via: str) -> None:
    """Replica A meets a 429 (retry-after a minute) on a key; replica B, started after, never tries that key,
    even when its other key is refused for a moment: it waits for that one."""

    async def go() -> None:
        with redis_server() as store:
            async with pools(tmp_path, ("anthropic",), keys=2, redis_url=store.url) as a:
                sim = a.sims["anthropic"]
                first = await a.call(via, "on a")
                mine = next(k for k in ANTHROPIC_KEYS if key_id(k) == first.report["key_id"])
                other = next(k for k in ANTHROPIC_KEYS[:2] if k != mine)
                sim.enqueue(HttpError(429, "rate_limit_error", retry_after=60.0), key=mine)
                moved = await a.call(via, "cooled on a")
                assert moved.ok, moved
                assert moved.report["key_id"] == key_id(other)
                await until_written(a)
                async with replica(a, store) as b:
                    assert b.gateway.pool.state.cooled_until(member_id(mine), family_of(MODEL)) > time.time() + 50
                    tried = sim.count(key=mine)
                    sim.enqueue(HttpError(429, "rate_limit_error", retry_after=0.3), key=other)
                    on_b = await b.call(via, "on b")
                    assert on_b.ok, on_b
                    assert on_b.report["key_id"] == key_id(other)
                    assert sim.count(key=mine) == tried

    run(go)


@pytest.mark.parametrize("via", VIAS)
def test_a_dead_key_and_an_open_circuit_found_by_one_running_replica_steer_the_other(tmp_path: Path, via: str) -> None:
    """Both replicas running: B finds a key dead (spend limit) and the primary overloaded; A's next calls
    neither try that key nor the primary, which A learns before choosing."""

    async def go() -> None:
        with redis_server() as store:
            async with (
                pools(tmp_path, ("anthropic", "bedrock"), keys=2, redis_url=store.url) as a,
                replica(a, store) as b,
            ):
                sim = a.sims["anthropic"]
                first = await b.call(via, "on b")
                mine = next(k for k in ANTHROPIC_KEYS if key_id(k) == first.report["key_id"])
                sim.enqueue(SpendLimit(), key=mine)
                spent = await b.call(via, "spend on b")
                assert spent.ok, spent
                assert spent.report["failovers"][0]["reason"] == "spend_limit"
                over = await b.call(via, "overloaded [[sim@anthropic:http_error 529]]")
                assert over.served_by("bedrock"), over
                await until_written(b)
                before = len(sim.requests)
                on_a = await a.call(via, "on a")
                assert on_a.served_by("bedrock"), on_a  # the primary's platform is backed off for everyone
                assert len(sim.requests) == before
                assert a.gateway.pool.state.dead_until(member_id(mine)) > time.time()

    run(go)


def test_headroom_reported_to_one_replica_is_what_the_other_chooses_by(tmp_path: Path) -> None:
    async def go() -> None:
        with redis_server() as store:
            slow = {"anthropic": {"limits": Limits(requests=60)}}  # a request a second refills
            async with (
                pools(tmp_path, ("anthropic",), keys=1, redis_url=store.url, sim_options=slow) as a,
                replica(a, store) as b,
            ):
                served = await a.call("stream", f"[[sim@key={ANTHROPIC_KEYS[0]}:ratelimit requests 7]]")
                assert served.ok, served
                await until_written(a)
                await b.gateway.pool.state.refresh(wait=10)
                room = b.gateway.pool.state.headroom(member_id(ANTHROPIC_KEYS[0]), family_of(MODEL))
                assert room is not None
                assert 7 <= room.buckets["requests"].now(time.time()) < 8

    run(go)


def test_without_redis_the_calls_go_on_with_what_the_replica_knows(tmp_path: Path) -> None:
    """Redis stops: calls are still served, and the replica keeps learning on its own."""

    async def go() -> None:
        with redis_server() as store:
            async with pools(tmp_path, ("anthropic", "vertex"), redis_url=store.url, redis_timeout=0.2) as a:
                assert (await a.call("stream", "up")).ok
                store.stop()
                over = await a.call("stream", "down [[sim@anthropic:http_error 529]]")
                assert over.served_by("vertex"), over
                assert (await a.call("stream", "still down")).served_by("vertex")  # learnt locally: backed off

    run(go)


async def until_written(p: Pools) -> None:
    """Wait until what ``p`` learnt has been sent to Redis (writes go without waiting for their reply)."""
    state = p.gateway.pool.state
    assert isinstance(state, RedisPoolState)
    await state.written()
