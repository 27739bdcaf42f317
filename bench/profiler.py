"""``python -m bench.profiler``: where the gateway's CPU goes, per relayed event.

The gateway runs in this process, built by ``server.app.build_server`` as ``python -m server``
builds it, under cProfile; the stamping simulator and the load client are child processes, as in
the benchmark (this process on CPU 0, they on CPU 1). After a warm-up run, one measured run is
profiled, and the report gives, per relayed event:

- the process's CPU (all threads, so grpc's C threads too) with the profiler on;
- the event-loop thread's CPU time (cProfile timed with ``time.thread_time``, so waiting in epoll
  costs nothing) by area: grpc, HTTP client, SDK, asyncio, gateway, codec, ...;
- the functions with the most own time, and those with the most time including callees.

cProfile slows Python code (not C code) by a sizeable factor, so compare the areas with each
other, not with the benchmark's figures. The raw profile is written to
``bench/results/gateway.prof`` (``python -m pstats`` reads it).

    python -m bench.profiler                        # 100 paced streams at 50 deltas/s
    python -m bench.profiler --tps 0 --streams 50   # unpaced ("burst")
    python -m bench.profiler --tiny 1000            # one-token calls: the fixed cost per request
    python -m bench.profiler --memory 1000          # what 1000 open streams keep allocated (tracemalloc)
    python -m bench.profiler --memory 1000 --memory-by lineno   # the same, by line
    python -m bench.profiler --http httpx           # the SDK's default transport (the gateway runs aiohttp)
    python -m bench.profiler --backend bedrock      # through row 11's backends file (none: no file), on its simulator
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib
import json
import logging
import os
import pstats
import re
import time
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic

from bench.backends import KEY, backends_files, backends_simulator
from bench.jobs import Job
from bench.processes import ROOT, Processes, go
from bench.usage import rss_bytes
from server.app import build_server, sdk_client
from server.config import Settings

RESULTS = ROOT / "bench" / "results"

# Where a function's file lies -> the area it is counted in, first match wins.
AREAS = (
    ("/grpc/", "grpc (Python and Cython parts)"),
    ("/httpx2/", "HTTP client (httpx2/httpcore2/h11/anyio)"),
    ("/httpcore2/", "HTTP client (httpx2/httpcore2/h11/anyio)"),
    ("/h11/", "HTTP client (httpx2/httpcore2/h11/anyio)"),
    ("/anyio/", "HTTP client (httpx2/httpcore2/h11/anyio)"),
    ("/anthropic/", "anthropic SDK (SSE decoder, response wrapper)"),
    ("/asyncio/", "asyncio event loop"),
    ("/server/", "gateway (server/)"),
    ("/claude_gateway/", "codec (client/claude_gateway)"),
    ("/google/protobuf/", "protobuf (Python part)"),
    ("/json/", "json"),
    # the gateway's upstream transport (aiohttp, the default) and what it is built on
    ("/aiohttp/", "HTTP client (aiohttp, multidict, yarl)"),
    ("/multidict/", "HTTP client (aiohttp, multidict, yarl)"),
    ("/yarl/", "HTTP client (aiohttp, multidict, yarl)"),
    ("/propcache/", "HTTP client (aiohttp, multidict, yarl)"),
    ("/logging/", "logging"),
)


def area(filename: str, name: str) -> str:
    for marker, label in AREAS:
        if marker in filename:
            return label
    if filename == "~":  # a builtin: name it by what it is
        if "grpc" in name or "cygrpc" in name:
            return "grpc (Python and Cython parts)"
        if "protobuf" in name or "upb" in name or "message" in name.lower():
            return "protobuf (C, upb)"
        if "select" in name or "epoll" in name or "socket" in name or "recv" in name or "send" in name:
            return "sockets and epoll (syscalls)"
        return "other builtins"
    return "other Python"


def _rows(stats: dict[Any, Any], events: int, key: int, limit: int) -> list[str]:
    ordered = sorted(stats.items(), key=lambda item: item[1][key], reverse=True)[:limit]
    lines = [f"{'us/event':>9} {'calls/event':>11}  function"]
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in ordered:
        value = tt if key == 2 else ct
        where = f"{Path(filename).name}:{line}" if filename != "~" else ""
        lines.append(f"{value / events * 1e6:9.2f} {nc / events:11.2f}  {name} {where}")
    return lines


def by_caller_area(stats: dict[Any, Any]) -> dict[str, float]:
    """Own time by area, with the time of a builtin that has no area of its own (``len``, ``dict.get``,
    ``str.count``...) counted in the areas of the functions that called it, by their share of its time."""
    by_area: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tt, _ct, callers) in stats.items():
        own = area(filename, name)
        if own != "other builtins" or not callers:
            by_area[own] += tt
            continue
        for (caller_file, _caller_line, caller_name), figures in callers.items():
            by_area[area(caller_file, caller_name)] += figures[2]  # the builtin's own time under this caller
    return by_area


def report(profile: cProfile.Profile, events: int, cpu_s: float, label: str) -> str:
    """The text report of a profiled run that relayed ``events`` events."""
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # documented, untyped
    by_area = by_caller_area(stats)
    profiled = sum(by_area.values())
    lines = [
        f"{label}: {events} events relayed",
        f"process CPU with the profiler on: {cpu_s / events * 1e6:.1f} us/event (all threads); "
        f"event-loop thread {profiled / events * 1e6:.1f} us/event as profiled",
        "",
        "own time by area (us/event, share of profiled time; a builtin's in its callers' areas):",
    ]
    for name, tt in sorted(by_area.items(), key=lambda item: item[1], reverse=True):
        lines.append(f"  {tt / events * 1e6:8.2f}  {tt / profiled:5.1%}  {name}")
    lines += ["", "most own time:", *_rows(stats, events, 2, 30)]
    lines += ["", "most time including callees:", *_rows(stats, events, 3, 30)]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def _gateway(procs: Processes, http: str, backend: str) -> AsyncIterator[str]:
    """A stamping simulator in a child process and a gateway in this one; yields the gateway's host:port.

    ``http`` "aiohttp" gives the SDK its aiohttp transport (``anthropic.DefaultAioHttpClient``, which
    needs the ``aiohttp`` package) instead of its default httpx one: an experiment, not what
    ``python -m server`` does. ``backend`` other than "default": the upstream is row 11's plain simulator,
    and the gateway reads row 11's backends file of that name (``bench.backends.backends_files``), or
    none (``ANTHROPIC_BASE_URL`` and a key, as row 11's ``default`` gateway).
    """
    if backend != "default":
        upstream, base_url = await backends_simulator(procs)
        if backend == "none":
            settings = Settings.from_env({}, {"listen": "127.0.0.1:0"})
            gateway = await build_server(settings, sdk_client(settings, base_url=base_url, api_key=KEY))
        else:
            path = backends_files(procs.logs, base_url)[backend]
            gateway = await build_server(Settings.from_env({}, {"listen": "127.0.0.1:0", "backends_file": str(path)}))
        try:
            yield f"127.0.0.1:{gateway.port}"
        finally:
            await gateway.close()
            await procs.stop(upstream)
        return
    upstream, base_url = await procs.upstream(RESULTS / "logs" / "profiler-records.json")
    settings = Settings.from_env({}, {"listen": "127.0.0.1:0"})
    http_client = anthropic.DefaultAioHttpClient() if http == "aiohttp" else None
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="bench", http_client=http_client)
    gateway = await build_server(settings, client)
    try:
        yield f"127.0.0.1:{gateway.port}"
    finally:
        await gateway.close()
        await procs.stop(upstream)


async def _cpu(args: argparse.Namespace, procs: Processes, target: str) -> str:
    if args.tiny:
        job = Job("tiny", target=target, count=args.tiny, concurrency=8)
        label = f"{args.tiny} one-token calls, 8 at a time"
    else:
        job = Job(
            "streams",
            target=target,
            streams=args.streams,
            tokens=args.tokens,
            tps=args.tps,
            ramp=1.0,
            channels=max(1, args.streams // 100),
            record=False,
        )
        label = f"{args.streams} streams x {args.tokens} deltas at {args.tps:g}/s"
    cpu_s = []
    for profiled in (False, True):  # the same run twice: first unprofiled (also a warm-up), then profiled
        clients = await procs.clients([job])
        profile = cProfile.Profile(time.thread_time)  # CPU of the event-loop thread, not wall time
        cpu0 = time.process_time()
        if profiled:
            profile.enable()
        await go(clients)
        lines = [await child.expect("result ", 600) for child in clients]
        profile.disable()
        cpu_s.append(time.process_time() - cpu0)
    results = [json.loads(line) for line in lines]
    if args.tiny:
        events = sum(r["events"] for r in results)
    else:
        events = sum(rec["events"] for r in results for rec in r["records"])
        messages = sum(rec["messages"] for r in results for rec in r["records"])
        label += f" ({events / messages:.2f} events per gRPC message)"
    out = RESULTS / "gateway.prof"
    profile.dump_stats(out)
    unprofiled = f"without the profiler: {cpu_s[0] / events * 1e6:.1f} us/event (the same run, first)\n"
    return unprofiled + report(profile, events, cpu_s[1], label) + f"\n\nraw profile: {out}"


async def _memory(args: argparse.Namespace, procs: Processes, target: str) -> str:
    """Python allocations that stay with open streams, by file, per stream (tracemalloc)."""
    n = args.memory
    warm = Job("streams", target=target, streams=50, tokens=20, tps=0, record=False)
    (client,) = await procs.clients([warm])
    await go([client])
    await client.expect("result ", 600)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    rss0 = rss_bytes(os.getpid())
    share = [n // 2 + n % 2, n // 2] if n > 500 else [n]
    holders = await procs.clients(
        [Job("hold", target=target, streams=k, tokens=3600, tps=1, ramp=4.0, channels=max(1, k // 100)) for k in share]
    )
    await go(holders)
    for holder in holders:
        await holder.expect("opened", 300)
    await asyncio.sleep(2.0)
    after = tracemalloc.take_snapshot()
    rss1 = rss_bytes(os.getpid())
    for holder in holders:
        await holder.send("release")
    for holder in holders:
        await holder.expect("result ", 120)
    tracemalloc.stop()
    diffs = after.compare_to(before, args.memory_by)
    traced = sum(d.size_diff for d in diffs)
    lines = [
        f"{n} open streams at 1 delta/s: traced Python allocations {traced / n / 1024:.1f} KB/stream; "
        f"process RSS {(rss1 - rss0) / n / 1024:.1f} KB/stream (RSS includes tracemalloc's own bookkeeping "
        "and native memory: grpc core, libc arenas)",
        "",
        f"{'KB/stream':>9} {'blocks/stream':>13}  {'line' if args.memory_by == 'lineno' else 'file'}",
    ]
    for d in sorted(diffs, key=lambda d: d.size_diff, reverse=True)[:20]:
        frame = d.traceback[0]
        where = _short(frame.filename) + (f":{frame.lineno}" if args.memory_by == "lineno" else "")
        lines.append(f"{d.size_diff / n / 1024:9.2f} {d.count_diff / n:13.1f}  {where}")
    return "\n".join(lines)


def _short(filename: str) -> str:
    """A path from site-packages, the project root or the standard library on."""
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", filename)


async def _run(args: argparse.Namespace) -> str:
    async with (
        Processes(RESULTS / "logs", pin=not args.no_pin) as procs,
        _gateway(procs, args.http, args.backend) as target,
    ):
        return await (_memory(args, procs, target) if args.memory else _cpu(args, procs, target))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiler", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--tps", type=float, default=50.0, help="deltas per second per stream (0: unpaced)")
    parser.add_argument("--tiny", type=int, default=0, help="instead: this many one-token calls")
    parser.add_argument("--memory", type=int, default=0, help="instead: allocations held by this many open streams")
    parser.add_argument(
        "--memory-by",
        choices=("filename", "lineno"),
        default="filename",
        help="with --memory: group allocations by file or by line",
    )
    parser.add_argument(
        "--backend",
        choices=("default", "none", "anthropic", "bedrock"),
        default="default",
        help="through row 11's backends file of that name, or none, on its plain simulator "
        "(default: none, on the stamping simulator)",
    )
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--http",
        choices=("httpx", "aiohttp"),
        default="aiohttp",
        help="the SDK's HTTP transport (default aiohttp, as the gateway runs by default)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="experiment: the event loop (uvloop needs the uvloop package)",
    )
    args = parser.parse_args()
    if not args.no_pin and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # before grpc starts its threads, which inherit it
    # Log as `python -m server` does (INFO, one line per call), to a file, so that its cost is profiled too.
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        filename=RESULTS / "logs" / "profiler-gateway.log",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("anthropic").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    factory = importlib.import_module("uvloop").new_event_loop if args.loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        print(runner.run(_run(args)))


if __name__ == "__main__":
    main()
