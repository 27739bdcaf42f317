"""What a load client does in the public stream method's sweep (``sweep``): closed-loop paced streams.

Each of the job's ``streams`` slots reads ``count`` streams one after the other (a new one as soon as
the last ended, so the slot keeps one stream open), the slots' first starts spread evenly over
``ramp`` seconds, after one short call that is not counted (it warms the client). A stream is
``tokens`` text deltas at ``tps`` a second; the client notes, per stream, the time from starting the
call to receiving its first text delta (time to first token), the gap before each later delta, the
largest such gap and the largest gap between the simulator's own send stamps of the same deltas
(see ``stamps``: a gap the simulator made itself, not the relay).

Three readers, one per job kind:

- ``sweep_grpc``: StreamMessage through the gateway (grpc.aio, responses as raw bytes, the stamps
  found in them; nothing else parsed);
- ``sweep_http``: ``POST {base_url}/v1/messages`` through the gateway's HTTP port, on a bare aiohttp
  session reading the server-sent events as they arrive (stamps found per complete frame);
- ``sweep_sdk``: the same streams straight from the simulator with the official SDK on its aiohttp
  transport, reading typed events: the direct reader every added figure is taken against.

The result: ``streams`` (one dict each: ``ttft_us``, ``deltas``, ``max_gap_us``, ``sim_max_gap_us``,
``error``) and ``gaps_us`` (every gap of every stream, for percentiles over the step).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anthropic
import grpc

from bench.calls import gateway_request
from bench.stamps import stamp_of, stamps_in
from bench.workload import body

if TYPE_CHECKING:
    from bench.jobs import Clients, Control, Job

_HEADERS = {"authorization": "Bearer bench", "anthropic-version": "2026-10-21", "accept-encoding": "identity"}


@dataclass
class Reading:
    """One stream as a client saw it. Times are CLOCK_MONOTONIC ns."""

    start_ns: int
    deltas: int = 0
    first_ns: int = 0
    last_ns: int = 0
    last_stamp: int = 0
    max_gap_ns: int = 0
    sim_max_gap_ns: int = 0
    gaps_us: list[int] = field(default_factory=list)
    error: str | None = None

    def note(self, now_ns: int, stamps: list[int]) -> None:
        """Text deltas (their send stamps) received at ``now_ns``."""
        for stamp in stamps:
            if self.deltas:
                gap = now_ns - self.last_ns
                self.gaps_us.append(gap // 1000)
                self.max_gap_ns = max(self.max_gap_ns, gap)
                self.sim_max_gap_ns = max(self.sim_max_gap_ns, stamp - self.last_stamp)
            else:
                self.first_ns = now_ns
            self.deltas += 1
            self.last_ns, self.last_stamp = now_ns, stamp

    def as_json(self) -> dict[str, Any]:
        return {
            "ttft_us": (self.first_ns - self.start_ns) // 1000 if self.deltas else None,
            "deltas": self.deltas,
            "max_gap_us": self.max_gap_ns // 1000,
            "sim_max_gap_us": self.sim_max_gap_ns // 1000,
            "error": self.error,
        }


async def read_grpc(call: grpc.aio.UnaryStreamCall, reading: Reading) -> None:
    try:
        while True:
            data = await call.read()
            now = time.monotonic_ns()
            if data is grpc.aio.EOF:
                return
            assert isinstance(data, bytes)
            reading.note(now, stamps_in(data))
    except grpc.aio.AioRpcError as error:
        reading.error = error.code().name


async def read_http(session: aiohttp.ClientSession, url: str, request_body: dict[str, Any], reading: Reading) -> None:
    """One ``/v1/messages`` stream: each read's complete frames searched for stamps, a partial frame kept for
    the next read (a frame may arrive in two reads)."""
    try:
        async with session.post(url, json={**request_body, "stream": True}, headers=_HEADERS) as response:
            if response.status != 200:
                reading.error = f"HTTP {response.status}"
                return
            tail = b""
            while chunk := await response.content.readany():
                now = time.monotonic_ns()
                data = tail + chunk
                end = data.rfind(b"\n\n") + 2
                tail = data[end:] if end > 1 else data
                if end > 1:
                    reading.note(now, stamps_in(data[:end]))
    except aiohttp.ClientError as error:
        reading.error = type(error).__name__


async def read_sdk(sdk: anthropic.AsyncAnthropic, request_body: dict[str, Any], reading: Reading) -> None:
    try:
        stream = await sdk.messages.create(**request_body, stream=True)
        async with stream:
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    now = time.monotonic_ns()
                    stamp = stamp_of(event.delta.text)
                    reading.note(now, [stamp] if stamp is not None else [])
    except anthropic.APIError as error:
        reading.error = type(error).__name__


async def run_sweep(job: Job, clients: Clients, control: Control) -> dict[str, Any]:
    """``job.streams`` slots of ``job.count`` streams each, read the way ``job.kind`` says."""
    request_body = body(job.tokens, job.tps)
    request = gateway_request(request_body)
    readings: list[Reading] = []
    http: aiohttp.ClientSession | None = None
    sdk = clients.sdk  # sweep_sdk: the SDK on aiohttp, made before ``go``
    if job.kind == "sweep_http":
        # No pool limit (aiohttp's default is 100 connections): every slot keeps its own connection.
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def read(slot: int, reading: Reading, request_body: dict[str, Any], request: bytes) -> None:
        if job.kind == "sweep_grpc":
            await read_grpc(clients.call(slot, request, job.deadline), reading)
        elif http is not None:
            await read_http(http, f"{job.base_url}/v1/messages", request_body, reading)
        else:
            assert sdk is not None
            await read_sdk(sdk, request_body, reading)

    async def one(slot: int) -> None:
        reading = Reading(time.monotonic_ns())
        readings.append(reading)
        await read(slot, reading, request_body, request)

    async def slot(i: int) -> None:
        delay = i * job.ramp / max(job.streams, 1)
        if delay:
            await asyncio.sleep(delay)
        for _ in range(job.count):
            await one(i)

    try:
        # One short call first, not counted, as every way's reader makes it: the client's lazy paths (the SDK's
        # response types) and a first connection are then not in the first stream's time to first token.
        warm = body(1, 0)
        await read(0, Reading(time.monotonic_ns()), warm, gateway_request(warm))
        await asyncio.gather(*(slot(i) for i in range(job.streams)))
    finally:
        if http is not None:
            await http.close()
    return {
        "streams": [r.as_json() for r in readings],
        "gaps_us": [gap for r in readings for gap in r.gaps_us],
    }
