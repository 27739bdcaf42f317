"""ChatService: the two RPCs, each one call run by ``server.call.runner`` with its own way to deliver events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf.message import DecodeError, Message

from server.call.admission import Undecodable
from server.call.delivery import MessageAccumulator, streamed
from server.call.runner import Calls


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """StreamMessage relays each batch of events as it arrives; CreateMessage returns their sum."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    # A coroutine that writes with context.write, not an async generator: only a coroutine can be
    # cancelled by the watchdog while a write is blocked on a slow client (see grpc-aio notes).
    async def StreamMessage(  # type: ignore[override]
        self, request: pb.StreamMessageRequest, context: grpc.aio.ServicerContext
    ) -> None:
        deliver = streamed(context.write, self._calls.settings.max_message_bytes)
        await self._calls.run("StreamMessage", context, request, deliver)

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        message = MessageAccumulator(self._calls.settings.max_message_bytes, getattr(request, "betas", ()))
        await self._calls.run("CreateMessage", context, request, message.add)
        return message.response()


def lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that hands bad bytes to the handler as ``Undecodable``."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize
