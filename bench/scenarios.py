"""The measurements of issue #5 (and #23's, row 9), each ``async (Session) -> list[Row]``.

1. capacity: relay latency of N concurrent paced streams, and whether any fell behind schedule
2. CPU per relayed event, gateway against a process consuming the same streams with the SDK, and
   against grpc.aio alone writing the same paced streams (``floor``) and aiohttp alone reading them
3. time to first event added by the gateway, and its fixed CPU per request, against the bare SDK and
   against grpc.aio alone serving the same calls
4. memory per open stream
5. overload: refusals at the stream limit, and the admitted streams' latency meanwhile
6. cancel-to-close: client cancel to the upstream connection closing
7. workers (GATEWAY_WORKERS), if the gateway has them
8. observability cost
9. CPU per relayed event over the Messages API (/v1/messages, SSE) against over gRPC
10. resumable streams on Redis
12. the public per-stream method: a concurrency sweep of paced streams (``sweep``)
13. the server against its code at earlier commits, per call and per event (``baseline``)

Latency is always simulator write -> client read (see ``stamps``); CPU is /proc utime+stime of the
gateway process (see ``usage``). Verdicts compare against the targets of issue #5.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import Any

from bench import telemetry
from bench.backends import backends
from bench.baseline import baseline
from bench.jobs import Job
from bench.processes import Child, result
from bench.report import Row, judged, ms, pct
from bench.session import Run, Session
from bench.stamps import upstream_closes
from bench.stats import Summary, summarize
from bench.sweep import sweep
from bench.usage import rss_bytes
from server.config import Settings

BEHIND = 0.10  # a stream is behind when it ends more than this fraction of its length late
LATENCY_TARGET = 0.050
REJECT_TARGET = 0.010  # "at once": our reading of it


def _lat(run: Run) -> Summary:
    """Relay latency of every stamped delta of a run, in seconds."""
    return summarize([x for r in run.results for x in r["lat_us"]]).scaled(1e-6)


def _records(run: Run) -> list[dict[str, Any]]:
    return [rec for r in run.results for rec in r["records"]]


def _events(run: Run) -> int:
    return sum(rec["events"] for rec in _records(run))


def _errors(records: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(rec["error"] for rec in records if rec["error"]))


def schedule(records: list[dict[str, Any]], tps: float) -> dict[str, Any]:
    """How far streams ended behind their schedule (first send + (deltas - 1) / tps).

    ``behind`` counts streams whose last delta reached the client more than BEHIND of the stream's
    length late; ``sim_late`` those the simulator itself sent late (a starved load side, not the
    gateway).
    """
    behind = sim_late = 0
    worst = 0.0
    for rec in records:
        if rec["deltas"] < 2:
            continue
        length = (rec["deltas"] - 1) / tps
        lag = (rec["last_ns"] - rec["first_stamp"]) / 1e9 - length
        sim_lag = (rec["last_stamp"] - rec["first_stamp"]) / 1e9 - length
        behind += lag > BEHIND * length
        sim_late += sim_lag > BEHIND * length
        worst = max(worst, lag)
    return {"behind": behind, "sim_late": sim_late, "worst_lag_s": worst}


def _others(run: Run, during: str = "") -> str:
    """A warning when processes outside the benchmark used noticeable CPU during ``run``.

    Runs shorter than 2 s are not judged: 10 ms ticks over several processes make the estimate noise.
    """
    if run.wall_s < 2 or run.background <= 0.05:
        return ""
    return f"; NB other processes used ~{run.background:.2f} cores{' during ' + during if during else ''}"


def _kb(size: int) -> str:
    return f"{size / 1024:,.0f} KB"


def _peak_rate(run: Run) -> int:
    """The most deltas clients received in any one second."""
    buckets: Counter[int] = Counter()
    for r in run.results:
        buckets.update(t // 1000 for t in r["recv_ms"])
    return max(buckets.values(), default=0)


async def _paced(
    session: Session, streams: int, tokens: int, other: tuple[Child, str] | None = None, detach_grace: int = 0
) -> Run:
    """``streams`` paced streams through the session's gateway, or through ``other`` (process, host:port);
    resumable ones with a ``detach_grace``."""
    plan = session.plan
    jobs = [
        Job(
            "streams",
            target=other[1] if other else session.target,
            streams=k,
            tokens=tokens,
            tps=plan.tps,
            ramp=plan.ramp,
            channels=session.channels(k),
            detach_grace=detach_grace,
        )
        for k in session.split(streams)
    ]
    return await session.run(jobs, other)


# ---------------------------------------------------------------------------------------------
# 1. capacity


async def capacity(session: Session) -> list[Row]:
    plan = session.plan
    rows = []
    for i, n in enumerate(plan.capacity_sizes):
        run = await _paced(session, n, plan.capacity_tokens)
        if i == 0:
            session.cache["paced"] = run
        lat = _lat(run)
        records = _records(run)
        lag = schedule(records, plan.tps)
        errors = _errors(records)
        ok = lat.p99 < LATENCY_TARGET and lag["behind"] == 0 and not errors
        gw = run.cpu["gateway"]
        rows.append(
            Row(
                f"1{'abcdefgh'[i]}",
                f"capacity: {n} streams x {plan.tps:g} deltas/s, relay latency",
                f"p50 {ms(lat.p50)}, p99 {ms(lat.p99)}; {lag['behind']}/{n} behind",
                "p99 < 50 ms, none behind" + (" (target: 500 streams)" if n == 500 else ""),
                judged(ok),
                f"offered {n * plan.tps / 1000:.1f}k deltas/s, peak delivered {_peak_rate(run) / 1000:.1f}k/s; "
                f"gateway CPU {pct(gw['util'])} avg, {pct(run.gateway_peak)} peak of its core; "
                f"simulator {pct(run.cpu['upstream']['util'])}, "
                f"clients {pct(run.client_cpu_s / run.wall_s)} of a core; "
                f"unread peak: {_kb(run.backlog.gateway)} at the gateway, {_kb(run.backlog.clients)} at the clients; "
                f"max latency {ms(lat.max)}, worst stream {lag['worst_lag_s']:.2f} s late "
                f"(simulator itself late on {lag['sim_late']}); errors {errors or 'none'}{_others(run)}",
                {
                    "streams": n,
                    "latency_s": lat.as_json(),
                    **lag,
                    "errors": errors,
                    "cpu": run.cpu,
                    "gateway_peak_util": run.gateway_peak,
                    "client_cpu_s": run.client_cpu_s,
                    "wall_s": run.wall_s,
                    "peak_delivered_per_s": _peak_rate(run),
                    "unread_peak_bytes": {"gateway": run.backlog.gateway, "clients": run.backlog.clients},
                    "events": _events(run),
                },
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------
# 2. CPU per relayed event


async def cpu_per_event(session: Session) -> list[Row]:
    """The gateway's CPU per relayed event against the bare SDK reading the same streams straight from
    the simulator, each alone on a core (the gateway on its own, the SDK consumer then on the same core
    while the gateway idles), on the aiohttp transport the gateway runs and on the SDK's default httpx."""
    plan = session.plan
    n, tokens = plan.burst_streams, plan.burst_tokens
    burst = Job(
        "streams", target=session.target, streams=n, tokens=tokens, tps=0, channels=session.channels(n), record=False
    )
    gateway = await session.run([burst])
    rows = []
    for key, http in (("2a", "aiohttp"), ("2a'", "httpx")):
        sdk = Job(
            "sdk_streams", base_url=session.base_url, streams=n, tokens=tokens, tps=0, record=False, http_client=http
        )
        baseline = await session.run([sdk], alone=True)
        rows.append(_cpu_row(key, "burst (unpaced)", http, gateway, baseline, judge=http == "aiohttp"))

    paced = session.cache.get("paced")
    size = plan.capacity_sizes[0]
    if paced is None:
        paced = await _paced(session, size, plan.capacity_tokens)

    def straight(http: str) -> Job:
        """The same paced streams read straight from the simulator: by the SDK on ``http``, or "raw"."""
        return Job(
            "sdk_streams",
            base_url=session.base_url,
            streams=size,
            tokens=plan.capacity_tokens,
            tps=plan.tps,
            ramp=plan.ramp,
            record=False,
            http_client=http,
        )

    for key, http in (("2b", "aiohttp"), ("2b'", "httpx")):
        paced_baseline = await session.run([straight(http)], alone=True)
        what = f"paced ({size} streams x {plan.tps:g}/s)"
        rows.append(_cpu_row(key, what, http, paced, paced_baseline, judge=False))

    floor, floor_target = await session.procs.floor()
    try:
        floor_run = await _paced(session, size, plan.capacity_tokens, (floor, floor_target))
    finally:
        await session.procs.stop(floor)
    rows.append(_floor_row(f"{size} streams x {plan.tps:g}/s", paced, floor_run))
    reads_run = await session.run([straight("raw")], alone=True)
    rows.append(_reading_row(paced, floor_run, reads_run))
    return rows


def _reading_row(gateway: Run, floor: Run, reads: Run) -> Row:
    """What reading the same paced streams costs alone (a bare aiohttp session, nothing parsed, on the
    gateway's core), and the gateway against the sum of that and the grpc.aio floor: the two halves of
    what it does per event, each at its own floor."""
    events = _events(gateway)
    gw_us = gateway.gateway_cpu_s / events * 1e6
    floor_us = floor.gateway_cpu_s / _events(floor) * 1e6
    read_us = reads.client_cpu_s / events * 1e6
    both = floor_us + read_us
    errors = _errors(_records(reads))
    return Row(
        "2d",
        "reading the same paced streams alone (aiohttp, nothing parsed), and the gateway against reading + the floor",
        f"reading {read_us:.1f} us = {read_us / floor_us:.2f}x the floor; gateway {gw_us:.1f} us = "
        f"{gw_us / both:.2f}x reading + floor ({both:.1f} us)",
        "-",
        "info",
        f"one process on the gateway's core reads every stream's body with aiohttp's readany and counts its "
        f"events by their blank lines; {reads.client_cpu_s:.2f} CPU-s over {reads.wall_s:.1f} s; "
        f"errors {errors or 'none'}{_others(reads)}",
        {
            "read_us_per_event": read_us,
            "floor_us_per_event": floor_us,
            "gateway_us_per_event": gw_us,
            "gateway_over_read_plus_floor": gw_us / both,
            "read_cpu_s": reads.client_cpu_s,
            "errors": errors,
        },
    )


def _floor_row(what: str, gateway: Run, floor: Run) -> Row:
    """The gateway's CPU per paced event against grpc.aio's own (``bench.floor``), same streams and pace."""
    gw_events, floor_events = _events(gateway), _events(floor)
    gw_us = gateway.gateway_cpu_s / gw_events * 1e6
    floor_us = floor.gateway_cpu_s / floor_events * 1e6
    messages = sum(rec["messages"] for rec in _records(floor))
    lat = _lat(floor)
    errors = _errors(_records(floor))
    return Row(
        "2c",
        f"gateway CPU per paced event against the grpc.aio floor ({what}; the floor has no upstream)",
        f"{gw_us:.1f} us = {gw_us / floor_us:.2f}x the floor ({floor_us:.1f} us)",
        "<= 1.3x",
        judged(gw_us / floor_us <= 1.3),
        f"bench.floor writes the same streams' events from memory, one gRPC message each, on the same core: "
        f"{floor_events} events in {messages} messages; {floor.cpu['gateway']['cpu_s']:.2f} CPU-s over "
        f"{floor.wall_s:.1f} s ({pct(floor.gateway_peak)} peak); its latency p50 {ms(lat.p50)}, p99 {ms(lat.p99)}; "
        f"errors {errors or 'none'}{_others(floor)}",
        {
            "floor_us_per_event": floor_us,
            "gateway_us_per_event": gw_us,
            "ratio": gw_us / floor_us,
            "floor_cpu": floor.cpu,
            "events": floor_events,
            "messages": messages,
            "latency_s": lat.as_json(),
            "errors": errors,
        },
    )


def _cpu_row(key: str, what: str, http: str, gateway: Run, baseline: Run, *, judge: bool) -> Row:
    """Gateway CPU per event against the SDK consumer's (on transport ``http``), over the same streams.

    Both divide by the events of the gateway run (the SDK consumer sees the same streams but drops
    their pings).
    """
    events = _events(gateway)
    messages = sum(rec["messages"] for rec in _records(gateway))
    gw_us = gateway.gateway_cpu_s / events * 1e6
    base_us = baseline.client_cpu_s / events * 1e6
    ratio = gw_us / base_us
    errors = {**_errors(_records(gateway)), **_errors(_records(baseline))}
    return Row(
        key,
        f"gateway CPU per relayed event, {what}, against the bare SDK on {http}",
        f"{gw_us:.1f} us = {ratio:.2f}x the SDK's {base_us:.1f} us",
        "<= 0.8x" if judge else "-",
        judged(ratio <= 0.8 and not errors) if judge else "info",
        f"{events} events in {messages} gRPC messages ({events / max(messages, 1):.2f} per message); gateway "
        f"{gateway.cpu['gateway']['cpu_s']:.2f} CPU-s over {gateway.wall_s:.1f} s ({pct(gateway.gateway_peak)} peak); "
        f"baseline process {baseline.client_cpu_s:.2f} CPU-s over {baseline.wall_s:.1f} s; errors {errors or 'none'}"
        f"{_others(gateway, 'the gateway run')}{_others(baseline, 'the baseline run')}",
        {
            "events": events,
            "messages": messages,
            "gateway_us_per_event": gw_us,
            "baseline_us_per_event": base_us,
            "baseline_http_client": http,
            "ratio": ratio,
            "gateway_cpu": gateway.cpu,
            "baseline_cpu_s": baseline.client_cpu_s,
            "errors": errors,
        },
    )


# ---------------------------------------------------------------------------------------------
# 3. time to first event, fixed cost per request


async def first_event(session: Session) -> list[Row]:
    plan = session.plan
    run = await session.run([Job("ttfe", target=session.target, base_url=session.base_url, count=plan.ttfe_pairs)])
    (res,) = run.results
    gateway_s = summarize(res["gateway_us"]).scaled(1e-6)
    direct_s = summarize(res["direct_us"]).scaled(1e-6)
    added = summarize([g - d for g, d in zip(res["gateway_us"], res["direct_us"], strict=True)]).scaled(1e-6)
    context = (
        f"{plan.ttfe_pairs} sequential pairs, one-token replies, no other load: via gateway p50 "
        f"{ms(gateway_s.p50)} / p99 {ms(gateway_s.p99)}, direct SDK p50 {ms(direct_s.p50)} / p99 "
        f"{ms(direct_s.p99)}; added = gateway minus direct, pair by pair{_others(run)}"
    )
    data = {"gateway_s": gateway_s.as_json(), "direct_s": direct_s.as_json(), "added_s": added.as_json()}
    rows = [
        Row("3a", "added time to first event, p50", ms(added.p50), "< 1 ms", judged(added.p50 < 0.001), context, data),
        Row("3b", "added time to first event, p99", ms(added.p99), "< 3 ms", judged(added.p99 < 0.003), "", data),
    ]

    tiny = await session.run(
        [Job("tiny", target=session.target, count=plan.tiny_calls, concurrency=plan.tiny_concurrency)]
    )
    bare = await session.run(
        [Job("sdk_tiny", base_url=session.base_url, count=plan.tiny_calls, concurrency=plan.tiny_concurrency)],
        alone=True,
    )
    (res,) = tiny.results
    (bare_res,) = bare.results
    per_call = tiny.cpu["gateway"]["cpu_s"] / plan.tiny_calls
    sdk_per_call = bare.client_cpu_s / plan.tiny_calls
    ratio = per_call / sdk_per_call
    events_per_call = res["events"] / plan.tiny_calls
    errors = {**res["errors"], **bare_res["errors"]}
    rows.append(
        Row(
            "3c",
            "gateway CPU per request (one-token replies) against the bare SDK on aiohttp",
            f"{per_call * 1000:.2f} ms = {ratio:.2f}x the SDK's {sdk_per_call * 1000:.2f} ms",
            "<= 1.2x",
            judged(ratio <= 1.2 and not errors),
            f"{plan.tiny_calls} calls, {plan.tiny_concurrency} at a time, {events_per_call:.0f} events each in "
            f"{res['messages'] / plan.tiny_calls:.1f} gRPC messages, "
            f"{plan.tiny_calls / tiny.wall_s:.0f} calls/s; the gateway's includes serving gRPC and relaying "
            f"those events; the SDK's is one load process calling the simulator alone on the gateway's core; "
            f"errors {errors or 'none'}{_others(tiny)}",
            {
                "cpu_s_per_call": per_call,
                "sdk_cpu_s_per_call": sdk_per_call,
                "ratio": ratio,
                "events_per_call": events_per_call,
                "cpu": tiny.cpu,
                "wall_s": tiny.wall_s,
                "errors": errors,
            },
        )
    )
    floor, floor_target = await session.procs.floor()
    try:
        floor_tiny = await session.run(
            [Job("tiny", target=floor_target, count=plan.tiny_calls, concurrency=plan.tiny_concurrency)],
            (floor, floor_target),
        )
    finally:
        await session.procs.stop(floor)
    (floor_res,) = floor_tiny.results
    floor_per_call = floor_tiny.gateway_cpu_s / plan.tiny_calls
    own = per_call - floor_per_call
    rows.append(
        Row(
            "3d",
            "the same calls served by grpc.aio alone (the floor), and the gateway's CPU per request beyond it",
            f"floor {floor_per_call * 1000:.2f} ms; gateway beyond it {own * 1000:.2f} ms = "
            f"{own / sdk_per_call:.2f}x the bare SDK's request",
            "-",
            "info",
            f"bench.floor answers each one-token call from memory, on the gateway's core, as the gateway does: "
            f"a request id as initial metadata, then {floor_res['messages'] / plan.tiny_calls:.1f} gRPC messages "
            f"of {floor_res['events'] / plan.tiny_calls:.0f} events each; errors {floor_res['errors'] or 'none'}"
            f"{_others(floor_tiny)}",
            {"floor_cpu_s_per_call": floor_per_call, "beyond_floor_s": own, "beyond_over_sdk": own / sdk_per_call},
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------
# 4. memory per open stream


async def memory(session: Session) -> list[Row]:
    plan = session.plan
    n = plan.memory_streams
    gateway, target = await session.procs.gateway(
        session.base_url, {"GATEWAY_MAX_CONCURRENT_STREAMS": str(n + 100)}, name="gateway-memory"
    )
    try:
        # Warm every path first, so that one-off allocations (imports, caches, pools) are not counted.
        await session.run(
            [Job("streams", target=target, streams=50, tokens=20, tps=0, record=False, channels=session.channels(n))],
            (gateway, target),
        )
        await asyncio.sleep(1.0)
        before = rss_bytes(gateway.pid)
        jobs = [
            Job("hold", target=target, streams=k, tokens=3600, tps=1, ramp=plan.ramp * 2, channels=session.channels(k))
            for k in session.split(n)
        ]
        clients = await session.procs.clients(jobs)
        for child in clients:
            await child.send("go")
        for child in clients:
            await child.expect("opened", 120)
        await asyncio.sleep(2.0)
        held = rss_bytes(gateway.pid)
        for child in clients:
            await child.send("release")
        results = [await result(child, 120) for child in clients]
        await asyncio.sleep(1.0)
        after = rss_bytes(gateway.pid)
    finally:
        await session.procs.stop(gateway)
    opened = sum(r["opened"] for r in results)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    per_stream = (held - before) / max(opened, 1)
    return [
        Row(
            "4",
            f"gateway memory per open stream ({n} streams at 1 delta/s)",
            f"{per_stream / 1024:.1f} KB",
            "<= 45 KB",
            judged(per_stream <= 45 * 1024 and opened == n),
            f"RSS {before / 2**20:.1f} MB warm, {held / 2**20:.1f} MB with {opened} streams open, "
            f"{after / 2**20:.1f} MB after they were cancelled; fresh gateway; errors {dict(errors) or 'none'}",
            {
                "rss_before": before,
                "rss_held": held,
                "rss_after": after,
                "opened": opened,
                "per_stream_bytes": per_stream,
            },
        )
    ]


# ---------------------------------------------------------------------------------------------
# 5. overload


async def overload(session: Session) -> list[Row]:
    plan = session.plan
    limit = plan.overload_limit
    gateway, target = await session.procs.gateway(
        session.base_url, {"GATEWAY_MAX_CONCURRENT_STREAMS": str(limit)}, name="gateway-overload"
    )
    tokens = int(plan.overload_seconds * plan.tps)
    quiet_until = plan.ramp + (plan.overload_seconds - plan.ramp) / 3  # seconds after go
    burst_span = (plan.overload_seconds - plan.ramp) / 3
    try:
        admitted = Job(
            "streams",
            target=target,
            streams=limit,
            tokens=tokens,
            tps=plan.tps,
            ramp=plan.ramp,
            channels=session.channels(limit),
        )
        excess = Job(
            "reject", target=target, count=plan.overload_rejects, tokens=1, tps=0, delay=quiet_until, ramp=burst_span
        )
        run = await session.run([admitted, excess], (gateway, target))
    finally:
        await session.procs.stop(gateway)
    streams_res, reject_res = run.results
    quiet = [
        lat
        for t, lat in zip(streams_res["recv_ms"], streams_res["lat_us"], strict=True)
        if plan.ramp * 1000 <= t < quiet_until * 1000
    ]
    during = [
        lat
        for t, lat in zip(streams_res["recv_ms"], streams_res["lat_us"], strict=True)
        if quiet_until * 1000 <= t < (quiet_until + burst_span) * 1000
    ]
    q, d = summarize(quiet).scaled(1e-6), summarize(during).scaled(1e-6)
    rejects = summarize(reject_res["lat_us"]).scaled(1e-6)
    codes = reject_res["codes"]
    all_refused = codes.get("RESOURCE_EXHAUSTED", 0) == plan.overload_rejects
    admitted_errors = _errors(streams_res["records"])
    kept = d.p99 <= max(2 * q.p99, q.p99 + 0.010) and d.p99 < LATENCY_TARGET and not admitted_errors
    rate = plan.overload_rejects / burst_span
    return [
        Row(
            "5a",
            f"overload: excess calls at the limit ({limit}), time to status",
            f"p50 {ms(rejects.p50)}, p99 {ms(rejects.p99)}",
            "RESOURCE_EXHAUSTED at once (p99 < 10 ms)",
            judged(all_refused and rejects.p99 < REJECT_TARGET),
            f"{plan.overload_rejects} calls at {rate:.0f}/s while {limit} admitted streams ran; status codes {codes}",
            {"reject_s": rejects.as_json(), "codes": codes},
        ),
        Row(
            "5b",
            "overload: admitted streams' relay latency p99, quiet -> overload",
            f"{ms(q.p99)} -> {ms(d.p99)}",
            "unchanged: <= max(2x, +10 ms), < 50 ms",
            judged(kept),
            f"p50 {ms(q.p50)} -> {ms(d.p50)}; admitted errors {admitted_errors or 'none'}; gateway CPU "
            f"{pct(run.cpu['gateway']['util'])} avg, {pct(run.gateway_peak)} peak{_others(run)}",
            {"quiet_s": q.as_json(), "overload_s": d.as_json(), "admitted_errors": admitted_errors, "cpu": run.cpu},
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 6. cancel-to-close


async def cancel(session: Session) -> list[Row]:
    """Client cancel -> the upstream connection closed, twice over: when the gateway closes it (its own
    DEBUG line, CLOCK_MONOTONIC like the client's clock) and when the simulator sees it close (on the
    load core, where a scheduler tick can pass before it runs). A fresh gateway, logging at DEBUG."""
    plan = session.plan
    gateway, target = await session.procs.gateway(
        session.base_url, {"GATEWAY_LOG_LEVEL": "DEBUG"}, name="gateway-cancel"
    )
    try:
        await session.records()  # forget earlier requests
        run = await session.run(
            [
                Job(
                    "cancel",
                    target=target,
                    count=plan.cancels,
                    tokens=1000,
                    tps=plan.tps,
                    after_deltas=3,
                    concurrency=plan.cancel_concurrency,
                )
            ],
            (gateway, target),
        )
        await asyncio.sleep(1.0)  # let the last closes happen before asking
        records = await session.records()
    finally:
        await session.procs.stop(gateway)
    closed_at = {rec["tag"]: rec["closed_at"] for rec in records}
    request_ids = {rec["tag"]: rec["request_id"] for rec in records}
    dropped = upstream_closes(gateway.log.read_text(errors="replace"))
    (res,) = run.results
    seen, closed, never = [], [], 0
    for c in res["cancels"]:
        cancel_s = c["cancel_ns"] / 1e9
        at = closed_at.get(c["tag"])
        if at is None:
            never += 1
        else:
            seen.append(at - cancel_s)
        ns = dropped.get(request_ids.get(c["tag"]) or "")
        if ns is not None:
            closed.append(ns / 1e9 - cancel_s)
    gap, sim = summarize(closed), summarize(seen)
    ok = len(closed) == len(res["cancels"]) and never == 0 and not res["errors"]
    return [
        Row(
            "6",
            "cancel-to-close: client cancel -> the gateway closes the upstream connection",
            f"p50 {ms(gap.p50)}, p99 {ms(gap.p99)}; the simulator sees it close p50 {ms(sim.p50)}, p99 {ms(sim.p99)}",
            "p99 <= 2 ms",
            judged(gap.p99 <= 0.002 and ok),
            f"{len(res['cancels'])} streams cancelled after 3 deltas, {plan.cancel_concurrency} at a time; gateway "
            f"max {ms(gap.max)} ({len(closed)} closes in its log), simulator max {ms(sim.max)}; never closed: "
            f"{never}; errors {res['errors'] or 'none'}. Clocks: CLOCK_MONOTONIC in the client, the gateway's "
            f"log and the simulator's loop{_others(run)}",
            {
                "gap_s": gap.as_json(),
                "simulator_gap_s": sim.as_json(),
                "never_closed": never,
                "errors": res["errors"],
            },
        )
    ]


# ---------------------------------------------------------------------------------------------
# 7. workers


async def workers(session: Session) -> list[Row]:
    if "workers" not in {f.name for f in fields(Settings)}:
        return [
            Row(
                "7",
                "workers (GATEWAY_WORKERS)",
                "not implemented",
                "capacity scales with cores",
                "not implemented",
                "server.config.Settings has no `workers` field, so GATEWAY_WORKERS would be ignored; not measured",
            )
        ]
    rows = []
    for key, count in (("7a", 1), ("7b", 2)):
        run = await _unpinned(session, count)
        lat = _lat(run)
        lag = schedule(_records(run), session.plan.tps)
        errors = _errors(_records(run))
        per_worker = [pct(v["util"]) for k, v in run.cpu.items() if k.startswith("gateway-worker")]
        n = session.plan.workers_streams
        rows.append(
            Row(
                key,
                f"workers={count}, gateway unpinned: {n} streams x {session.plan.tps:g} deltas/s, relay latency",
                f"p50 {ms(lat.p50)}, p99 {ms(lat.p99)}; {lag['behind']}/{n} behind",
                "p99 < 50 ms, none behind",
                judged(lat.p99 < LATENCY_TARGET and lag["behind"] == 0 and not errors),
                "gateway free to use both cores, simulator and clients as elsewhere; "
                f"gateway CPU {run.gateway_cpu_s / run.wall_s:.2f} cores avg"
                + (f" (workers {', '.join(per_worker)})" if per_worker else "")
                + f", load side {(run.cpu['upstream']['cpu_s'] + run.client_cpu_s) / run.wall_s:.2f} cores; peak "
                f"delivered {_peak_rate(run) / 1000:.1f}k deltas/s; worst stream {lag['worst_lag_s']:.2f} s late; "
                f"errors {errors or 'none'}{_others(run)}",
                {"workers": count, "latency_s": lat.as_json(), **lag, "cpu": run.cpu, "errors": errors},
            )
        )
    return rows


async def _unpinned(session: Session, count: int) -> Run:
    """``plan.workers_streams`` paced streams through a fresh gateway of ``count`` workers free to use
    every core (the load side stays where it is: with pinning, on CPU 1)."""
    plan = session.plan
    gateway, target = await session.procs.gateway(
        session.base_url, {"GATEWAY_WORKERS": str(count)}, name=f"gateway-workers-{count}", cpus=()
    )
    try:
        # Many connections, so that the kernel's SO_REUSEPORT hashing spreads them evenly over the workers.
        jobs = [
            Job(
                "streams",
                target=target,
                streams=k,
                tokens=plan.capacity_tokens,
                tps=plan.tps,
                ramp=plan.ramp,
                channels=max(1, k // 10),
            )
            for k in session.split(plan.workers_streams)
        ]
        return await session.run(jobs, (gateway, target))
    finally:
        await session.procs.stop(gateway)


async def observability(session: Session) -> list[Row]:
    """What usage, cost, the log line and metrics add per event and per call (``python -m bench.telemetry``)."""
    figures = await asyncio.to_thread(telemetry.measure, session.plan.telemetry_calls, 5)
    per_event = figures[telemetry.SEE_PACED]
    before, off, on = (figures[telemetry.PLAIN_LOG], figures[telemetry.FINISH_OFF], figures[telemetry.FINISH_ON])
    data = {"us": figures}
    return [
        Row(
            "8a",
            "observability CPU per relayed event",
            f"{per_event:.2f} us",
            "< 5 % of row 2",
            "info",
            "usage and the first content delta, noted once per upstream read (one paced delta per read)",
            data,
        ),
        Row(
            "8b",
            "observability CPU per call, metrics off / on",
            f"{off:.1f} / {on:.1f} us (the plain log line before: {before:.1f} us)",
            "< 50 us added (5 % of row 3c's 1 ms)",
            judged(on - before < 50),
            "usage trailer, cost, JSON log line; metrics on adds their update; tracing (off) not included",
            data,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 9. the Messages API (/v1/messages) against gRPC


async def messages_api(session: Session) -> list[Row]:
    """The gateway's CPU per relayed event over /v1/messages (SSE, read raw by aiohttp, nothing parsed)
    against over gRPC: the same streams through the same gateway (its HTTP port on), in turns; burst
    streams (judged) and paced ones (for information)."""
    plan = session.plan
    http = f"127.0.0.1:{free_port()}"
    gateway, target = await session.procs.gateway(
        session.base_url, {"GATEWAY_HTTP_LISTEN": http}, name="gateway-messages-api"
    )

    def jobs(way: str, streams: int, tokens: int, tps: float, ramp: float = 0.0) -> list[Job]:
        if way == "grpc":
            shares = session.split(streams)
            return [
                Job("streams", target=target, streams=k, tokens=tokens, tps=tps, ramp=ramp,
                    channels=session.channels(k), record=False)
                for k in shares
            ]  # fmt: skip
        # The raw reader posts to {base_url}/v1/messages: here the gateway's HTTP port, not the simulator.
        return [
            Job("sdk_streams", base_url=f"http://{http}", streams=k, tokens=tokens, tps=tps, ramp=ramp,
                record=False, http_client="raw")
            for k in session.split(streams)
        ]  # fmt: skip

    async def turns(count: int, *shape: Any) -> dict[str, list[Run]]:
        runs: dict[str, list[Run]] = {"grpc": [], "http": []}
        for _ in range(count):
            runs["grpc"].append(await session.run(jobs("grpc", *shape), (gateway, target)))
            runs["http"].append(await session.run(jobs("http", *shape), (gateway, http)))
        return runs

    try:
        await turns(1, 2, plan.burst_tokens, 0)  # warm both paths: connections, lazy imports
        burst = await turns(MESSAGES_API_TURNS, plan.burst_streams, plan.burst_tokens, 0)
        size = plan.capacity_sizes[0]
        paced = await turns(1, size, plan.capacity_tokens, plan.tps, plan.ramp)
    finally:
        await session.procs.stop(gateway)
    return [
        _messages_api_row("9a", f"{plan.burst_streams} burst streams x {plan.burst_tokens}", burst, judge=True),
        _messages_api_row("9b", f"{size} streams x {plan.tps:g} deltas/s", paced, judge=False),
    ]


def _messages_api_row(key: str, what: str, runs: dict[str, list[Run]], *, judge: bool) -> Row:
    """Row 9's figures for one kind of stream: both ways divide by the events gRPC relayed."""
    events = sum(_events(run) for run in runs["grpc"])
    cpu = {way: sum(run.gateway_cpu_s for run in rs) for way, rs in runs.items()}
    grpc_us, http_us = cpu["grpc"] / events * 1e6, cpu["http"] / events * 1e6
    http_events = sum(_events(run) for run in runs["http"])
    errors = {k: v for rs in runs.values() for run in rs for k, v in _errors(_records(run)).items()}
    ratio = http_us / grpc_us
    ok = ratio <= 1.2 and not errors and http_events >= events
    return Row(
        key,
        f"gateway CPU per relayed event over /v1/messages against over gRPC ({what})",
        f"{http_us:.1f} us = {ratio:.2f}x gRPC's {grpc_us:.1f} us",
        "<= 1.2x" if judge else "-",
        judged(ok) if judge else "info",
        f"one gateway with its HTTP port on, {len(runs['grpc'])} turn(s) of each after a warm-up; {events} events "
        f"per way (the SSE reader counted {http_events}); gateway {cpu['grpc']:.2f} CPU-s over gRPC, "
        f"{cpu['http']:.2f} over HTTP; the clients (aiohttp reading raw; grpc.aio) on the load core; "
        f"errors {errors or 'none'}",
        {
            "events": events,
            "http_events": http_events,
            "grpc_us_per_event": grpc_us,
            "http_us_per_event": http_us,
            "ratio": ratio,
            "grpc_cpu_s": cpu["grpc"],
            "http_cpu_s": cpu["http"],
            "errors": errors,
        },
    )


MESSAGES_API_TURNS = 2  # measured runs of each way, alternating


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a child's second listener, which prints no address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# 10. resumable streams on Redis


async def resumable(session: Session) -> list[Row]:
    """The gateway's CPU per relayed event of resumable streams kept in Redis (one XADD per upstream read) against
    the same paced streams plain, each gateway alone on the gateway's core, in alternating rounds after a
    warm-up round of each (judged on the median of the rounds' ratios, which other load on a shared machine
    moves less than the totals); and what Redis keeps per retained stream (used_memory before and after a
    round, over its streams)."""
    import redis.asyncio as aioredis  # the benchmark's other scenarios need no Redis client

    plan = session.plan
    size, tokens = plan.capacity_sizes[0], plan.capacity_tokens
    redis_child, port = await session.procs.redis()
    url = f"redis://127.0.0.1:{port}/0"
    store = await session.procs.gateway(session.base_url, env={"GATEWAY_REDIS_URL": url}, name="gateway-redis")
    client = aioredis.Redis.from_url(url)
    plain: list[Run] = []
    kept: list[Run] = []
    per_stream: list[float] = []
    redis_cpu = 0.0
    try:
        await _paced(session, size, tokens)  # warm-up: connections, caches, the allocator's arenas
        await _paced(session, size, tokens, store, detach_grace=60)
        for _ in range(plan.resumable_rounds):
            plain.append(await _paced(session, size, tokens))
            memory, cpu = await client.info("memory"), await client.info("cpu")
            kept.append(await _paced(session, size, tokens, store, detach_grace=60))
            memory_after, cpu_after = await client.info("memory"), await client.info("cpu")
            per_stream.append((memory_after["used_memory"] - memory["used_memory"]) / size)
            redis_cpu += sum(cpu_after[k] - cpu[k] for k in ("used_cpu_sys", "used_cpu_user"))
        entries, keys_bytes = [], 0  # what each retained stream's keys hold, by MEMORY USAGE (exact: SAMPLES 0)
        async for key in client.scan_iter(match="claude-gateway:stream:*"):
            keys_bytes += await client.memory_usage(key, samples=0) or 0
            if key.endswith(b":events"):
                entries.append(await client.xlen(key))
    finally:
        await client.aclose()
        await session.procs.stop(store[0])
        await session.procs.stop(redis_child)
    plain_events, kept_events = sum(map(_events, plain)), sum(map(_events, kept))
    plain_us = sum(r.gateway_cpu_s for r in plain) / plain_events * 1e6
    kept_us = sum(r.gateway_cpu_s for r in kept) / kept_events * 1e6
    pairs = [
        (r.gateway_cpu_s / _events(r) * 1e6, k.gateway_cpu_s / _events(k) * 1e6)
        for r, k in zip(plain, kept, strict=True)
    ]
    rounds = [f"{p:.1f}/{k:.1f}" for p, k in pairs]
    ratio = sorted(k / p for p, k in pairs)[len(pairs) // 2]
    errors = {**_errors([x for r in plain for x in _records(r)]), **_errors([x for r in kept for x in _records(r)])}
    events_per_stream = kept_events / (size * len(kept))
    stream_bytes = sorted(per_stream)[len(per_stream) // 2]
    key_bytes = keys_bytes / max(len(entries), 1)
    return [
        Row(
            "10a",
            f"CPU per relayed event, resumable streams in Redis vs plain ({size} x {plan.tps:g}/s)",
            f"{kept_us:.1f} us against {plain_us:.1f} us plain: {ratio:.2f}x (median of the rounds)",
            "<= 1.15x",
            judged(ratio <= 1.15 and not errors),
            f"{len(kept)} alternating rounds, plain/resumable us per event: {', '.join(rounds)}; Redis's own CPU "
            f"{redis_cpu / kept_events * 1e6:.1f} us per event; errors {errors or 'none'}",
            {
                "plain_us": plain_us,
                "resumable_us": kept_us,
                "ratio": ratio,
                "rounds": pairs,
                "redis_cpu_s": redis_cpu,
                "errors": errors,
            },
        ),
        Row(
            "10b",
            "Redis memory per retained stream",
            f"{stream_bytes / 1024:.1f} KB per stream of {events_per_stream:.0f} events "
            f"({stream_bytes / events_per_stream:.0f} bytes per event); its keys {key_bytes / 1024:.1f} KB",
            "-",
            "info",
            f"used_memory over each round / its {size} streams: {', '.join(f'{b / 1024:.1f}' for b in per_stream)} KB; "
            f"MEMORY USAGE of the keys of the {len(entries)} streams retained at the end: {key_bytes:.0f} bytes each; "
            f"entries per stream {min(entries, default=0)}-{max(entries, default=0)} (one per upstream read, "
            "and the end)",
            {
                "bytes_per_stream": per_stream,
                "key_bytes_per_stream": key_bytes,
                "events_per_stream": events_per_stream,
                "entries": entries,
            },
        ),
    ]


SCENARIOS: dict[str, Callable[[Session], Awaitable[list[Row]]]] = {
    "1": capacity,
    "2": cpu_per_event,
    "3": first_event,
    "4": memory,
    "5": overload,
    "6": cancel,
    "7": workers,
    "8": observability,
    "9": messages_api,
    "10": resumable,
    "11": backends,
    "12": sweep,
    "13": baseline,
}

NAMES = {
    "1": "capacity",
    "2": "CPU per event",
    "3": "time to first event",
    "4": "memory per stream",
    "5": "overload",
    "6": "cancel-to-close",
    "7": "workers",
    "8": "observability cost",
    "9": "Messages API CPU per event",
    "10": "resumable streams on Redis",
    "11": "backends file: failover, Bedrock, one backend",
    "12": "the public stream method (concurrency sweep)",
    "13": "the server against earlier commits",
}
