"""Soak: thousands of streams, some cancelled at random points, some failing upstream; nothing leaks."""

from __future__ import annotations

import asyncio
import gc
import os
import random
from collections import Counter

import grpc

from tests.harness import Harness, body, gateway, run, stream_request, until

STREAMS = 2000
CONCURRENCY = 50
FAULTS = ["[[sim:cut 4]]", "[[sim:error_event 3]]", "[[sim:http_error 400]]", "[[sim:malformed 2]]", "[[sim:eof 5]]"]


def call_tasks() -> int:
    """Tasks on the loop, less grpc's server polling tasks and the simulator's per-connection tasks:
    their number floats with grpc's polling and the SDK's connection pool."""
    return sum(
        not getattr(t.get_coro(), "__qualname__", "").startswith(("AioServer.", "Simulator.", "Connection."))
        for t in asyncio.all_tasks()
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def one_stream(h: Harness, rng: random.Random, outcomes: Counter[str]) -> None:
    roll = rng.random()
    prompt = "soak [[sim:tokens 12]]"
    if roll < 0.1:
        prompt += " " + rng.choice(FAULTS)
    call = h.stub.StreamMessage(stream_request(body(prompt)), timeout=30)
    cancel_after = rng.randint(1, 14) if 0.1 <= roll < 0.3 else None
    seen = 0
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            seen += len(response.events)
            if cancel_after is not None and seen >= cancel_after:
                call.cancel()
                outcomes["cancelled"] += 1
                return
        outcomes[(await call.code()).name] += 1
    except grpc.aio.AioRpcError as error:
        outcomes[error.code().name] += 1
    except asyncio.CancelledError:
        outcomes["cancelled"] += 1


async def wave(h: Harness, count: int, rng: random.Random, outcomes: Counter[str]) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def bounded() -> None:
        async with limit:
            await one_stream(h, rng, outcomes)

    await asyncio.gather(*(bounded() for _ in range(count)))


def test_soak_leaves_no_task_connection_descriptor_or_memory_behind() -> None:
    """After thousands of mixed streams the gateway holds no calls, tasks, extra fds, or memory."""

    async def go() -> None:
        async with gateway(max_attempts=1) as h:
            rng = random.Random(1234)
            outcomes: Counter[str] = Counter()
            await wave(h, 300, rng, outcomes)  # warm-up: pools, caches and allocator arenas fill
            gc.collect()
            tasks, fds, rss = call_tasks(), open_fds(), rss_bytes()
            await wave(h, STREAMS, rng, outcomes)
            await until(lambda: h.gateway.admission.active == 0)  # cancels reach handlers a moment later
            gc.collect()
            await until(lambda: call_tasks() <= tasks)
            # Idle keep-alive connections in the SDK's pool may grow with concurrency (2 fds each here: the
            # simulator is in-process); a leak per call would add hundreds.
            assert open_fds() <= fds + 2 * CONCURRENCY
            assert h.sim.open_connections <= CONCURRENCY
            assert rss_bytes() - rss < 32 * 2**20
            assert outcomes["OK"] > STREAMS * 0.6
            assert outcomes["cancelled"] > STREAMS * 0.1
            assert sum(v for k, v in outcomes.items() if k not in ("OK", "cancelled")) > STREAMS * 0.03

    run(go)
