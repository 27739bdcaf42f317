"""``python -m bench.floor``: grpc.aio's own cost of a paced stream, with no upstream behind it.

A ChatService whose StreamMessage reads the benchmark's prompt directives (``[[sim:tokens N]]``,
``[[sim:tps X]]``) and writes the reply the gateway would relay for it, one gRPC message per event
as the gateway sends paced deltas: a request id as initial metadata (as the gateway sends the
upstream's), the opening events, then each text delta at its time with the send-time stamp in its
text (as the stamping simulator writes it), then the closing events. An unpaced reply is one
message, as the gateway sends a reply that arrives at once. The messages are built in advance; only
the stamp is set per write. What this process spends per event is what grpc.aio and the event loop
cost for one paced message on this machine: the floor under the gateway's own cost per paced event,
which adds the upstream read and the event's conversion.

Prints ``floor listening on HOST:PORT`` once it serves; runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import grpc
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from claude_gateway.wire import REQUEST_ID_KEY, STREAM_ID_KEY

from server.signals import termination
from simulator.directives import parse

_OPENING: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_floor",
            "type": "message",
            "role": "assistant",
            "model": "claude-floor",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
]
_CLOSING: list[dict[str, Any]] = [
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 1},
    },
    {"type": "message_stop"},
]


def _response(events: list[dict[str, Any]]) -> pb.StreamMessageResponse:
    response = pb.StreamMessageResponse()
    for event in events:
        codec.from_json(event, response.events.add())
    return response


class FloorServicer(chat_pb2_grpc.ChatServiceServicer):
    """Writes each stream's events on schedule; nothing else."""

    def __init__(self) -> None:
        self._serials = itertools.count(1)
        self._opening = _response(_OPENING)
        self._closing = _response(_CLOSING)

    async def StreamMessage(  # type: ignore[override]
        self, request: pb.StreamMessageRequest, context: grpc.aio.ServicerContext
    ) -> None:
        prompt = request.params.messages[-1].content_text
        found = parse(prompt)
        tokens = found.tokens or 1
        tps = found.tokens_per_second or 0.0
        loop = asyncio.get_running_loop()
        # As the gateway does: the upstream request id and the stream id first, as initial metadata (an operation of
        # its own), and each response numbered by its first event.
        serial = next(self._serials)
        await context.send_initial_metadata(
            ((REQUEST_ID_KEY, f"req_floor{serial:017d}"), (STREAM_ID_KEY, f"floor{serial:017d}"))
        )
        if tps <= 0:
            # Unpaced, the whole reply is waiting at once, and the gateway sends what is waiting in one message.
            reply = pb.StreamMessageResponse()
            reply.MergeFrom(self._opening)
            for _ in range(tokens):
                reply.events.add().content_block_delta.delta.text_delta.text = f" ts{time.monotonic_ns():019d}"
            reply.MergeFrom(self._closing)
            reply.sequence = 1
            await context.write(reply)
            return
        opening = len(self._opening.events)
        self._opening.sequence = 1
        await context.write(self._opening)
        delta = pb.StreamMessageResponse()
        target = delta.events.add().content_block_delta
        start = loop.time()
        for i in range(tokens):
            wait = start + i / tps - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            target.delta.text_delta.text = f" ts{time.monotonic_ns():019d}"
            delta.sequence = opening + 1 + i
            await context.write(delta)
        closing = pb.StreamMessageResponse()
        closing.CopyFrom(self._closing)
        closing.sequence = opening + 1 + tokens
        await context.write(closing)

    async def ResumeStream(  # type: ignore[override]
        self, request: pb.ResumeStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the floor serves StreamMessage only")

    async def CancelStream(
        self, request: pb.CancelStreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelStreamResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the floor serves StreamMessage only")
        raise AssertionError("context.abort raises")

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the floor serves StreamMessage only")
        raise AssertionError("context.abort raises")

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the floor serves StreamMessage only")
        raise AssertionError("context.abort raises")

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the floor serves StreamMessage only")
        raise AssertionError("context.abort raises")


async def start() -> tuple[grpc.aio.Server, int]:
    """The floor's server, started on a free loopback port; returns it and the port."""
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(FloorServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def serve() -> None:
    server, port = await start()
    stop = termination()
    print(f"floor listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve())
