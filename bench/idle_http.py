"""``python -m bench.idle_http``: what an idle HTTP port costs the gRPC side.

Runs ``python -m server`` on a simulator process twice per round, without and with
``GATEWAY_HTTP_LISTEN`` (the HTTP port open, no HTTP traffic), for ``--rounds`` rounds, each setting
first in every other round.
Each run measures the gateway's CPU time while idle for ``--idle`` seconds, then the latency of
``--calls`` sequential gRPC StreamMessage calls (an unpaced simulator, a short reply) as the median
and the 99th percentile. Prints one line per run and the medians per setting. Light by design (one
client, sequential calls): it is not the benchmark of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from claude_gateway.v1 import chat_pb2_grpc

from bench.usage import cpu_seconds
from tests.harness import body, stream_request

ROOT = Path(__file__).resolve().parents[1]
READY = "listening on "


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``python ARGS`` from the repository; the process and the first address on its ready line."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if READY not in line:
        proc.kill()
        raise SystemExit(f"{args[1]} did not start: {line!r}")
    return proc, line.split(READY, 1)[1].split()[0]


async def latencies(target: str, calls: int) -> list[float]:
    """Seconds per StreamMessage call, read to the end, one call at a time."""
    request = stream_request(body("idle http port [[sim:tokens 20]]"))
    found = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for _ in range(calls):
            began = time.perf_counter()
            async for _ in stub.StreamMessage(request, timeout=10):
                pass
            found.append(time.perf_counter() - began)
    return found


def run(base_url: str, http: bool, idle: float, calls: int) -> tuple[float, float, float]:
    """One gateway run: idle CPU ms per second, then p50 and p99 call latency in ms."""
    env = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "any", "GATEWAY_LISTEN": "127.0.0.1:0"}
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    if http:
        env["GATEWAY_HTTP_LISTEN"] = "127.0.0.1:0"
    proc, target = start(["-m", "server"], env)
    try:
        asyncio.run(latencies(target, 20))  # warm-up: connections, caches
        before = cpu_seconds(proc.pid)
        time.sleep(idle)  # the measurement is of this idle period
        idle_ms_per_s = (cpu_seconds(proc.pid) - before) / idle * 1e3
        found = sorted(asyncio.run(latencies(target, calls)))
        return idle_ms_per_s, statistics.median(found) * 1e3, found[int(len(found) * 0.99) - 1] * 1e3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    cli = argparse.ArgumentParser(prog="python -m bench.idle_http", description=__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--idle", type=float, default=10.0, help="idle seconds measured per run")
    cli.add_argument("--calls", type=int, default=300, help="sequential gRPC calls per run")
    args = cli.parse_args()
    sim, base_url = start(["-m", "simulator", "--port", "0"], {})
    results: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    try:
        for round_ in range(args.rounds):
            for http in (False, True) if round_ % 2 == 0 else (True, False):  # neither always goes first
                result = run(base_url, http, args.idle, args.calls)
                results[http].append(result)
                print(
                    f"http port {'on ' if http else 'off'}: idle {result[0]:.2f} ms CPU/s, "
                    f"gRPC call p50 {result[1]:.2f} ms p99 {result[2]:.2f} ms",
                    flush=True,
                )
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
    for http, rows in results.items():
        idle_cpu, p50, p99 = (statistics.median(column) for column in zip(*rows, strict=True))
        print(
            f"median, http port {'on ' if http else 'off'}: idle {idle_cpu:.2f} ms CPU/s, "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )


if __name__ == "__main__":
    main()
