"""``Session.together``: jobs against two gateways at once, each gateway's CPU metered apart in the same seconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.jobs import Job
from bench.plan import QUICK
from bench.processes import Processes
from bench.session import Session


def test_together_meters_each_gateway_apart_over_the_same_seconds(tmp_path: Path) -> None:
    """Two gateways, one asked for ten times the calls of the other, both released at once: each run has its own
    client's result and its own gateway's CPU (the busier gateway's the larger, by several times), and both
    share the one wall time the pair ran for."""

    async def go() -> None:
        async with Processes(tmp_path, pin=False) as procs:
            session = await Session.start(procs, QUICK)
            other = await procs.gateway(session.base_url, name="gateway-other")
            few = Job("tiny", target=session.target, count=20, concurrency=4)
            many = Job("tiny", target=other[1], count=200, concurrency=4)
            runs = await session.together({"few": (few, (session.gateway, session.target)), "many": (many, other)})
            assert [(r["calls"], r["errors"]) for r in runs["few"].results] == [(20, {})]
            assert [(r["calls"], r["errors"]) for r in runs["many"].results] == [(200, {})]
            assert runs["many"].gateway_cpu_s > 3 * runs["few"].gateway_cpu_s > 0
            assert runs["few"].wall_s == runs["many"].wall_s

    asyncio.run(go())
