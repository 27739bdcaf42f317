"""One benchmark run's shared state: the upstream, the default gateway, and how jobs are run on them.

``Session.run`` starts load clients for some jobs, releases them together, and measures the named
processes (normally the gateway and the upstream) from ``go`` to the last result: CPU seconds,
utilisation, the gateway's peak utilisation over any one-second window, roughly how much CPU
processes outside the benchmark used meanwhile (machine busy time minus the benchmark's own), and
the peak bytes left unread by the gateway and by the clients (see ``sockets``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.jobs import Job
from bench.plan import Plan
from bench.processes import Child, Processes, go, result
from bench.sockets import Backlog, BacklogSampler
from bench.usage import CpuMeter, CpuSampler, children_of, machine_busy_seconds

_RESULT_TIMEOUT = 600.0
T = TypeVar("T")


@dataclass
class Run:
    """The outcome of one ``Session.run``: each client's result, and the measured processes' CPU."""

    results: list[dict[str, Any]]
    cpu: dict[str, dict[str, float]]  # "gateway", "gateway-worker-N", "upstream" -> {"cpu_s", "util"}
    wall_s: float
    gateway_peak: float  # highest one-second CPU utilisation of the gateway (1.0 = one core)
    background: float  # cores used meanwhile by processes outside this benchmark (approximate)
    backlog: Backlog  # peak bytes left unread by the gateway and by the clients

    @property
    def gateway_cpu_s(self) -> float:
        """CPU seconds of the gateway and of its worker processes, if it has any."""
        return sum(v["cpu_s"] for k, v in self.cpu.items() if k.startswith("gateway"))

    @property
    def client_cpu_s(self) -> float:
        return float(sum(r["cpu_s"] for r in self.results))

    @property
    def errors(self) -> list[str]:
        """The errors its clients saw: each failed stream's, then each client's own."""
        return [rec["error"] for r in self.results for rec in r.get("records", []) if rec["error"]] + [
            e for r in self.results for e in r.get("errors", {})
        ]


async def alternating(
    gateways: dict[str, tuple[Child, str]], rounds: int, measure: Callable[[Child, str], Awaitable[T]]
) -> dict[str, list[T]]:
    """``measure`` of each gateway (process, host:port), one at a time, ``rounds`` times, the order reversed
    every other round: drifts of the machine's speed fall on every gateway alike."""
    values: dict[str, list[T]] = {name: [] for name in gateways}
    names = list(gateways)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            values[name].append(await measure(*gateways[name]))
    return values


@dataclass
class Session:
    procs: Processes
    plan: Plan
    upstream: Child
    base_url: str
    record_path: Path
    gateway: Child
    target: str
    cache: dict[str, Any] = field(default_factory=dict)  # results shared between scenarios

    @classmethod
    async def start(cls, procs: Processes, plan: Plan) -> Session:
        record_path = procs.logs / "upstream-records.json"
        upstream, base_url = await procs.upstream(record_path)
        gateway, target = await procs.gateway(base_url)
        return cls(procs, plan, upstream, base_url, record_path, gateway, target)

    async def run(self, jobs: list[Job], other: tuple[Child, str] | None = None, *, alone: bool = False) -> Run:
        """Run ``jobs`` in parallel clients against the session's gateway, or ``other`` (gateway, host:port).

        ``alone`` runs the clients on the gateway's core instead of the load core: a baseline that
        reads the simulator directly then has a core of its own, as the gateway has (equal footing).
        """
        gateway, target = other or (self.gateway, self.target)
        clients = await self.procs.clients(jobs, cpus=self.procs.gateway_cpus if alone else None)
        meter = CpuMeter({**_gateway_pids(gateway), "upstream": self.upstream.pid})
        ports = (int(self.base_url.rsplit(":", 1)[1].strip("/")), int(target.rsplit(":", 1)[1]))
        async with CpuSampler(gateway.pid) as sampler, BacklogSampler(*ports) as backlog:
            start = time.monotonic()
            meter.start(start)
            busy0, own0 = machine_busy_seconds(), time.process_time()
            await go(clients)
            results = list(await asyncio.gather(*(result(c, _RESULT_TIMEOUT) for c in clients)))
            end = time.monotonic()
            cpu = meter.stop(end)
            busy, own = machine_busy_seconds() - busy0, time.process_time() - own0
        ours = own + sum(p["cpu_s"] for p in cpu.values()) + sum(r["cpu_s"] for r in results)
        background = max(busy - ours, 0.0) / (end - start)
        return Run(results, cpu, end - start, sampler.peak(), background, backlog.peak)

    async def together(self, jobs: dict[str, tuple[Job, tuple[Child, str]]]) -> dict[str, Run]:
        """Each job against its own gateway (process, host:port), all released at once and metered over the same
        seconds: a drift of the machine's speed falls on each gateway alike, which runs one after another cannot
        promise. The gateways share the gateway's core, the clients the load core. Each Run has its gateway's
        CPU (with its workers') and its client's result; its wall time is the whole run's, and the peak,
        background and backlog, sampled for one gateway only, are left at zero."""
        clients = await self.procs.clients([job for job, _ in jobs.values()])
        meters = {name: CpuMeter(_gateway_pids(gateway)) for name, (_, (gateway, _)) in jobs.items()}
        start = time.monotonic()
        for meter in meters.values():
            meter.start(start)
        await go(clients)
        results = await asyncio.gather(*(result(c, _RESULT_TIMEOUT) for c in clients))
        end = time.monotonic()
        return {
            name: Run([found], meters[name].stop(end), end - start, 0.0, 0.0, Backlog())
            for name, found in zip(jobs, results, strict=True)
        }

    async def records(self) -> list[dict[str, Any]]:
        """The upstream's records of tagged requests since the last call (and forget them all)."""
        self.upstream.signal(signal.SIGUSR1)
        await self.upstream.expect("recorded ")
        loaded: list[dict[str, Any]] = json.loads(self.record_path.read_text())
        return loaded

    def split(self, streams: int) -> list[int]:
        """``streams`` shared out over as many clients as ``plan.streams_per_client`` asks."""
        clients = max(1, -(-streams // self.plan.streams_per_client))
        return [streams // clients + (1 if i < streams % clients else 0) for i in range(clients)]

    def channels(self, streams: int) -> int:
        return max(1, -(-streams // self.plan.streams_per_channel))


def _gateway_pids(gateway: Child) -> dict[str, int]:
    """The pids a gateway's CPU is read from: its own, and its workers' if it has any."""
    workers = {f"gateway-worker-{i}": pid for i, pid in enumerate(children_of(gateway.pid), 1)}
    return {"gateway": gateway.pid, **workers}
