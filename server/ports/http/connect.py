"""ChatService over the Connect protocol and gRPC-Web: the ``connectrpc`` ASGI application.

connectrpc speaks the wire protocols (Connect unary and streaming, JSON and binary; gRPC-Web); every
call still runs through ``server.call.runner.Calls.run``, the one path of a call, exactly as on the gRPC
port. ``HttpCallContext`` gives that path the small surface of ``grpc.aio.ServicerContext`` it uses;
each call runs in a task of its own, as a grpc.aio handler does, so that the watchdog, the drain and
a browser that goes away can each cancel it and the upstream request closes with it.

The call's deadline (``connect-timeout-ms`` or ``grpc-timeout``) is taken from the headers here and
kept by the gateway's watchdog, not by connectrpc, so a deadline ends the call with the gateway's own
status, log line and details. Request bytes that do not decode reach admission as ``Undecodable`` and
get INVALID_ARGUMENT with the reason, as on gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import SERVICE, STATUS_DETAILS_KEY
from connectrpc.code import Code
from connectrpc.codec import Codec
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from protobuf.wkt import Any as AnyDetail

from server.call.admission import Pending, Undecodable
from server.call.context import CallContext
from server.call.delivery import MessageAccumulator, Sink
from server.call.lookups import Lookups
from server.call.resumable import StreamCalls, Writer
from server.call.runner import Calls
from server.errors import GatewayError
from server.limits.bodies import WAIT_SECONDS, Reservation

TIMEOUT_HEADERS = (b"connect-timeout-ms", b"grpc-timeout")

# Every gRPC code and its Connect name: the same numbers, one spelling differs (CANCELLED / canceled).
CODES: Mapping[grpc.StatusCode, Code] = {
    code: Code.CANCELED if code is grpc.StatusCode.CANCELLED else Code[code.name]
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
}

# The loop time by which the current HTTP call must end, from its timeout header; None without one.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# The current HTTP call's room in the body budget, taken on its headers before its body was read.
_reserved: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar("reserved", default=None)

_GRPC_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_CONNECT_TIMEOUT = re.compile(r"^[0-9]{1,10}$")


def timeout_seconds(name: bytes, value: bytes) -> float | None:
    """The timeout a ``connect-timeout-ms`` or ``grpc-timeout`` header gives, None when malformed."""
    text = value.decode("latin-1").strip()
    if name == b"connect-timeout-ms":
        return int(text) / 1e3 if _CONNECT_TIMEOUT.match(text) else None
    match = _GRPC_TIMEOUT.match(text)
    return int(match[1]) * _GRPC_UNITS[match[2]] if match else None


def to_connect_error(status: grpc.Status) -> ConnectError:
    """The Connect error for a gRPC status: same code, message and rich details (ErrorInfo, ...)."""
    details = dict(status.trailing_metadata or ()).get(STATUS_DETAILS_KEY)
    return connect_error(status.code, status.details or "", details if isinstance(details, bytes) else None)


def connect_error(code: grpc.StatusCode, message: str, status_details: bytes | None) -> ConnectError:
    """The Connect error of a gRPC code, message and ``grpc-status-details-bin`` value."""
    details: list[ErrorDetail] = []
    if status_details:
        for any_pb in status_pb2.Status.FromString(status_details).details:
            details.append(ErrorDetail(AnyDetail(type_url=any_pb.type_url, value=any_pb.value)))
    return ConnectError(CODES[code], message, details)


class HttpCallContext:
    """What ``Calls.run`` needs of a grpc.aio ServicerContext, for a call over Connect or gRPC-Web."""

    def __init__(
        self, ctx: RequestContext[Any, Any], deadline: float | None, on_headers: Callable[[], None] | None = None
    ) -> None:
        self._ctx = ctx
        self._deadline = deadline
        self._on_headers = on_headers
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._status_details: bytes | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request headers, as gRPC metadata (lower-case keys): ``authorization`` among them."""
        return tuple((key.lower(), value) for key, value in self._ctx.request_headers.allitems())

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline, None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """Response headers, sent with the first message (or with the error); ``on_headers`` hears them, to send
        them at once."""
        for key, value in metadata:
            self._ctx.response_headers[key] = value
        if self._on_headers is not None:
            self._on_headers()

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Response trailers: gRPC-Web's trailer frame, Connect's end-of-stream metadata; the rich status
        details are kept for the error instead."""
        for key, value in metadata:
            if key == STATUS_DETAILS_KEY:
                self._status_details = value if isinstance(value, bytes) else value.encode("latin-1")
            else:
                self._ctx.response_trailers[key] = value if isinstance(value, str) else value.decode("latin-1")

    def set_code(self, code: grpc.StatusCode) -> None:
        """The call's status code (not OK: the call failed)."""
        self._code = code

    def set_details(self, details: str) -> None:
        """The call's status message."""
        self._details = details

    def error(self) -> ConnectError | None:
        """The error the call ended with (connectrpc writes it as Connect error JSON or gRPC-Web
        trailers), None if it ended OK."""
        if self._code is None or self._code is grpc.StatusCode.OK:
            return None
        return connect_error(self._code, self._details, self._status_details)


A = TypeVar("A", bound=Message)


def _answered(response: A | None, context: HttpCallContext) -> A:
    """``response``, or the error the call's status says (raised for connectrpc to write)."""
    error = context.error()
    if error is not None or response is None:
        raise error or connect_error(grpc.StatusCode.INTERNAL, "no response", None)
    return response


class Headers:
    """The surface of a call context that admission's metadata checks read, over the request headers
    alone: what the HTTP port knows before it reads a body."""

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request headers, as gRPC metadata (lower-case keys)."""
        return tuple((key.lower(), value) for key, value in self._ctx.request_headers.allitems())

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline, None without one."""
        deadline = _deadline.get()
        return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())


class Admittance:
    """A connectrpc metadata interceptor, run before the body is read: the caller, drain, the policy,
    the concurrency limit and room in the body budget for the body's ``content-length`` (the largest
    message when it has none), from the headers alone. A refused call never costs its body; it is
    logged and counted as any call. The reservation is given back when the call ends."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def on_start(self, ctx: RequestContext[Any, Any]) -> Reservation:
        headers = Headers(ctx)
        admission = self._calls.admission
        try:
            admission.entry(headers)
            remaining = headers.time_remaining()
            reservation = await admission.reserve(content_length(ctx), WAIT_SECONDS if remaining is None else remaining)
            _reserved.set(reservation)  # the handler runs in this context: its call takes it over
            return reservation
        except GatewayError as exc:
            status = self._calls.refuse(ctx.method.name, headers, exc.failure)
        for key, value in status.trailing_metadata or ():
            if key != STATUS_DETAILS_KEY and isinstance(value, str):
                ctx.response_trailers[key] = value
        raise to_connect_error(status)

    async def on_end(self, token: Reservation, ctx: RequestContext[Any, Any], error: Exception | None) -> None:
        token.release()


def content_length(ctx: RequestContext[Any, Any]) -> int | None:
    """The body's size as its ``content-length`` header says, None without one (chunked)."""
    value = ctx.request_headers.get("content-length", "")
    return int(value) if value.isdigit() and len(value) < 19 else None


M = TypeVar("M", bound=Message)


class ProtoCodec(Codec[Message, Any]):
    """Binary protobuf (``application/proto``, ``application/grpc-web+proto``); bad bytes become
    ``Undecodable`` for admission to refuse."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> Pending:
        try:
            return Pending(message_class.FromString(bytes(data)), len(data))
        except DecodeError as exc:
            return Pending(Undecodable(str(exc)), len(data))


class JsonCodec(Codec[Message, Any]):
    """The canonical protobuf JSON (``application/json``, ``application/connect+json``), one line per
    message; unknown fields, bad JSON and bytes that are not UTF-8 become ``Undecodable`` for admission to
    refuse (so the call is logged and counted as on gRPC, not refused by connectrpc unseen)."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> Pending:
        message = message_class()
        try:
            json_format.Parse(bytes(data), message)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            return Pending(Undecodable(str(exc)), len(data))
        return Pending(message, len(data))


def _method(name: str, request: type[Message], response: type[Message], kind: StreamType) -> MethodInfo[Any, Any]:
    return MethodInfo(
        name=name,
        stream_type=kind,
        service_name=SERVICE,
        input=request,
        output=response,
        idempotency_level=IdempotencyLevel.UNKNOWN,
    )


STREAM_MESSAGE = _method("StreamMessage", pb.StreamMessageRequest, pb.StreamMessageResponse, StreamType.SERVER_STREAM)
CREATE_MESSAGE = _method("CreateMessage", pb.CreateMessageRequest, pb.CreateMessageResponse, StreamType.UNARY)
RESUME_STREAM = _method("ResumeStream", pb.ResumeStreamRequest, pb.ResumeStreamResponse, StreamType.SERVER_STREAM)
CANCEL_STREAM = _method("CancelStream", pb.CancelStreamRequest, pb.CancelStreamResponse, StreamType.UNARY)
COUNT_TOKENS = _method("CountTokens", pb.CountTokensRequest, pb.CountTokensResponse, StreamType.UNARY)
LIST_MODELS = _method("ListModels", pb.ListModelsRequest, pb.ListModelsResponse, StreamType.UNARY)


class ChatHandlers:
    """The RPCs for connectrpc: the two message RPCs, each a call of ``Calls.run`` in a task of its own,
    and CountTokens and ListModels (``Lookups``)."""

    def __init__(self, calls: Calls, streams: StreamCalls) -> None:
        self._calls = calls
        self._streams = streams
        self._lookups = Lookups(calls)

    def _start(
        self,
        method: str,
        request: Pending,
        ctx: RequestContext[Any, Any],
        deliver: Sink,
    ) -> tuple[asyncio.Task[bool], HttpCallContext]:
        context = HttpCallContext(ctx, _deadline.get())
        checked: CallContext = context  # mypy holds the class to the Protocol the call is written against
        run = self._calls.run(method, checked, request, deliver, _reserved.get())
        return asyncio.ensure_future(run), context

    async def _stream(
        self,
        run: Callable[[CallContext, Writer], Awaitable[Any]],
        ctx: RequestContext[Any, Any],
        response_type: type[M],
        *,
        headers_at_once: bool,
    ) -> AsyncIterator[M]:
        """The responses ``run`` writes, each sent before it goes on; bytes (a resumable stream's kept responses)
        are parsed as ``response_type``. ``headers_at_once``: an event-less first message carries the headers
        as soon as they are set (the stream id of a resumable stream, before the upstream answers)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def send(response: Any) -> None:
            queue.put_nowait(response)
            await queue.join()  # until the message is sent: the browser's pace is the call's

        on_headers = (lambda: queue.put_nowait(response_type())) if headers_at_once else None
        context = HttpCallContext(ctx, _deadline.get(), on_headers)
        checked: CallContext = context  # mypy holds the class to the Protocol the call is written against
        call = asyncio.ensure_future(run(checked, send))
        call.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (response := await queue.get()) is not None:
                yield response_type.FromString(response) if type(response) is bytes else response
                queue.task_done()
            await call
        finally:
            await _stop(call)
        error = context.error()
        if error is not None:
            raise error

    def stream_message(
        self, request: Pending, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.StreamMessageResponse]:
        """StreamMessage: each batch is one message (or more, to fit), sent before the call reads on; a resumable
        stream starts with an event-less message that carries its id."""
        reserved = _reserved.get()
        return self._stream(
            lambda context, send: self._streams.stream_message(context, request, send, reserved),
            ctx,
            pb.StreamMessageResponse,
            headers_at_once=request.resumable,
        )

    def resume_stream(self, request: Pending, ctx: RequestContext[Any, Any]) -> AsyncIterator[pb.ResumeStreamResponse]:
        """ResumeStream: the replay, then the live events, as StreamMessage sends them."""

        async def resume(context: CallContext, send: Writer) -> None:
            message, _ = await request()
            await self._streams.resume(context, message, send)

        return self._stream(resume, ctx, pb.ResumeStreamResponse, headers_at_once=True)

    async def cancel_stream(self, request: Pending, ctx: RequestContext[Any, Any]) -> pb.CancelStreamResponse:
        """CancelStream."""
        context = HttpCallContext(ctx, _deadline.get())
        message, _ = await request()
        return _answered(await self._streams.cancel(context, message), context)

    async def create_message(self, request: Pending, ctx: RequestContext[Any, Any]) -> pb.CreateMessageResponse:
        """CreateMessage: the events summed into one message."""
        message: MessageAccumulator | None = MessageAccumulator(self._calls.settings.max_message_bytes, request.betas)
        assert message is not None
        call, context = self._start("CreateMessage", request, ctx, message.add)
        try:
            await call
        finally:
            await _stop(call)
        error = context.error()
        if error is not None:
            message = None  # a partial reply is not kept alive by the error's traceback
            raise error
        return message.response()

    async def count_tokens(self, request: Pending, ctx: RequestContext[Any, Any]) -> pb.CountTokensResponse:
        """CountTokens: the API's count of the request's input tokens."""
        context = HttpCallContext(ctx, _deadline.get())
        counted, _ = await request()
        return _answered(await self._lookups.count_tokens(context, counted), context)

    async def list_models(self, request: Pending, ctx: RequestContext[Any, Any]) -> pb.ListModelsResponse:
        """ListModels: the models the caller may name."""
        context = HttpCallContext(ctx, _deadline.get())
        return _answered(await self._lookups.list_models(context), context)

    def endpoints(self) -> Mapping[str, Any]:  # connectrpc types it by its private Endpoint subclasses
        """URL path -> endpoint, as connectrpc's generated code would give it."""
        return {
            f"/{SERVICE}/StreamMessage": Endpoint.server_stream(method=STREAM_MESSAGE, function=self.stream_message),
            f"/{SERVICE}/CreateMessage": Endpoint.unary(method=CREATE_MESSAGE, function=self.create_message),
            f"/{SERVICE}/ResumeStream": Endpoint.server_stream(method=RESUME_STREAM, function=self.resume_stream),
            f"/{SERVICE}/CancelStream": Endpoint.unary(method=CANCEL_STREAM, function=self.cancel_stream),
            f"/{SERVICE}/CountTokens": Endpoint.unary(method=COUNT_TOKENS, function=self.count_tokens),
            f"/{SERVICE}/ListModels": Endpoint.unary(method=LIST_MODELS, function=self.list_models),
        }


async def _stop(call: asyncio.Task[bool]) -> None:
    """Cancel ``call`` if it still runs (the client left) and wait until it has closed the upstream."""
    if not call.done():
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call


class ChatApplication(ConnectASGIApplication[ChatHandlers]):
    """ChatService as an ASGI application: Connect (JSON and binary) and gRPC-Web."""

    def __init__(self, calls: Calls, streams: StreamCalls, max_message_bytes: int) -> None:
        codecs: Sequence[Codec[Any, Any]] = (ProtoCodec(), JsonCodec())
        super().__init__(
            service=ChatHandlers(calls, streams),
            endpoints=ChatHandlers.endpoints,
            interceptors=(Admittance(calls),),
            read_max_bytes=max_message_bytes,
            codecs=codecs,
        )

    @property
    def path(self) -> str:
        return f"/{SERVICE}"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Take the timeout headers out of the request: the gateway keeps the call's deadline itself."""
        if scope["type"] == "http":
            deadline = None
            kept = []
            for name, value in scope.get("headers", ()):
                seconds = timeout_seconds(name, value) if name in TIMEOUT_HEADERS else None
                if seconds is None:
                    kept.append((name, value))  # a malformed one is left for connectrpc to refuse
                else:
                    deadline = asyncio.get_running_loop().time() + seconds
            scope = {**scope, "headers": kept}
            _deadline.set(deadline)
        await super().__call__(scope, receive, send)
