"""ChatService: the two RPCs, each one call run by ``server.call.runner`` with its own way to deliver events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf.message import DecodeError, Message

from server.call.accumulator import MessageAccumulator
from server.call.admission import Undecodable
from server.call.events import OFFLOAD_BYTES, Event, responses, text_size
from server.call.runner import Calls
from server.errors import Failure, GatewayError


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """StreamMessage relays each batch of events as it arrives; CreateMessage returns their sum."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    # A coroutine that writes with context.write, not an async generator: only a coroutine can be
    # cancelled by the watchdog while a write is blocked on a slow client (see grpc-aio notes).
    async def StreamMessage(  # type: ignore[override]
        self, request: pb.StreamMessageRequest, context: grpc.aio.ServicerContext
    ) -> None:
        limit = self._calls.settings.max_message_bytes

        async def write(batch: list[Event]) -> None:
            out, failure = await converted(batch, limit)
            for response in out:
                await context.write(response)
            if failure is not None:
                raise GatewayError(failure)

        await self._calls.run("StreamMessage", context, request, write)

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        message = MessageAccumulator(self._calls.settings.max_message_bytes, getattr(request, "betas", ()))
        await self._calls.run("CreateMessage", context, request, message.add)
        return message.response()


async def converted(batch: list[Event], limit: int) -> tuple[list[pb.StreamMessageResponse], Failure | None]:
    """``events.responses`` for one batch, off the event loop when the batch is big; the messages that fit
    go out before the failure, if any (StreamMessage on gRPC, Connect and gRPC-Web alike)."""
    size = text_size(batch)
    if size < OFFLOAD_BYTES:
        return responses(batch, limit, size)
    return await asyncio.to_thread(responses, batch, limit)


def lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that hands bad bytes to the handler as ``Undecodable``."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize
