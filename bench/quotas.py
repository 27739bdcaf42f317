"""``python -m bench.quotas``: what per-caller quotas kept in Redis add to the gateway's CPU per request.

    python -m bench.quotas                 # 3 rounds of 2,000 calls on each gateway, about a minute
    python -m bench.quotas --rounds 1 --calls 500

Not part of ``make bench``. Starts the simulator, a ``redis-server`` on a free loopback port, and two
gateways on the same core: one as ``make bench`` runs it (no policy), one whose policy gives the
caller every counted limit (concurrent streams, requests and tokens per minute, each far above the
load, so nothing is refused) kept in that Redis. Then it runs the bench's row 3c job (one-token
replies, 8 calls at a time) against each in turn, ``--rounds`` times, and prints each gateway's CPU
per request (median over the rounds), the difference, and redis-server's own CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
from dataclasses import replace

from bench.__main__ import RESULTS, _can_pin, _raise_fd_limit
from bench.jobs import Job
from bench.plan import DEFAULT
from bench.processes import Child, Processes
from bench.session import Session
from bench.usage import cpu_seconds

POLICY = """\
callers:
  anonymous:
    concurrent_streams: 100000
    requests_per_minute: 1000000000
    tokens_per_minute: 1000000000000
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _redis(procs: Processes) -> tuple[Child, str]:
    """A redis-server on the load side's CPU (in a deployment it is another machine); its URL once ready."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", ""]
    child = await procs.spawn("redis", argv, cpus=procs.load_cpus)
    while "Ready to accept connections" not in await child.readline(30):
        pass
    return child, f"redis://127.0.0.1:{port}/0"


async def measure(rounds: int, calls: int, procs: Processes) -> dict[str, list[float]]:
    """Gateway CPU seconds per request without and with Redis quotas, and Redis's, one value per round."""
    per_call: dict[str, list[float]] = {"off": [], "on": [], "redis": []}
    async with procs:
        policy = procs.logs / "quota-policy.yaml"
        policy.write_text(POLICY)
        session = await Session.start(procs, DEFAULT)
        redis, url = await _redis(procs)
        quota_gateway = await procs.gateway(
            session.base_url, env={"GATEWAY_POLICY_FILE": str(policy), "GATEWAY_REDIS_URL": url}, name="gateway-quotas"
        )
        job = Job("tiny", count=calls, concurrency=DEFAULT.tiny_concurrency)
        gateways = {"off": (session.gateway, session.target), "on": quota_gateway}
        for _ in range(rounds):
            for name, (gateway, target) in gateways.items():
                redis_before = cpu_seconds(redis.pid)
                run = await session.run([replace(job, target=target)], other=(gateway, target))
                (result,) = run.results
                if result["errors"]:
                    sys.exit(f"{name}: calls failed: {result['errors']}")
                per_call[name].append(run.cpu["gateway"]["cpu_s"] / calls)
                if name == "on":
                    per_call["redis"].append((cpu_seconds(redis.pid) - redis_before) / calls)
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quotas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs on each gateway, alternating")
    parser.add_argument("--calls", type=int, default=DEFAULT.tiny_calls, help="one-token calls per run")
    args = parser.parse_args()
    _raise_fd_limit()
    per_call = asyncio.run(measure(args.rounds, args.calls, Processes(RESULTS / "logs", pin=_can_pin())))
    off, on, redis = (statistics.median(per_call[k]) * 1e3 for k in ("off", "on", "redis"))
    rounds = ", ".join(f"{a * 1e3:.3f}/{b * 1e3:.3f}" for a, b in zip(per_call["off"], per_call["on"], strict=True))
    print(f"gateway CPU per request, no quotas:    {off:.3f} ms")
    print(f"gateway CPU per request, Redis quotas: {on:.3f} ms")
    print(f"added by Redis quotas:                 {on - off:+.3f} ms (target < 0.2 ms)")
    print(f"redis-server CPU per request:          {redis:.3f} ms")
    print(f"(medians of {args.rounds} rounds of {args.calls} calls; off/on per round: {rounds})")


if __name__ == "__main__":
    main()
