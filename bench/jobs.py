"""The jobs a load client runs: each a coroutine from ``go`` to a JSON-ready result.

A ``Job`` says what to do; ``Clients`` holds what talks to the gateway (gRPC channels) and to the
simulator (an SDK client), set up before ``go`` so that setup costs no measured time. Every job
returns a dict; times in it are CLOCK_MONOTONIC (``*_ns``) or durations in µs (``*_us``).

- ``streams``: ``streams`` StreamMessage calls through the gateway, started evenly over ``ramp``
  seconds, each read to its end; per-stream records and, with ``record``, latency samples.
- ``sdk_streams``: the same streams straight from the simulator with the SDK's typed events.
- ``sdk_tiny``: ``count`` one-token calls straight to the simulator with the SDK, ``concurrency`` at
  a time: the bare SDK's cost per request.
- ``ttfe``: ``count`` pairs of one-token calls, one through the gateway and one straight, one after
  the other, alternating which goes first; time from call to first event of each.
- ``tiny``: ``count`` one-token calls through the gateway, ``concurrency`` at a time.
- ``hold``: open ``streams`` calls, say ``opened`` once each has its first delta (or failed), keep
  reading until ``release``, then cancel them all.
- ``cancel``: ``count`` calls, ``concurrency`` at a time, each cancelled after ``after_deltas``
  deltas; notes the time of each cancel against the request's tag.
- ``reject``: after ``delay`` seconds, ``count`` calls started evenly over ``ramp`` seconds and
  expected to be refused; time from call to status, and the status codes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import aiohttp
import anthropic
import grpc

from bench.calls import Samples, StreamRecord, gateway_request, read_gateway, read_sdk, stream_method
from bench.sweep_reads import run_sweep
from bench.workload import body

Result = dict[str, Any]


@dataclass(frozen=True)
class Job:
    """One load client's task. Which fields matter depends on ``kind`` (see the module doc)."""

    kind: str
    target: str = ""  # the gateway, host:port
    base_url: str = ""  # the simulator, for SDK calls
    streams: int = 0
    tokens: int = 0
    tps: float = 0.0
    ramp: float = 0.0  # seconds over which the calls start
    channels: int = 1  # gRPC connections the calls are spread over
    record: bool = True  # keep latency samples
    count: int = 0
    concurrency: int = 1
    after_deltas: int = 3
    delay: float = 0.0
    deadline: float = 300.0  # per call
    http_client: str = "aiohttp"  # the SDK's transport for SDK calls, as the gateway's default; "raw": no SDK,
    # a bare aiohttp session that reads the bytes and parses nothing (``Clients.raw_stream``)
    detach_grace: int = 0  # streams: > 0 asks for resumable streams with this detach grace

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


class Control(Protocol):
    """The orchestrator's side of the conversation, for jobs that wait on it."""

    async def announce(self, word: str) -> None: ...

    async def expect(self, word: str) -> None: ...


@dataclass
class Clients:
    """Connections made before ``go``: gRPC channels to the gateway, an SDK client to the simulator."""

    channels: list[grpc.aio.Channel]
    sdk: anthropic.AsyncAnthropic | None
    raw: aiohttp.ClientSession | None = None
    base_url: str = ""

    @classmethod
    async def connect(cls, job: Job) -> Clients:
        channels = []
        if job.target:
            for _ in range(max(job.channels, 1)):
                # A local subchannel pool gives each channel its own TCP connection.
                channel = grpc.aio.insecure_channel(job.target, options=[("grpc.use_local_subchannel_pool", 1)])
                await asyncio.wait_for(channel.channel_ready(), 10)
                channels.append(channel)
        sdk = None
        if job.base_url and job.http_client == "raw":
            return cls(channels, None, aiohttp.ClientSession(auto_decompress=False), job.base_url)
        if job.base_url:
            http = anthropic.DefaultAioHttpClient() if job.http_client == "aiohttp" else None
            sdk = anthropic.AsyncAnthropic(base_url=job.base_url, api_key="bench", max_retries=0, http_client=http)
        return cls(channels, sdk)

    def call(self, i: int, request: bytes, timeout: float) -> grpc.aio.UnaryStreamCall:
        """Start StreamMessage number ``i`` (which picks its channel)."""
        return stream_method(self.channels[i % len(self.channels)])(request, timeout=timeout)

    async def sdk_stream(self, request_body: dict[str, Any], record: StreamRecord, samples: Samples | None) -> None:
        """One streamed call straight to the simulator, read to its end into ``record``."""
        assert self.sdk is not None
        try:
            stream = await self.sdk.messages.create(**request_body, stream=True)
        except anthropic.APIError as error:
            record.error = type(error).__name__
            return
        async with stream:
            await read_sdk(stream, record, samples)

    async def raw_stream(self, request_body: dict[str, Any], record: StreamRecord) -> None:
        """One streamed call straight to the simulator on a bare aiohttp session: the bytes read as they
        arrive, counted as events by their blank lines, nothing parsed. What reading alone costs."""
        assert self.raw is not None
        headers = {"authorization": "Bearer bench", "anthropic-version": "2026-10-21", "accept-encoding": "identity"}
        async with self.raw.post(
            f"{self.base_url}/v1/messages", json={**request_body, "stream": True}, headers=headers
        ) as r:
            if r.status != 200:
                record.error = f"HTTP {r.status}"
                return
            while chunk := await r.content.readany():
                n = chunk.count(b"\n\n")
                record.events += n
                record.messages += n

    async def close(self) -> None:
        if self.raw is not None:
            await self.raw.close()
        for channel in self.channels:
            await channel.close()
        if self.sdk is not None:
            await self.sdk.close()


async def sleep_until(t_ns: int) -> None:
    """Sleep until CLOCK_MONOTONIC reaches ``t_ns``."""
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def _starts(origin_ns: int, n: int, ramp: float) -> list[int]:
    """``n`` start times spread evenly over ``ramp`` seconds from ``origin_ns``."""
    return [origin_ns + int(i * ramp * 1e9 / max(n, 1)) for i in range(n)]


def _stream_result(records: list[StreamRecord], samples: Samples | None) -> Result:
    return {
        "records": [r.as_json() for r in records],
        "recv_ms": samples.recv_ms if samples else [],
        "lat_us": samples.lat_us if samples else [],
    }


async def run_streams(job: Job, clients: Clients, control: Control) -> Result:
    origin = time.monotonic_ns()
    samples = Samples(origin) if job.record else None
    records = [StreamRecord() for _ in range(job.streams)]
    request = gateway_request(body(job.tokens, job.tps), job.detach_grace)

    async def one(i: int, start: int) -> None:
        await sleep_until(start)
        await read_gateway(clients.call(i, request, job.deadline), records[i], samples)

    await asyncio.gather(*(one(i, t) for i, t in enumerate(_starts(origin, job.streams, job.ramp))))
    return _stream_result(records, samples)


async def run_sdk_streams(job: Job, clients: Clients, control: Control) -> Result:
    origin = time.monotonic_ns()
    samples = Samples(origin) if job.record else None
    records = [StreamRecord() for _ in range(job.streams)]
    request_body = body(job.tokens, job.tps)

    async def one(i: int, start: int) -> None:
        await sleep_until(start)
        if clients.raw is not None:
            await clients.raw_stream(request_body, records[i])
        else:
            await clients.sdk_stream(request_body, records[i], samples)

    await asyncio.gather(*(one(i, t) for i, t in enumerate(_starts(origin, job.streams, job.ramp))))
    return _stream_result(records, samples)


async def run_ttfe(job: Job, clients: Clients, control: Control) -> Result:
    request_body = body(1, 0)
    request = gateway_request(request_body)

    async def via_gateway() -> int:
        record = StreamRecord()
        start = time.monotonic_ns()
        await read_gateway(clients.call(0, request, job.deadline), record, None)
        if record.error:
            raise RuntimeError(f"gateway call failed: {record.error}")
        return (record.first_event_ns - start) // 1000

    async def direct() -> int:
        record = StreamRecord()
        start = time.monotonic_ns()
        await clients.sdk_stream(request_body, record, None)
        if record.error:
            raise RuntimeError(f"direct call failed: {record.error}")
        return (record.first_event_ns - start) // 1000

    for _ in range(20):  # warm both paths: connections, lazy imports, caches
        await via_gateway()
        await direct()
    gateway_us, direct_us = [], []
    for i in range(job.count):
        if i % 2:
            direct_us.append(await direct())
            gateway_us.append(await via_gateway())
        else:
            gateway_us.append(await via_gateway())
            direct_us.append(await direct())
    return {"gateway_us": gateway_us, "direct_us": direct_us}


async def _workers(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run ``work(i)`` for i in range(count), at most ``concurrency`` at a time."""
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_tiny(job: Job, clients: Clients, control: Control) -> Result:
    request = gateway_request(body(1, 0))
    errors: Counter[str] = Counter()
    events = messages = 0

    async def one(i: int) -> None:
        nonlocal events, messages
        record = StreamRecord()
        await read_gateway(clients.call(i, request, job.deadline), record, None)
        events += record.events
        messages += record.messages
        if record.error:
            errors[record.error] += 1

    await _workers(job.count, job.concurrency, one)
    return {"calls": job.count, "events": events, "messages": messages, "errors": dict(errors)}


async def run_sdk_tiny(job: Job, clients: Clients, control: Control) -> Result:
    request = body(1, 0)
    errors: Counter[str] = Counter()
    events = 0

    async def one(i: int) -> None:
        nonlocal events
        record = StreamRecord()
        await clients.sdk_stream(request, record, None)
        events += record.events
        if record.error:
            errors[record.error] += 1

    await _workers(job.count, job.concurrency, one)
    return {"calls": job.count, "events": events, "errors": dict(errors)}


async def run_hold(job: Job, clients: Clients, control: Control) -> Result:
    request = gateway_request(body(job.tokens, job.tps))
    records = [StreamRecord() for _ in range(job.streams)]
    calls: list[grpc.aio.UnaryStreamCall] = []
    tasks = []
    waiting = job.streams
    all_open = asyncio.Event()

    async def hold(call: grpc.aio.UnaryStreamCall, record: StreamRecord) -> None:
        nonlocal waiting
        await read_gateway(call, record, Samples(0), until_deltas=1)
        waiting -= 1
        if not waiting:
            all_open.set()
        if not record.error:
            await read_gateway(call, record, None)  # until cancelled

    origin = time.monotonic_ns()
    for i, start in enumerate(_starts(origin, job.streams, job.ramp)):
        await sleep_until(start)
        call = clients.call(i, request, job.deadline)
        calls.append(call)
        tasks.append(asyncio.create_task(hold(call, records[i])))
    await all_open.wait()
    opened_s = (time.monotonic_ns() - origin) / 1e9
    await control.announce("opened")
    await control.expect("release")
    for call in calls:
        call.cancel()
    await asyncio.gather(*tasks)
    errors = Counter(r.error for r in records if r.error and r.error != "CANCELLED")
    return {"opened": sum(1 for r in records if r.deltas), "opened_s": opened_s, "errors": dict(errors)}


async def run_cancel(job: Job, clients: Clients, control: Control) -> Result:
    cancels: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()

    async def one(i: int) -> None:
        tag = f"cancel-{i}"
        call = clients.call(i, gateway_request(body(job.tokens, job.tps, tag=tag)), job.deadline)
        record = StreamRecord()
        await read_gateway(call, record, Samples(0), until_deltas=job.after_deltas)
        if record.error:
            errors[record.error] += 1
            return
        cancel_ns = time.monotonic_ns()
        call.cancel()
        cancels.append({"tag": tag, "cancel_ns": cancel_ns})

    await _workers(job.count, job.concurrency, one)
    return {"cancels": cancels, "errors": dict(errors)}


async def run_reject(job: Job, clients: Clients, control: Control) -> Result:
    request = gateway_request(body(job.tokens, job.tps))
    latencies: list[int] = []
    codes: Counter[str] = Counter()
    origin = time.monotonic_ns() + int(job.delay * 1e9)

    async def one(i: int, start: int) -> None:
        await sleep_until(start)
        call = clients.call(i, request, job.deadline)
        t0 = time.monotonic_ns()
        record = StreamRecord()
        await read_gateway(call, record, None)
        latencies.append((time.monotonic_ns() - t0) // 1000)
        codes[record.error or "OK"] += 1

    await asyncio.gather(*(one(i, t) for i, t in enumerate(_starts(origin, job.count, job.ramp))))
    return {"lat_us": latencies, "codes": dict(codes), "start_ns": origin}


RUNNERS: dict[str, Callable[[Job, Clients, Control], Awaitable[Result]]] = {
    "streams": run_streams,
    "sdk_streams": run_sdk_streams,
    "ttfe": run_ttfe,
    "tiny": run_tiny,
    "sdk_tiny": run_sdk_tiny,
    "hold": run_hold,
    "cancel": run_cancel,
    "reject": run_reject,
    # the public stream method's sweep (``sweep_reads``): through gRPC, through /v1/messages, straight with the SDK
    "sweep_grpc": run_sweep,
    "sweep_http": run_sweep,
    "sweep_sdk": run_sweep,
}
