"""Reading one stream, through the gateway or straight from the simulator with the SDK.

Both readers note, per stream, what arrived and when (``StreamRecord``). Given a ``Samples``, they
also note the relay latency of every stamped text delta: receipt ``time.monotonic_ns()`` minus
the stamp the simulator wrote (see ``stamps``). The gateway reader takes responses as raw bytes
and finds the stamps in them, which costs the client less than building event objects; it still
parses each response to count its events. Without a ``Samples`` both only count events, so a
client measured for its own CPU (the SDK baseline) does nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import anthropic
import grpc
from claude_gateway.client import stream_request
from claude_gateway.v1 import chat_pb2 as pb

from bench.stamps import stamp_of, stamps_in

STREAM_METHOD = "/claude_gateway.v1.ChatService/StreamMessage"


@dataclass
class Samples:
    """Latency samples of many streams: receipt time (ms since ``origin_ns``) and latency (µs)."""

    origin_ns: int
    recv_ms: list[int] = field(default_factory=list)
    lat_us: list[int] = field(default_factory=list)

    def add(self, now_ns: int, stamp_ns: int) -> None:
        self.recv_ms.append((now_ns - self.origin_ns) // 1_000_000)
        self.lat_us.append((now_ns - stamp_ns) // 1_000)


@dataclass
class StreamRecord:
    """What one stream delivered. Times are CLOCK_MONOTONIC ns; 0 until the first delta."""

    events: int = 0
    messages: int = 0  # gRPC responses (the gateway may put several events in one)
    deltas: int = 0  # stamped text deltas
    first_event_ns: int = 0
    first_ns: int = 0  # receipt of the first delta
    last_ns: int = 0
    first_stamp: int = 0
    last_stamp: int = 0
    error: str | None = None

    def note_deltas(self, now_ns: int, stamps: list[int], samples: Samples | None) -> None:
        """Record the stamped deltas received at ``now_ns``."""
        if not stamps:
            return
        if not self.deltas:
            self.first_ns, self.first_stamp = now_ns, stamps[0]
        self.deltas += len(stamps)
        self.last_ns, self.last_stamp = now_ns, stamps[-1]
        if samples is not None:
            for stamp in stamps:
                samples.add(now_ns, stamp)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def gateway_request(body: dict[str, Any], detach_grace: int = 0) -> bytes:
    """The serialized StreamMessageRequest for an Anthropic-shaped body (resumable with a ``detach_grace``)."""
    request = stream_request(body)
    request.detach_grace_seconds = detach_grace
    return request.SerializeToString()


def stream_method(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    """StreamMessage taking and returning raw bytes."""
    return channel.unary_stream(STREAM_METHOD)


async def read_gateway(
    call: grpc.aio.UnaryStreamCall, record: StreamRecord, samples: Samples | None, until_deltas: int = 0
) -> None:
    """Read ``call`` to its end (or until ``until_deltas`` deltas, if > 0) into ``record``.

    A failed call is noted in ``record.error`` as its status code name, not raised; so is a call
    this client cancelled ("CANCELLED").
    """
    try:
        while True:
            data = await call.read()
            now = time.monotonic_ns()
            if data is grpc.aio.EOF:
                return
            assert isinstance(data, bytes)
            if not record.messages:
                record.first_event_ns = now
            record.messages += 1
            record.events += len(pb.StreamMessageResponse.FromString(data).events)
            if samples is not None:
                record.note_deltas(now, stamps_in(data), samples)
            if until_deltas and record.deltas >= until_deltas:
                return
    except grpc.aio.AioRpcError as error:
        record.error = error.code().name
    except asyncio.CancelledError:
        if not call.cancelled():
            raise  # this task was cancelled, not the call
        record.error = "CANCELLED"  # the call was cancelled by this client: grpc.aio raises CancelledError


async def read_sdk(
    events: AsyncIterator[Any], record: StreamRecord, samples: Samples | None, until_deltas: int = 0
) -> None:
    """Read the SDK's typed events (``messages.create(stream=True)``) into ``record``.

    The SDK drops `ping` events, so ``record.events`` is one short per stream of the gateway's count.
    """
    try:
        async for event in events:
            now = time.monotonic_ns()
            if not record.events:
                record.first_event_ns = now
            record.events += 1
            record.messages += 1
            if samples is not None and event.type == "content_block_delta" and event.delta.type == "text_delta":
                stamp = stamp_of(event.delta.text)
                record.note_deltas(now, [stamp] if stamp is not None else [], samples)
                if until_deltas and record.deltas >= until_deltas:
                    return
    except anthropic.APIError as error:
        record.error = type(error).__name__
