"""Scenario 12: the public per-stream method, a concurrency sweep of paced streams (``python -m bench --only 12``).

The method (GetBusbar/benchmarking's ``stream`` suite): streams of 64 text chunks, one every 20 ms,
at 1, 8, 32, 128, 512 and 1024 concurrent streams; at each step the time to the first token and the
gap between chunks through the gateway, minus the same read straight from the upstream ("added"),
p50 and p99; the fraction of chunks delivered; the stalls (streams with a gap over twice the
interval); and the sustained streams, the highest step up to which every step delivered every chunk
with no stall. Here the upstream is the stamping simulator, the direct reader the official SDK (on
aiohttp) reading the same simulator, the gateway ``python -m server`` with its HTTP port on, pinned
to one core, and the load clients with the simulator on the other core. Each step runs the direct
reader, then gRPC StreamMessage, then ``POST /v1/messages``, each with the step's count of slots
that each read streams back to back (``sweep_reads``), first starts spread over one stream's length;
each reader process first makes one short call, not counted, which also warms the gateway. The
gateway runs with its defaults: at 1024 streams, the 24 past ``GATEWAY_MAX_CONCURRENT_STREAMS`` (1000)
are refused at once (RESOURCE_EXHAUSTED on gRPC, 529 overloaded_error on HTTP), as in service.

A step that is not clean says whose core was full: the load side's (simulator plus clients; with
how many of the stalls the simulator itself sent late, from its send stamps) or the gateway's.

``python -m bench.sweep [REPORT_JSON]`` prints the run's sweep as the Markdown table of
docs/performance.md (default: bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.jobs import Job
from bench.processes import ROOT, ChildError
from bench.report import Row, pct
from bench.session import Run, Session
from bench.stats import Summary, summarize

WAYS = {"direct": "sweep_sdk", "grpc": "sweep_grpc", "http": "sweep_http"}
SATURATED = 0.90  # a core this busy over a step counts as full
PER_READER = 512  # slots of one reader process at most (see ``split``)
BUSY_MACHINE = 0.25  # cores used by processes outside the benchmark worth naming
KEY = "12"


@dataclass(frozen=True)
class Step:
    """One way's figures at one concurrency (times in µs)."""

    level: int
    streams: int
    expected: int  # chunks the step's streams should have delivered
    delivered: int
    ttft: Summary
    gap: Summary
    stalls: int
    sim_stalls: int  # stalled streams whose simulator itself left a gap over the limit
    errors: dict[str, int]
    gateway_util: float
    gateway_peak: float
    load_util: float  # simulator plus clients, cores
    background: float  # cores used meanwhile by processes outside the benchmark (approximate)
    wall_s: float

    @property
    def fraction(self) -> float:
        return self.delivered / self.expected if self.expected else math.nan

    @property
    def clean(self) -> bool:
        return self.delivered == self.expected and self.stalls == 0 and not self.errors

    def as_json(self) -> dict[str, Any]:
        """The figures, with NaN (not measured) as None so that the JSON stays standard."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self._fields().items()}

    def _fields(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "streams": self.streams,
            "expected": self.expected,
            "delivered": self.delivered,
            "fraction": self.fraction,
            "ttft_us": self.ttft.as_json(),
            "gap_us": self.gap.as_json(),
            "stalls": self.stalls,
            "sim_stalls": self.sim_stalls,
            "errors": self.errors,
            "gateway_util": self.gateway_util,
            "gateway_peak": self.gateway_peak,
            "load_util": self.load_util,
            "background": self.background,
            "wall_s": self.wall_s,
            "clean": self.clean,
        }


def step(level: int, rounds: int, chunks: int, interval: float, run: Run) -> Step:
    """A step's figures from the clients' results (``sweep_reads``) and the run's CPU."""
    streams = [s for r in run.results for s in r["streams"]]
    limit_us = 2 * interval * 1e6
    stalled = [s for s in streams if s["max_gap_us"] > limit_us]
    gateway = run.cpu.get("gateway", {"util": math.nan})
    return Step(
        level=level,
        streams=len(streams),
        expected=level * rounds * chunks,
        delivered=sum(s["deltas"] for s in streams),
        ttft=summarize([s["ttft_us"] for s in streams if s["ttft_us"] is not None]),
        gap=summarize([g for r in run.results for g in r["gaps_us"]]),
        stalls=len(stalled),
        sim_stalls=sum(1 for s in stalled if s["sim_max_gap_us"] > limit_us),
        errors=dict(Counter(s["error"] for s in streams if s["error"])),
        gateway_util=gateway["util"],
        gateway_peak=run.gateway_peak,
        load_util=(run.cpu["upstream"]["cpu_s"] + run.client_cpu_s) / run.wall_s,
        background=run.background,
        wall_s=run.wall_s,
    )


def failed(level: int, expected: int, what: str) -> Step:
    """A step that could not be run (a child process failed): nothing delivered, the failure as its error."""
    nothing = summarize([])
    return Step(level, 0, expected, 0, nothing, nothing, 0, 0, {what: 1}, math.nan, math.nan, math.nan, math.nan, 0.0)


def sustained(steps: list[Step]) -> int:
    """The highest level up to which every step was clean (0: not even the first)."""
    best = 0
    for s in sorted(steps, key=lambda s: s.level):
        if not s.clean:
            break
        best = s.level
    return best


def _us(value: float) -> str:
    """µs as the table shows them: µs below a millisecond, ms above."""
    if value != value:
        return "n/a"
    return f"{value:+.0f} us" if abs(value) < 1000 else f"{value / 1000:+.1f} ms"


def why(s: Step, direct: Step | None) -> str:
    """Whose core a step that is not clean ran out of, from the CPU figures and the simulator's stamps."""
    if s.clean:
        return ""
    reasons = []
    if s.load_util >= SATURATED:
        reasons.append(f"the load core full (simulator + clients {pct(s.load_util)})")
    if s.stalls and s.sim_stalls:
        reasons.append(f"the simulator itself sent late on {s.sim_stalls} of the {s.stalls} stalled streams")
    if direct is not None and direct is not s and not direct.clean:
        reasons.append("the direct reader not clean either")
    if s.gateway_peak >= SATURATED:
        reasons.append(f"the gateway's core {pct(s.gateway_peak)} at peak")
    if not s.streams:
        reasons.append(f"not run: {', '.join(s.errors)}")
    if s.background >= BUSY_MACHINE:
        reasons.append(f"other processes on the machine used ~{s.background:.1f} cores meanwhile")
    return "; ".join(reasons) or "no core full"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def split(level: int) -> list[int]:
    """A step's slots shared over as few reader processes as can hold them: they all share the load core, so
    more processes add no CPU, only start-up (each imports grpc or the SDK) and memory. The SDK's connection
    pool holds 1000 (``anthropic.DefaultAioHttpClient``), hence at most PER_READER slots a process."""
    readers = -(-level // PER_READER)
    return [level // readers + (1 if i < level % readers else 0) for i in range(readers)]


def _rounds(level: int, minimum: int) -> int:
    """Streams each slot reads: at least two, and at least ``minimum`` streams over the step."""
    return max(2, -(-minimum // level))


async def sweep(session: Session) -> list[Row]:
    """The sweep, every way at every step, through one gateway with its HTTP port on."""
    plan = session.plan
    tps = 1 / plan.sweep_interval
    length = plan.sweep_chunks * plan.sweep_interval
    http = f"127.0.0.1:{_free_port()}"
    gateway, target = await session.procs.gateway(session.base_url, {"GATEWAY_HTTP_LISTEN": http}, name="gateway-sweep")
    addresses = {"direct": session.base_url, "grpc": target, "http": f"http://{http}"}

    def jobs(way: str, level: int, rounds: int, ramp: float) -> list[Job]:
        kind = WAYS[way]
        where = {"target": target} if way == "grpc" else {"base_url": addresses[way]}
        return [
            Job(kind, streams=k, tokens=plan.sweep_chunks, tps=tps, ramp=ramp, count=rounds,
                channels=session.channels(k), record=False, http_client="raw" if way == "http" else "aiohttp",
                **where)  # type: ignore[arg-type]
            for k in split(level)
        ]  # fmt: skip

    steps: dict[str, list[Step]] = {way: [] for way in WAYS}
    try:
        for level in plan.sweep_levels:
            rounds = _rounds(level, plan.sweep_min_streams)
            ramp = length if level > 1 else 0.0
            for way in WAYS:
                other = (gateway, http if way == "http" else target)
                try:
                    run = await session.run(jobs(way, level, rounds, ramp), other)
                except ChildError as exc:  # e.g. a load client that could not start in time on a busy core
                    steps[way].append(failed(level, rounds * level * plan.sweep_chunks, str(exc).splitlines()[0]))
                    continue
                steps[way].append(step(level, rounds, plan.sweep_chunks, plan.sweep_interval, run))
    finally:
        await session.procs.stop(gateway)
    return rows(steps, plan.sweep_chunks, plan.sweep_interval)


def rows(steps: dict[str, list[Step]], chunks: int, interval: float) -> list[Row]:
    """A summary row and a row per step for gRPC (12a) and /v1/messages (12b), and the direct reader's (12c)."""
    limit = f"{2 * interval * 1000:.0f} ms"
    direct = {s.level: s for s in steps["direct"]}
    out = []
    for letter, way, name in (("a", "grpc", "gRPC StreamMessage"), ("b", "http", "POST /v1/messages")):
        first = steps[way][0]
        base = direct[first.level]
        held = sustained(steps[way])
        after = next((s for s in steps[way] if s.level > held), None)
        beyond = f"; at {after.level}: {why(after, direct.get(after.level))}" if after else ""
        out.append(
            Row(
                f"{KEY}{letter}",
                f"public stream method over {name}: added TTFT and gap at {first.level} stream, sustained streams",
                f"added TTFT p50 {_us(first.ttft.p50 - base.ttft.p50)}, p99 {_us(first.ttft.p99 - base.ttft.p99)}; "
                f"added gap p50 {_us(first.gap.p50 - base.gap.p50)}, p99 {_us(first.gap.p99 - base.gap.p99)}; "
                f"sustained {held} streams",
                "published (4 Graviton3 cores, another endpoint): agentgateway +267 us, 128 streams",
                "info",
                f"{chunks} chunks every {interval * 1000:g} ms; through the gateway TTFT p50 {first.ttft.p50:.0f} / "
                f"p99 {first.ttft.p99:.0f} us over {first.streams} streams, direct {base.ttft.p50:.0f} / "
                f"{base.ttft.p99:.0f} us; sustained = every chunk delivered and no gap over {limit} at every step "
                f"up to it{beyond}",
                {
                    "way": way,
                    "sustained": held,
                    "sustained_chunks_per_s": held / interval,
                    "steps": [s.as_json() for s in steps[way]],
                    "direct": [s.as_json() for s in steps["direct"]],
                },
            )
        )
        for s in steps[way]:
            d = direct[s.level]
            reason = why(s, d)
            out.append(
                Row(
                    f"{KEY}{letter}.{s.level}",
                    f"  {name}, {s.level} concurrent streams",
                    f"TTFT {_us(s.ttft.p50 - d.ttft.p50)} / {_us(s.ttft.p99 - d.ttft.p99)}, gap "
                    f"{_us(s.gap.p50 - d.gap.p50)} / {_us(s.gap.p99 - d.gap.p99)} (added p50 / p99); delivered "
                    f"{s.fraction:.1%}; {s.stalls}/{s.streams} stalled",
                    f"every chunk, no gap > {limit}",
                    "pass" if s.clean else "FAIL",
                    f"{s.streams} streams in {s.wall_s:.1f} s; TTFT p50 {s.ttft.p50:.0f} / p99 {s.ttft.p99:.0f} us "
                    f"(direct {d.ttft.p50:.0f} / {d.ttft.p99:.0f}), gap p50 {s.gap.p50:.0f} / p99 {s.gap.p99:.0f} us "
                    f"(direct {d.gap.p50:.0f} / {d.gap.p99:.0f}), max {s.gap.max / 1000:.0f} ms; gateway "
                    f"{pct(s.gateway_util)} avg, {pct(s.gateway_peak)} peak of its core; load core "
                    f"{pct(s.load_util)}; errors {s.errors or 'none'}" + (f"; not clean: {reason}" if reason else ""),
                    s.as_json(),
                )
            )
    clean = sustained(steps["direct"])
    out.append(
        Row(
            f"{KEY}c",
            "  the direct reader (the SDK straight from the simulator, on the load core): its own sweep",
            "; ".join(
                f"{s.level}: TTFT p50 {s.ttft.p50 / 1000:.2f} ms, {s.fraction:.0%}, {s.stalls} stalled"
                for s in steps["direct"]
            ),
            "-",
            "info",
            f"clean up to {clean} streams; past it: "
            + "; ".join(f"{s.level}: {why(s, None)}" for s in steps["direct"] if not s.clean),
            {"steps": [s.as_json() for s in steps["direct"]], "sustained": clean},
        )
    )
    return out


# ---------------------------------------------------------------------------------------------
# The docs' table from a run's JSON


def _cell(step: dict[str, Any], direct: dict[str, Any]) -> list[str]:
    ttft, gap = step["ttft_us"], step["gap_us"]
    d_ttft, d_gap = direct["ttft_us"], direct["gap_us"]

    def added(a: dict[str, Any], b: dict[str, Any], q: str) -> str:
        return "n/a" if a[q] is None or b[q] is None else _us(a[q] - b[q])

    stalls = f"{step['stalls']}" + (f" ({step['sim_stalls']} sim.)" if step["sim_stalls"] else "")
    return [
        f"{added(ttft, d_ttft, 'p50')} / {added(ttft, d_ttft, 'p99')}",
        f"{added(gap, d_gap, 'p50')} / {added(gap, d_gap, 'p99')}",
        "n/a" if step["fraction"] is None else f"{step['fraction']:.1%}",
        stalls,
        " / ".join("n/a" if step[k] is None else f"{step[k]:.0%}" for k in ("gateway_peak", "load_util")),
    ]


def markdown(report: dict[str, Any]) -> str:
    """The sweep rows of a report as docs/performance.md's tables: one line per way and step, then the headline
    figures beside the published ones."""
    found = {r["data"]["way"]: r["data"] for r in report["rows"] if r["key"] in (f"{KEY}a", f"{KEY}b")}
    if not found:
        raise SystemExit(f"no rows {KEY}a/{KEY}b in the report: run python -m bench --only {KEY}")
    lines = [
        "| way | streams | added TTFT p50 / p99 | added gap p50 / p99 | delivered | stalled streams "
        "| gateway core peak / load core |",
        "|---|---|---|---|---|---|---|",
    ]
    for way, name in (("grpc", "gRPC"), ("http", "/v1/messages")):
        data = found.get(way)
        if data is None:
            continue
        direct = {d["level"]: d for d in data["direct"]}
        for s in data["steps"]:
            lines.append("| " + " | ".join([name, str(s["level"]), *_cell(s, direct[s["level"]])]) + " |")
    ours: list[str] = []
    for way, name, endpoint in (
        ("grpc", "this gateway, gRPC", "`ChatService/StreamMessage` (Anthropic events as protobuf)"),
        ("http", "this gateway, HTTP", "`POST /v1/messages` (Anthropic SSE)"),
    ):
        data = found.get(way)
        if data is None:
            continue
        first = data["steps"][0]
        direct = next(d for d in data["direct"] if d["level"] == first["level"])
        added = _us(first["ttft_us"]["p50"] - direct["ttft_us"]["p50"]).lstrip("+")
        where = MACHINE.format(cpu=report.get("machine", {}).get("cpu", "unknown CPU")) if not ours else "the same"
        ours.append(f"| {name} | {where} | {endpoint} | {added} | {data['sustained']} |")
    comparison = [
        "| gateway | machine (the gateway's cores) | endpoint | added TTFT p50 | sustained streams |",
        "|---|---|---|---|---|",
        *ours,
        *(f"| {' | '.join(published)} |" for published in PUBLISHED),
    ]
    return "\n".join([*lines, "", *comparison])


# The published figures the sweep is set beside (GetBusbar/benchmarking, results/stream/*.json, 2026), and how this
# run's machine is named beside theirs.
MACHINE = "1 core of an {cpu} (2 cores), Python"
PUBLISHED = (
    ("agentgateway (Rust)", "4 Graviton3 cores (m7g.2xlarge)", "`/v1/chat/completions` (OpenAI SSE)", "267 us", "128"),
    ("LiteLLM (Python)", "the same", "the same", "8.5 ms", "1"),
    ("LiteLLM's Rust router", "the same", "the same", "40.7 ms", "512"),
    ("Kong", "the same", "the same", "106 ms (it buffers)", "-"),
    ("Helicone", "the same", "the same", "stalls", "-"),
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    parser.add_argument("report", type=Path, nargs="?", default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    print(markdown(json.loads(args.report.read_text())))


if __name__ == "__main__":
    main()
