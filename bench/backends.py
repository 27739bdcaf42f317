"""Row 11: what a backends file (``GATEWAY_BACKENDS_FILE``) costs, each figure against its budget.

Its own plain simulator (``python -m simulator``, on the load CPU: it speaks the Messages API and
Bedrock, and its text is the same on both) and four gateways on the gateway's CPU, all idle but the
ones measured:

- ``failover``: an ``anthropic`` backend, then a ``bedrock`` one (SigV4, keys in files);
- ``bedrock`` and ``anthropic``: that backend alone;
- ``default``: no backends file (``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``), as before issue 24.

11a, failover: sequential one-token StreamMessage calls, in rounds. Each round waits out the back-off
the last round's 529 gave the primary's platform (a second) and makes one call the primary serves (which
closes that circuit, so the next failover call tries the primary again), then, in alternating order,
(1) the call whose prompt makes the primary answer 529 (``[[sim@anthropic:http_error 529]]``) through
``failover``, served by bedrock, (2) the same call through ``bedrock``, straight to the healthy backend,
and (3) the failed attempt on its own: the same request to the primary with the SDK on the gateway's own
HTTP transport, from the call to its 529. The failover's cost is (1) - (2) - (3) per round: what the
gateway adds to fail over, beyond the failed attempt itself, taken as the difference of the three medians.
Budget: at most 2 ms.

11b-11e compare two gateways, each round running the same job against both at once (``Session.together``:
their clients released together, both gateways on the gateway's core and metered over the same seconds), so
that the host's speed, which moves from second to second on this shared machine, is the same for both; each
row is the median of ``plan.backends_rounds`` per-round ratios.

11b, Bedrock's event-stream path: ``plan.burst_streams`` unpaced streams through ``bedrock`` and through
``anthropic``; in each round each gateway relays the streams twice, with twice ``plan.burst_tokens`` deltas
each and with a tenth of that. The gateway's CPU per relayed event is the difference of the two runs' CPU
over the difference of their events: the cost of one more event (the upstream's bytes in, the caller's gRPC
out), with what each call costs once (the request, its signing, the first and last events) cancelled out. The
short run is short so that the difference is most of the long one. Budget: Bedrock at most 1.2x Anthropic.
The row also gives the longer runs' CPU over all their events, per-call costs in.

11e, what a Bedrock call costs once: ``plan.tiny_calls`` one-token calls through ``bedrock`` and
``anthropic``; the gateway's CPU per call (SigV4 signing, which the SDK does with botocore on a worker
thread, is the difference). No budget: it is what 11b's first figure carries beyond the second.

11c and 11d, the one-backend setup: the same streams, and ``plan.tiny_calls`` one-token calls
(``plan.tiny_concurrency`` at a time, the fixed cost of a call), through ``anthropic`` (a one-backend
file) and ``default`` (none). Budget: within 5% of ``default``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from claude_gateway.client import stream_request
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import USAGE_KEY

from bench.jobs import Job
from bench.plan import Plan
from bench.processes import Child, ChildError, Processes
from bench.report import Row, judged
from bench.session import Run, Session
from bench.workload import MODEL
from server.upstream.state import CIRCUIT_BASE

KEY = "sk-ant-bench-backends"
AWS_ID, AWS_SECRET = "AKIABENCHBACKENDS001", "bench-backends-aws-secret"
NAME = "backends file"
BEDROCK_MODEL = "anthropic.claude-sonnet-4-6-v1:0"
FAILS = "[[sim@anthropic:http_error 529]]"
FAILOVER_BUDGET = 0.002  # seconds
BEDROCK_BUDGET = 1.2
ONE_BACKEND_BUDGET = 1.05
START_TIMEOUT = 300.0  # seconds a child may take to start: a hang guard

T = TypeVar("T")


def _body(prompt: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": f"[[sim:tokens 1]] {prompt}"}]}


def backends_files(logs: Path, base_url: str) -> dict[str, Path]:
    """The backends files of the four gateways (``default`` has none), their credentials in files."""
    secrets = {"key": KEY, "aws-id": AWS_ID, "aws-secret": AWS_SECRET}
    for name, secret in secrets.items():
        (logs / f"backends-{name}").write_text(secret + "\n")
    anthropic = {"name": "anthropic", "kind": "anthropic", "base_url": base_url,
                 "keys": [{"file": str(logs / "backends-key")}]}  # fmt: skip
    bedrock = {
        "name": "bedrock",
        "kind": "bedrock",
        "base_url": base_url,
        "region": "us-east-1",
        "aws_access_key_id": {"file": str(logs / "backends-aws-id")},
        "aws_secret_access_key": {"file": str(logs / "backends-aws-secret")},
        "models": {MODEL: BEDROCK_MODEL},
    }
    layouts = {"failover": [anthropic, bedrock], "bedrock": [bedrock], "anthropic": [anthropic]}
    paths = {}
    for name, entries in layouts.items():
        path = logs / f"backends-{name}.yaml"
        path.write_text(yaml.safe_dump({"backends": entries}, sort_keys=False))
        paths[name] = path
    return paths


async def backends_simulator(procs: Processes) -> tuple[Child, str]:
    """The plain simulator (``python -m simulator``) on the load CPU, knowing row 11's keys; and its base URL."""
    child = await procs.spawn(
        "backends-simulator", [sys.executable, "-m", "simulator", "--port", "0", "--key", KEY, "--key", AWS_ID],
        cpus=procs.load_cpus,
    )  # fmt: skip
    return child, (await child.expect("simulator listening on ", START_TIMEOUT)).split()[0]


async def _gateway(session: Session, name: str, env: dict[str, str]) -> tuple[Child, str]:
    """``python -m server`` on the gateway's CPU, as ``Processes.gateway`` starts one, given as long to start as a
    busy machine needs (a Python process importing the gateway there has taken more than the 30 s a child
    is otherwise given)."""
    procs = session.procs
    argv = [sys.executable, "-m", "server"]
    child = await procs.spawn(
        f"gateway-{name}", argv, cpus=procs.gateway_cpus, env={"GATEWAY_LISTEN": "127.0.0.1:0", **env}
    )
    return child, (await child.expect("gateway listening on ", START_TIMEOUT)).split()[0]


async def _timed(stub: chat_pb2_grpc.ChatServiceStub, prompt: str) -> tuple[float, dict[str, Any]]:
    """Seconds of one StreamMessage call, from the call to its trailer, and its usage report."""
    started = time.perf_counter()
    call = stub.StreamMessage(stream_request(_body(prompt)), timeout=30)
    async for _ in call:
        pass
    trailer = dict(await call.trailing_metadata())
    return time.perf_counter() - started, json.loads(trailer[USAGE_KEY])


async def _failed_attempt(client: Any) -> float:
    """Seconds of the primary's 529 to the same request, asked with the gateway's own SDK transport."""
    import anthropic

    started = time.perf_counter()
    try:
        stream = await client.messages.create(**_body(f"again {FAILS}"), stream=True)
    except anthropic.APIStatusError as error:
        if error.status_code != 529:
            raise
        return time.perf_counter() - started
    await stream.close()
    raise RuntimeError("the primary served a call meant to fail")


async def failover_rounds(targets: dict[str, str], base_url: str, rounds: int) -> dict[str, Any]:
    """11a's samples: per round, the failover call, the direct call and the failed attempt (seconds)."""
    from server.app import sdk_client
    from server.config import Settings

    channels = {name: grpc.aio.insecure_channel(target) for name, target in targets.items()}
    stubs = {name: chat_pb2_grpc.ChatServiceStub(channel) for name, channel in channels.items()}
    client = sdk_client(Settings(), base_url=base_url, api_key=KEY, max_retries=0)
    samples: dict[str, list[float]] = {"failover": [], "direct": [], "attempt": []}
    wrong: list[str] = []
    try:
        for i in range(rounds + 10):  # the first 10 rounds warm connections, imports and caches
            # The last round's 529 backed the primary's platform off for CIRCUIT_BASE seconds: once that has
            # passed, a call the primary serves closes the circuit (its next 529 backs it off afresh).
            await asyncio.sleep(CIRCUIT_BASE + 0.05)
            _, warm = await _timed(stubs["failover"], "again")
            if warm["backend"] != "anthropic":
                wrong.append(f"a plain call was served by {warm['backend']}")
            steps = ["failover", "direct", "attempt"]
            if i % 2:
                steps.reverse()
            seconds: dict[str, float] = {}
            for step in steps:
                if step == "attempt":
                    seconds[step] = await _failed_attempt(client)
                    continue
                seconds[step], report = await _timed(stubs[step if step == "failover" else "bedrock"], f"again {FAILS}")
                failed_over = [f["reason"] for f in report["failovers"]]
                expected = ["overloaded"] if step == "failover" else []
                if report["backend"] != "bedrock" or failed_over != expected:
                    wrong.append(f"{step}: served by {report['backend']}, failovers {failed_over}")
            if i >= 10:
                for step, value in seconds.items():
                    samples[step].append(value)
    finally:
        await client.close()
        await asyncio.gather(*(channel.close() for channel in channels.values()))
    return {**samples, "wrong": wrong}


def _events(run: Run) -> int:
    return sum(rec["events"] for r in run.results for rec in r["records"])


def _per_event(run: Run) -> float:
    return float(run.gateway_cpu_s) / max(_events(run), 1)


async def _together(
    session: Session,
    jobs: tuple[Job, ...],
    gateways: dict[str, tuple[Child, str]],
    rounds: int,
    measure: Callable[[list[Run]], T],
) -> tuple[dict[str, list[T]], list[str]]:
    """``measure`` of each gateway's runs of ``jobs``, ``rounds`` times; each job runs against every gateway at
    once (``Session.together``), the jobs one after another. The errors the runs saw come second."""
    errors: list[str] = []
    values: dict[str, list[T]] = {name: [] for name in gateways}
    for _ in range(rounds):
        done: dict[str, list[Run]] = {name: [] for name in gateways}
        for job in jobs:
            runs = await _run(session, {name: (replace(job, target=target), (gateway, target))
                                        for name, (gateway, target) in gateways.items()})  # fmt: skip
            for name, run in runs.items():
                done[name].append(run)
                errors.extend(run.errors)
        for name, each in done.items():
            values[name].append(measure(each))
    return values, errors


def _beyond(runs: list[Run]) -> tuple[float, float]:
    """The CPU per event of the second run beyond the first (the same streams, more events), and over all of its."""
    (cpu_short, events_short), (cpu_long, events_long) = ((run.gateway_cpu_s, _events(run)) for run in runs)
    return (cpu_long - cpu_short) / max(events_long - events_short, 1), cpu_long / max(events_long, 1)


async def _run(session: Session, jobs: dict[str, tuple[Job, tuple[Child, str]]]) -> dict[str, Run]:
    """``session.together`` of these jobs, started again (up to twice) when a load client is too slow to start:
    on a machine this busy a Python process can take more than the 30 s a child is given to say it is ready."""
    for attempt in range(3):
        try:
            return await session.together(jobs)
        except ChildError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _ratio_row(
    key: str,
    what: str,
    values: dict[str, list[float]],
    of: str,
    to: str,
    budget: float | None,
    unit: str,
    errors: list[str],
) -> Row:
    """The median of the per-round ratios of ``of`` to ``to``, judged against ``budget`` (None: no budget)."""
    ratios = [a / b for a, b in zip(values[of], values[to], strict=True)]
    ratio = statistics.median(ratios)
    mine, theirs = statistics.median(values[of]) * 1e6, statistics.median(values[to]) * 1e6
    rounds = ", ".join(f"{a * 1e6:.1f}/{b * 1e6:.1f}" for a, b in zip(values[of], values[to], strict=True))
    return Row(
        key,
        what,
        f"{mine:.1f} us against {theirs:.1f} us {unit}: {ratio:.2f}x (median of {len(ratios)} rounds)",
        "-" if budget is None else f"<= {budget:.2f}x",
        ("info" if not errors else "FAIL") if budget is None else judged(ratio <= budget and not errors),
        f"{of}/{to} us {unit} per round: {rounds}; errors {errors[:3] or 'none'}",
        {"ratio": ratio, "ratios": ratios, of: values[of], to: values[to], "errors": errors[:10]},
    )


async def backends(session: Session) -> list[Row]:
    plan, procs = session.plan, session.procs
    sim, base_url = await backends_simulator(procs)
    paths = backends_files(procs.logs, base_url)
    gateways: dict[str, tuple[Child, str]] = {}
    try:
        for name, path in paths.items():
            gateways[name] = await _gateway(session, name, {"GATEWAY_BACKENDS_FILE": str(path)})
        gateways["default"] = await _gateway(
            session, "default", {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": KEY}
        )

        rows = await _section("11a", lambda: _failover_row(plan, gateways, base_url))
        n, tokens = plan.burst_streams, plan.burst_tokens
        burst = Job("streams", streams=n, tokens=tokens, tps=0, channels=session.channels(n), record=False)
        bedrock_pair = {name: gateways[name] for name in ("bedrock", "anthropic")}
        one_pair = {name: gateways[name] for name in ("anthropic", "default")}
        tiny = Job("tiny", count=plan.tiny_calls, concurrency=plan.tiny_concurrency)

        def per_call(runs: list[Run]) -> float:
            return float(runs[0].gateway_cpu_s) / plan.tiny_calls

        async def bedrock_row() -> list[Row]:
            long = replace(burst, tokens=2 * tokens)
            short = replace(burst, tokens=long.tokens // 10)
            pairs, errors = await _together(session, (short, long), bedrock_pair, plan.backends_rounds, _beyond)
            values = {name: [beyond for beyond, _ in each] for name, each in pairs.items()}
            whole = {name: [all_events for _, all_events in each] for name, each in pairs.items()}
            what = (
                f"CPU per event, Bedrock event-stream vs Anthropic SSE ({n} x {long.tokens} less {n} x {short.tokens})"
            )
            row = _ratio_row("11b", what, values, "bedrock", "anthropic", BEDROCK_BUDGET, "per event", errors)
            ratios = [a / b for a, b in zip(whole["bedrock"], whole["anthropic"], strict=True)]
            row.result += (
                f"; over all events, per-call costs in: {statistics.median(whole['bedrock']) * 1e6:.1f} against "
                f"{statistics.median(whole['anthropic']) * 1e6:.1f} us, {statistics.median(ratios):.2f}x"
            )
            row.data["whole"] = {**whole, "ratios": ratios}
            return [row]

        async def bedrock_calls() -> list[Row]:
            values, errors = await _together(session, (tiny,), bedrock_pair, plan.backends_rounds, per_call)
            what = f"CPU per one-token call, Bedrock (SigV4) vs Anthropic ({plan.tiny_concurrency} at a time)"
            return [_ratio_row("11e", what, values, "bedrock", "anthropic", None, "per call", errors)]

        async def one_backend_rows() -> list[Row]:
            values, errors = await _together(
                session, (burst,), one_pair, plan.backends_rounds, lambda runs: _per_event(runs[0])
            )
            what = f"CPU per event, a one-backend file vs none ({n} x {tokens}, unpaced)"
            return [_ratio_row("11c", what, values, "anthropic", "default", ONE_BACKEND_BUDGET, "per event", errors)]

        async def one_backend_calls() -> list[Row]:
            values, errors = await _together(session, (tiny,), one_pair, plan.backends_rounds, per_call)
            what = f"CPU per one-token call, a one-backend file vs none ({plan.tiny_concurrency} at a time)"
            return [_ratio_row("11d", what, values, "anthropic", "default", ONE_BACKEND_BUDGET, "per call", errors)]

        rows += await _section("11b", bedrock_row)
        rows += await _section("11c", one_backend_rows)
        rows += await _section("11d", one_backend_calls)
        rows += await _section("11e", bedrock_calls)
        return rows
    finally:
        for gateway, _ in gateways.values():
            await procs.stop(gateway)
        await procs.stop(sim)


async def _section(key: str, rows: Callable[[], Awaitable[list[Row]]]) -> list[Row]:
    """The rows of one measurement, or one error row for it: the others still run."""
    try:
        return await rows()
    except Exception as exc:
        return [Row(key, NAME, "error", "", "error", f"{type(exc).__name__}: {exc}")]


async def _failover_row(plan: Plan, gateways: dict[str, tuple[Child, str]], base_url: str) -> list[Row]:
    """Row 11a from ``failover_rounds`` (see the module's doc)."""
    found = await failover_rounds(
        {name: target for name, (_, target) in gateways.items()}, base_url, plan.backends_failover_rounds
    )
    costs = [f - d - a for f, d, a in zip(found["failover"], found["direct"], found["attempt"], strict=True)]
    median = {step: statistics.median(found[step]) for step in ("failover", "direct", "attempt")}
    # The difference of the medians: on a busy machine single calls vary by milliseconds, and the median of
    # the per-round differences (in the detail) wanders further from it than the medians themselves do.
    cost = median["failover"] - median["direct"] - median["attempt"]
    return [
        Row(
            "11a",
            "failover's cost beyond the failed attempt (primary 529 -> bedrock, one-token calls)",
            f"{cost * 1e3:.2f} ms (medians of {len(costs)} rounds: {median['failover'] * 1e3:.2f} - "
            f"{median['direct'] * 1e3:.2f} - {median['attempt'] * 1e3:.2f} ms)",
            f"<= {FAILOVER_BUDGET * 1e3:g} ms",
            judged(cost <= FAILOVER_BUDGET and not found["wrong"]),
            f"medians: call with a failover {median['failover'] * 1e3:.2f} ms, the same call straight to bedrock "
            f"{median['direct'] * 1e3:.2f} ms, the failed attempt alone {median['attempt'] * 1e3:.2f} ms; "
            f"per round, the cost's median {statistics.median(costs) * 1e3:.2f} ms and p90 "
            f"{sorted(costs)[int(len(costs) * 0.9)] * 1e3:.2f} ms; "
            f"misrouted {found['wrong'][:3] or 'none'}",
            {"cost_s": costs, **{k: found[k] for k in ("failover", "direct", "attempt")}, "wrong": found["wrong"]},
        )
    ]
