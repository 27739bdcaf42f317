"""ChatService: the two message RPCs, each one call run by ``server.call.runner`` with its own way to
deliver events (StreamMessage, ResumeStream and CancelStream by ``server.call.resumable``), and CountTokens
and ListModels, run by ``server.call.lookups``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.v1 import chat_pb2_grpc
from google.protobuf.message import DecodeError, Message

from server.call.admission import Body, Request, Undecodable
from server.call.delivery import MessageAccumulator
from server.call.lookups import Lookups
from server.call.resumable import StreamCalls
from server.call.runner import Calls


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """StreamMessage relays each batch of events as it arrives; CreateMessage returns their sum.

    Both are registered as request-streaming handlers (``server.app.add_chat_service``), so that grpc
    does not read the request before the handler asks: admission decides on the metadata first (who
    the caller is, the policy, drain, the concurrency limit, room in the body budget) and a refused
    call never costs its body. The one request message is then read as bytes and parsed here."""

    def __init__(self, calls: Calls, streams: StreamCalls) -> None:
        self._calls = calls
        self._streams = streams
        self._lookups = Lookups(calls)

    # A coroutine that writes with context.write, not an async generator: only a coroutine can be
    # cancelled by the watchdog while a write is blocked on a slow client (see grpc-aio notes).
    async def StreamMessage(  # type: ignore[override]
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        await self._streams.stream_message(context, reading(context, pb.StreamMessageRequest), context.write)

    async def ResumeStream(  # type: ignore[override]
        self, request: pb.ResumeStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._streams.resume(context, request, context.write)

    async def CancelStream(
        self, request: pb.CancelStreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelStreamResponse:
        # On a failure the status is set on the context; grpc sends no message with it.
        return await self._streams.cancel(context, request) or pb.CancelStreamResponse()

    async def CreateMessage(  # type: ignore[override]
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse | None:
        message = MessageAccumulator(self._calls.settings.max_message_bytes)
        read = reading(context, pb.CreateMessageRequest)

        async def read_noting_betas() -> tuple[Request | Undecodable, int]:
            request, size = await read()
            if not isinstance(request, Undecodable):
                message.betas = tuple(request.betas)
            return request, size

        if await self._calls.run("CreateMessage", context, read_noting_betas, message.add):
            return message.response()
        return None  # the status is set on the context; grpc sends no message with it

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        # On a failure the status is set on the context; grpc sends no message with it.
        return await self._lookups.count_tokens(context, request) or pb.CountTokensResponse()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return await self._lookups.list_models(context) or pb.ListModelsResponse()


def reading(context: grpc.aio.ServicerContext, kind: type[Request]) -> Body:
    """How to read the call's one request message: its bytes, parsed (``Undecodable`` when they do not
    parse, or when the client sent none), and their size."""

    async def read() -> tuple[Request | Undecodable, int]:
        data = await context.read()
        if not isinstance(data, bytes):  # grpc.aio.EOF: the client closed without a message
            return Undecodable("the call carries no request message"), 0
        try:
            return kind.FromString(data), len(data)
        except DecodeError as exc:
            return Undecodable(str(exc)), len(data)

    return read


def serialized(message: Message | bytes) -> bytes:
    """A response's bytes: a message serialized, or bytes a resumable stream's store kept serialized already."""
    return message if type(message) is bytes else message.SerializeToString()  # type: ignore[union-attr]


def lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer (CountTokens, ListModels, ResumeStream, CancelStream) that hands bad bytes to the
    handler as ``Undecodable``."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize
