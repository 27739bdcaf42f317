"""``python -m bench``: run issue #5's benchmark and print one table (also as JSON).

    python -m bench              # the full run, a few minutes on 2 cores
    python -m bench --quick      # a smoke run, about a minute
    python -m bench --only 1,6   # some scenarios only (9: /v1/messages against gRPC)

Writes ``bench/results/latest.json`` (``--out``) and the children's logs under
``bench/results/logs/``. Exits 0 when every scenario ran, whatever its verdict; 1 if one crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from bench.machine import describe
from bench.plan import DEFAULT, QUICK, Plan
from bench.processes import ROOT, Processes
from bench.report import Row, header, table, write_json
from bench.scenarios import NAMES, SCENARIOS
from bench.session import Session

RESULTS = ROOT / "bench" / "results"


def _raise_fd_limit() -> None:
    """Children inherit it: a thousand streams need a few thousand sockets across the processes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


async def _run(plan: Plan, selected: list[str], procs: Processes) -> list[Row]:
    rows: list[Row] = []
    async with procs:
        session = await Session.start(procs, plan)
        for key in selected:
            print(f"[{key}] {NAMES[key]} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                rows += await SCENARIOS[key](session)
            except Exception as exc:
                rows.append(Row(key, NAMES[key], "error", "", "error", f"{type(exc).__name__}: {exc}"))
            print(f"[{key}] done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def _notes(pinned: bool, quick: bool, elapsed: float) -> list[str]:
    cores = os.cpu_count() or 1
    placement = (
        "the gateway is pinned to CPU 0; the simulator and the load clients share CPU 1 (taskset)"
        if pinned
        else f"no pinning: the gateway, the simulator and the load clients share all {cores} cores"
    )
    return [
        f"{'--quick smoke run' if quick else 'full run'} in {elapsed:.0f} s; {placement}. The load side runs on "
        "this same machine: its CPU use is given with each row, and it limits what can be offered.",
        "relay latency = the simulator writing a text delta (a CLOCK_MONOTONIC stamp in its text) -> a load "
        "client reading it from the gateway; it includes the client's own read delay on a shared core.",
        "CPU = the gateway process's CPU-time clock (all threads, clock_gettime, nanoseconds).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of about a minute")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated scenario numbers ({', '.join(SCENARIOS)})"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the gateway and the load to separate CPUs")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="where to write the JSON report")
    args = parser.parse_args()
    selected = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in selected if key not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    _raise_fd_limit()
    plan = QUICK if args.quick else DEFAULT
    pinned = not args.no_pin and _can_pin()
    started = time.monotonic()
    rows = asyncio.run(_run(plan, selected, Processes(RESULTS / "logs", pin=pinned)))
    machine = describe()
    notes = _notes(pinned, args.quick, time.monotonic() - started)
    print(header(machine, notes))
    print()
    print(table(rows))
    write_json(args.out, rows, machine, notes, plan.as_json())
    print(f"\nwritten: {args.out}")
    sys.exit(1 if any(r.verdict == "error" for r in rows) else 0)


if __name__ == "__main__":
    main()
