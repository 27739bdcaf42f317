"""Row 13: the gateway's code as it stands against its code at earlier commits, in the same run.

Rows 2b and 3c compare the gateway with a bare SDK reader; across runs on this shared host those
ratios move by several percent (the host's speed does). What a change of the server's code cost per
call or per event is measured here instead, with the code before it as the baseline, in one run: each
commit of ``STEPS`` is read out of the repository's history (``git archive``) into a temporary
directory, and its ``python -m server`` runs from there on the gateway's core, beside the code as it
stands, against the same stamping simulator. One gateway is measured at a time, the others idle,
alternating the order, ``plan.baseline_rounds`` rounds:

- 13a, CPU per one-token call: row 3c's calls (``plan.tiny_calls``, ``plan.tiny_concurrency`` at a time),
  through every step of ``STEPS``, and through the first and the last at ``GATEWAY_LOG_LEVEL=WARNING`` (no
  JSON line per call: ``QUIET``);
- 13b, CPU per relayed event: row 2b's paced streams (``plan.capacity_sizes[0]`` x ``plan.tps``);
- 13c, cancel-to-close: row 6's cancelled streams, each gateway logging at DEBUG, the closes read from its log.
  A second gateway of the code before the restructuring (``AGAIN``) runs in the same rounds: how far the same
  code's p99 moves in one run is that pair's ratio, and the budget is judged against it where it is wider.

13b and 13c run the code before the restructuring (``BEFORE``), its last commit (``RESTRUCTURED``) and the
code as it stands. 13a and 13b give medians of per-round ratios; 13c the p50 and p99 of every round's closes
together. The budget (within 5%) is the restructured server's against the code before it; the code as it
stands is given against both, and 13a gives what each later step added to a call, in the order they landed.
A p99 of a thousand closes on a shared core moves by more than 5% between two processes of the same code, so
13c's budget is the wider of 5% and that same-run spread (``cancel_budget``).

A clone without that history (a shallow one) gets a row saying so instead.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.jobs import Job
from bench.processes import ROOT, Child
from bench.report import Row, judged, ms
from bench.session import Run, Session, alternating
from bench.stamps import upstream_closes
from bench.stats import summarize

BEFORE = "44e4781"  # the last commit before the server was grouped into ports, call, upstream, limits, reporting
RESTRUCTURED = "ff25f0c"  # the last commit of that restructuring, before the features landed after it
NOW = "now"
# The way from BEFORE to the code as it stands, in the order it landed: each step's name, its commit (None: the
# code as it stands) and what it brought to a call's path. 13a measures every step; 13b and 13c the first two
# and the last.
STEPS: tuple[tuple[str, str | None, str], ...] = (
    ("before", BEFORE, "the code before the restructuring"),
    ("restructured", RESTRUCTURED, "the restructuring (ports, call, upstream, limits, reporting)"),
    ("prices", "e45e5cb", "prices from genai-prices by the model that served, spend budgets, the JSON log format"),
    ("hardening", "efbbf58", "the body policy, admission before the body is read, the request-body budget"),
    ("pool", "765e6d4", "the pool of keys and backends"),
    ("resumable", "9765563", "every stream named and numbered (resumable streams)"),
    (NOW, None, "the upstream usage check, the secret scan of each read, drain refusals, and this round's savings"),
)
ENDS = ("before", "restructured", NOW)
# 13a also runs the first and the last step with the log at WARNING, so without the JSON line each call writes
# at INFO: what the features cost beside the line, and what the line costs on its own.
QUIET = {"before": "before-no-call-line", NOW: "now-no-call-line"}
AGAIN = "before-again"  # 13c: a second process of BEFORE, the same-run spread of identical code
BUDGET = 1.05
CLOSE_WAIT = 10.0  # seconds the last closes of a cancel run may take to reach the gateway's log: a hang guard
START_TIMEOUT = 300.0  # seconds a gateway may take to start on a busy machine: a hang guard


def _extract(commit: str, into: Path) -> None:
    """The files of ``commit`` (server/, client/ and the rest) under ``into``."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def _known(commit: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
    return found.returncode == 0


async def _gateway(session: Session, name: str, root: Path | None, **settings: str) -> tuple[Child, str]:
    """``python -m server`` of the code under ``root`` (None: as it stands) on the gateway's core, with the
    settings ``Processes.gateway`` gives and ``settings``."""
    procs = session.procs
    env = {
        "ANTHROPIC_BASE_URL": session.base_url,
        "ANTHROPIC_API_KEY": "bench",
        "GATEWAY_LISTEN": "127.0.0.1:0",
        **settings,
    }
    if root is not None:
        # Ahead of the editable installs of the code as it stands: that commit's server and its client.
        env["PYTHONPATH"] = f"{root}:{root / 'client'}"
    child = await procs.spawn(
        f"gateway-{name}", [sys.executable, "-m", "server"], cpus=procs.gateway_cpus, env=env, cwd=root
    )
    return child, (await child.expect("gateway listening on ", START_TIMEOUT)).split()[0]


@dataclass
class _Measure:
    key: str
    what: str
    unit: str
    jobs: Callable[[str], list[Job]]
    per: Callable[[Run], float]


async def _rounds(
    session: Session, measure: _Measure, gateways: dict[str, tuple[Child, str]], rounds: int
) -> tuple[dict[str, list[float]], list[str]]:
    errors: list[str] = []

    async def one(gateway: Child, target: str) -> float:
        run = await session.run(measure.jobs(target), (gateway, target))
        errors.extend(run.errors)
        return measure.per(run)

    return await alternating(gateways, rounds, one), errors


def _ratio(values: dict[str, list[float]], of: str, to: str) -> tuple[float, list[float]]:
    ratios = [a / b for a, b in zip(values[of], values[to], strict=True)]
    return statistics.median(ratios), ratios


def _row(measure: _Measure, values: dict[str, list[float]], errors: list[str]) -> Row:
    """The restructured server against the code before it (the budget), the code as it stands against both,
    and, where ``values`` has every step, what each step added to the one before it."""
    us = {name: statistics.median(v) * 1e6 for name, v in values.items()}
    restructured, restructured_ratios = _ratio(values, "restructured", "before")
    now, now_ratios = _ratio(values, NOW, "before")
    since, since_ratios = _ratio(values, NOW, "restructured")
    names = [name for name, _, _ in STEPS if name in values]
    steps = {later: _ratio(values, later, earlier)[0] for earlier, later in itertools.pairwise(names)}
    if len(names) == len(STEPS):
        what = {name: brought for name, _, brought in STEPS}
        chain = "each step against the one before it (median of the per-round ratios): " + "; ".join(
            f"{name} {ratio:.3f}x ({what[name]})" for name, ratio in steps.items()
        )
    else:
        chain = f"what the code as it stands adds beyond {RESTRUCTURED}: every later step of 13a"
    quiet: dict[str, float] = {}
    if all(name in values for name in QUIET.values()):
        quiet = {
            "now": _ratio(values, QUIET[NOW], QUIET["before"])[0],
            "line_before": _ratio(values, "before", QUIET["before"])[0],
            "line_now": _ratio(values, NOW, QUIET[NOW])[0],
        }
        chain += (
            f". With no call line on either (GATEWAY_LOG_LEVEL=WARNING), the code as it stands is {quiet['now']:.3f}x "
            f"{BEFORE}; the call line costs {quiet['line_before']:.3f}x a call without it in {BEFORE} and "
            f"{quiet['line_now']:.3f}x in the code as it stands"
        )
        names += list(QUIET.values())
    rounds = "; ".join(f"{name} " + "/".join(f"{v * 1e6:.1f}" for v in values[name]) for name in names)
    return Row(
        measure.key,
        f"{measure.what}: the restructured server ({RESTRUCTURED}) against the code before it ({BEFORE})",
        f"{restructured:.2f}x ({us['restructured']:.1f} against {us['before']:.1f} us {measure.unit}); the code as it "
        f"stands {us[NOW]:.1f} us, {now:.2f}x {BEFORE} and {since:.2f}x {RESTRUCTURED} (medians of "
        f"{len(values[NOW])} rounds)",
        f"<= {BUDGET:.2f}x",
        judged(restructured <= BUDGET and not errors),
        f"{chain}. Per round, us {measure.unit}: {rounds}; errors {errors[:3] or 'none'}",
        {
            "restructured_ratio": restructured,
            "now_ratio": now,
            "since_ratio": since,
            "steps": steps,
            "without_call_line": quiet,
            "ratios": {"restructured": restructured_ratios, "now": now_ratios, "since": since_ratios},
            "values": values,
            "errors": errors[:10],
        },
    )


async def _gateways(session: Session, roots: dict[str, Path | None], **settings: str) -> dict[str, tuple[Child, str]]:
    return {name: await _gateway(session, name, root, **settings) for name, root in roots.items()}


async def _stop(session: Session, gateways: dict[str, tuple[Child, str]]) -> None:
    for gateway, _ in gateways.values():
        await session.procs.stop(gateway)


async def _cancel_gaps(session: Session, gateway: Child, target: str) -> tuple[list[float], list[str]]:
    """Seconds from each client cancel to the gateway's log line closing that upstream response (row 6's
    ``gap``), and what went wrong."""
    plan = session.plan
    await session.records()  # forget earlier requests
    job = Job("cancel", target=target, count=plan.cancels, tokens=1000, tps=plan.tps, after_deltas=3,
              concurrency=plan.cancel_concurrency)  # fmt: skip
    run = await session.run([job], (gateway, target))
    request_ids = {rec["tag"]: rec["request_id"] for rec in await session.records()}
    (res,) = run.results
    wanted = [(c["cancel_ns"], request_ids.get(c["tag"], "")) for c in res["cancels"]]
    deadline = time.monotonic() + CLOSE_WAIT
    while True:  # the last closes may be logged after the client is done: wait for them, within a bound
        closes = upstream_closes(gateway.log.read_text(errors="replace"))
        if all(rid in closes for _, rid in wanted) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    gaps = [(closes[rid] - ns) / 1e9 for ns, rid in wanted if rid in closes]
    never = len(wanted) - len(gaps)
    return gaps, [f"{never} never closed"] * bool(never) + list(res["errors"])


def cancel_budget(same: float) -> float:
    """13c's budget for a p99 ratio, given ``same``, the p99 ratio of two processes of the same code in the same
    run: within 5%, or within how far the same code moved, whichever is wider."""
    return max(BUDGET, same, 1 / same)


def _cancel_row(gaps: dict[str, list[float]], errors: list[str], rounds: int) -> Row:
    found = {name: summarize(values) for name, values in gaps.items()}
    before, again, restructured, now = found["before"], found[AGAIN], found["restructured"], found[NOW]
    ratio, same = restructured.p99 / before.p99, again.p99 / before.p99
    budget = cancel_budget(same)
    return Row(
        "13c",
        f"cancel-to-close p50/p99: the restructured server ({RESTRUCTURED}) against the code before it ({BEFORE})",
        f"{ms(restructured.p50)} / {ms(restructured.p99)} against {ms(before.p50)} / {ms(before.p99)}: p99 "
        f"{ratio:.2f}x; a second process of {BEFORE} {ms(again.p50)} / {ms(again.p99)}, p99 {same:.2f}x; the code "
        f"as it stands {ms(now.p50)} / {ms(now.p99)}, p99 {now.p99 / before.p99:.2f}x ({rounds} rounds together)",
        f"p99 <= {BUDGET:.2f}x, or the same code's spread",
        judged(ratio <= budget and not errors),
        f"budget in this run {budget:.2f}x; {sum(len(v) for v in gaps.values())} closes; max {ms(before.max)}, "
        f"{ms(again.max)}, {ms(restructured.max)}, {ms(now.max)}; errors {errors[:3] or 'none'}",
        {"gaps_s": {name: summary.as_json() for name, summary in found.items()}, "p99_ratio": ratio,
         "same_code_p99_ratio": same, "budget": budget, "errors": errors[:10]},
    )  # fmt: skip


async def baseline(session: Session) -> list[Row]:
    plan = session.plan
    missing = [commit for _, commit, _ in STEPS if commit is not None and not _known(commit)]
    if missing:
        return [Row("13", "the server against earlier commits", "not run", "", "info",
                    f"this clone lacks {', '.join(missing)} (a shallow clone?)")]  # fmt: skip
    n = plan.capacity_sizes[0]

    def paced(target: str) -> list[Job]:
        return [
            Job("streams", target=target, streams=k, tokens=plan.capacity_tokens, tps=plan.tps, ramp=plan.ramp,
                channels=session.channels(k))
            for k in session.split(n)
        ]  # fmt: skip

    def events(run: Run) -> float:
        count: int = sum(rec["events"] for r in run.results for rec in r["records"])
        return run.gateway_cpu_s / max(count, 1)

    measures = [
        _Measure(
            "13a",
            f"CPU per one-token call ({plan.tiny_concurrency} at a time)",
            "per call",
            lambda target: [Job("tiny", target=target, count=plan.tiny_calls, concurrency=plan.tiny_concurrency)],
            lambda run: run.gateway_cpu_s / plan.tiny_calls,
        ),
        _Measure("13b", f"CPU per relayed event ({n} x {plan.tps:g}/s)", "per event", paced, events),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch:
        roots: dict[str, Path | None] = {}
        for name, commit, _ in STEPS:
            roots[name] = None if commit is None else Path(scratch) / commit
            if commit is not None:
                await asyncio.to_thread(_extract, commit, Path(scratch) / commit)
        gateways = await _gateways(session, roots)
        quiet = {QUIET[name]: roots[name] for name in QUIET}
        gateways |= await _gateways(session, quiet, GATEWAY_LOG_LEVEL="WARNING")
        try:
            for measure in measures:
                measured = gateways if measure.key == "13a" else {name: gateways[name] for name in ENDS}
                try:
                    values, errors = await _rounds(session, measure, measured, plan.baseline_rounds)
                    rows.append(_row(measure, values, errors))
                except Exception as exc:
                    rows.append(Row(measure.key, measure.what, "error", "", "error", f"{type(exc).__name__}: {exc}"))
        finally:
            await _stop(session, gateways)
        cancelling = {name: roots[name] for name in ENDS} | {AGAIN: roots["before"]}
        gateways = await _gateways(session, cancelling, GATEWAY_LOG_LEVEL="DEBUG")
        try:
            rounds = await alternating(gateways, plan.baseline_rounds, lambda *gateway: _cancel_gaps(session, *gateway))
            gaps = {name: [gap for found, _ in each for gap in found] for name, each in rounds.items()}
            wrong = [f"{name}: {error}" for name, each in rounds.items() for _, errors in each for error in errors]
            rows.append(_cancel_row(gaps, wrong, plan.baseline_rounds))
        except Exception as exc:
            rows.append(Row("13c", "cancel-to-close", "error", "", "error", f"{type(exc).__name__}: {exc}"))
        finally:
            await _stop(session, gateways)
    return rows
