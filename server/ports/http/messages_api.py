"""The Messages API on the HTTP port: what the official Anthropic SDKs speak, with only their base URL
(the gateway's HTTP port) and their API key (a caller token) changed.

    POST /v1/messages               "stream": true: text/event-stream, the upstream's events; else the message
    POST /v1/messages/count_tokens  {"input_tokens": N}, the API's own count
    GET  /v1/models                 the models the caller may name, in pages as the API gives them
    GET  /v1/models/{id}            one of them

Every call runs the path gRPC and Connect run (``server.call.runner.Calls.run`` for messages,
``server.call.lookups`` for the others): ``ApiCallContext`` is this protocol's
``server.call.context.CallContext``, and each message runs in a task of its own, which a client
that goes away cancels (the upstream request closes with it). The request's JSON becomes the same
protobuf request a gRPC caller sends (``claude_gateway.codec``, lossless), so admission checks it
and the upstream gets it as the caller wrote it. A stream relays each upstream event as the upstream
framed it (``event: NAME`` + ``data: JSON``), byte for byte; the gateway only re-frames what came in
another SSE form (CR line ends, comments, several data lines). A non-streaming reply is the message
the SDK's stream helper accumulates, as CreateMessage returns it.

Headers: the caller token is ``x-api-key`` or ``authorization: Bearer``; ``anthropic-beta`` and
``anthropic-version`` go upstream (as a gRPC request's ``betas`` and ``anthropic_version``); the SDKs'
``x-stainless-timeout`` (their timeout, in seconds) is the call's deadline. ``claude-gateway-detach-grace:
SECONDS`` asks for a resumable stream (``server.call.resumable``): its response names it
(``claude-gateway-stream-id``) at once, and each event carries an SSE ``id: STREAM:N``, so that a request
sent again with ``Last-Event-ID`` (what SSE clients send when they reconnect) resumes it after event N,
wherever the events are kept; its events are then the codec's JSON of each event, not the upstream's bytes.
The gateway's refusals and failures are the API's error JSON with the HTTP status the SDKs map to their error classes
(``api_error``, one table), a ``request-id`` header, and ``retry-after`` where waiting helps; after a
stream has begun, an ``event: error`` frame in that JSON ends it, as the API ends one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple, NoReturn
from urllib.parse import parse_qs

import grpc
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from claude_gateway.wire import REQUEST_ID_KEY, STATUS_DETAILS_KEY, STREAM_ID_KEY, USAGE_KEY
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from server.call.admission import Pending, Undecodable
from server.call.delivery import MessageAccumulator
from server.call.events import Event
from server.call.lookups import Lookups
from server.call.resumable import StreamCalls
from server.call.runner import Calls
from server.errors import GatewayError
from server.limits.bodies import WAIT_SECONDS, Reservation
from server.reasons import Reason
from server.redaction import shown
from server.streams.ids import new_id
from server.upstream.failures import TYPE_BY_STATUS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/v1/"  # every path this module serves starts so
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
MODELS = "/v1/models"
DEFAULT_PAGE, MAX_PAGE = 20, 1000  # models per page: the API's default and most

# The gateway's own failures (ErrorInfo.reason) as the API would say them: HTTP status and error type.
# The SDKs raise by status: 400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
# 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError; they retry 429 and 5xx (honouring
# retry-after), unless x-should-retry says no (``NOT_RETRIED``).
GATEWAY_ERRORS: Mapping[str, tuple[int, str]] = {
    Reason.INVALID_REQUEST.name: (400, "invalid_request_error"),
    Reason.TOO_MANY_STREAMS.name: (529, "overloaded_error"),  # the gateway's own limit, not the caller's
    Reason.BODY_BUDGET_EXHAUSTED.name: (529, "overloaded_error"),  # the gateway's memory for bodies, not the caller's
    Reason.SHUTTING_DOWN.name: (529, "overloaded_error"),  # another replica can take it
    Reason.FIRST_EVENT_TIMEOUT.name: (504, "timeout_error"),
    Reason.UPSTREAM_IDLE_TIMEOUT.name: (504, "timeout_error"),
    Reason.MAX_STREAM_DURATION.name: (504, "timeout_error"),
    Reason.DEADLINE_EXCEEDED.name: (504, "timeout_error"),
    Reason.CALLER_UNAUTHENTICATED.name: (401, "authentication_error"),
    Reason.CALLER_NOT_ALLOWED.name: (403, "permission_error"),
    Reason.MODEL_NOT_ALLOWED.name: (403, "permission_error"),
    Reason.MAX_TOKENS_OVER_LIMIT.name: (400, "invalid_request_error"),  # waiting will not help
    Reason.QUOTA_EXCEEDED.name: (429, "rate_limit_error"),
    Reason.QUOTA_STORE_UNAVAILABLE.name: (500, "api_error"),
    Reason.GATEWAY_NOT_CONFIGURED.name: (500, "api_error"),
    Reason.MODEL_NOT_SERVED.name: (404, "not_found_error"),  # as the API answers a model it does not know
    Reason.NO_BACKEND_AVAILABLE.name: (529, "overloaded_error"),  # retry-after when a key cools down
    Reason.UPSTREAM_UNREACHABLE.name: (502, "api_error"),
    Reason.UPSTREAM_MALFORMED_HTTP.name: (502, "api_error"),
    Reason.UPSTREAM_TIMEOUT.name: (504, "timeout_error"),
    Reason.UPSTREAM_CONNECTION_LOST.name: (502, "api_error"),
    Reason.UPSTREAM_INCOMPLETE_STREAM.name: (502, "api_error"),
    Reason.UPSTREAM_MALFORMED_EVENT.name: (502, "api_error"),
    Reason.UPSTREAM_ECHOED_SECRET.name: (502, "api_error"),
    Reason.UPSTREAM_OUT_OF_ORDER.name: (502, "api_error"),
    Reason.UPSTREAM_EVENT_TOO_LARGE.name: (502, "api_error"),
    Reason.REPLY_TOO_LARGE.name: (500, "api_error"),
    Reason.UPSTREAM_REDIRECTED.name: (502, "api_error"),
    Reason.UPSTREAM_COMPRESSED.name: (502, "api_error"),
    Reason.STREAM_NOT_FOUND.name: (404, "not_found_error"),  # Last-Event-ID of a stream never seen
    Reason.STREAM_EXPIRED.name: (404, "not_found_error"),
    Reason.STREAM_OF_ANOTHER_CALLER.name: (403, "permission_error"),
    Reason.STREAM_CANCELLED.name: (400, "invalid_request_error"),  # the caller's own doing: not an API failure
    Reason.STREAM_ABANDONED.name: (400, "invalid_request_error"),
    Reason.STREAM_NOT_RESUMABLE.name: (400, "invalid_request_error"),
    Reason.STREAM_PRODUCER_LOST.name: (502, "api_error"),  # the SDK's retry starts the request over
    Reason.STREAM_STORE_UNAVAILABLE.name: (500, "api_error"),
    Reason.GATEWAY_ERROR.name: (500, "api_error"),
}
# Failures no retry can mend, though their status is one the SDKs retry: sent with x-should-retry: false.
NOT_RETRIED = frozenset(
    r.name
    for r in (
        Reason.GATEWAY_NOT_CONFIGURED,
        Reason.DEADLINE_EXCEEDED,
        Reason.REPLY_TOO_LARGE,
        Reason.UPSTREAM_REDIRECTED,
        Reason.UPSTREAM_COMPRESSED,
        Reason.UPSTREAM_ECHOED_SECRET,
    )
)
# Failures worth a retry only when the gateway says when (RetryInfo): without it, x-should-retry: false
# (a request over a quota by itself; every key of the model dead rather than cooling down).
_RETRIED_ONLY_WHEN_SAID = frozenset((Reason.QUOTA_EXCEEDED.name, Reason.NO_BACKEND_AVAILABLE.name))
# The API's error types and their HTTP statuses: an upstream error of a known type gets its type's status
# (an `error` event before the first event was relayed came without one; Bedrock and Vertex answer some
# types with statuses of their own, as Bedrock's 503 for an overload); a status without a known type gets
# the type of its status.
API_STATUSES: Mapping[str, int] = {kind: status for status, kind in TYPE_BY_STATUS.items()}

_TIMEOUT = re.compile(r"[0-9]{1,7}(\.[0-9]{1,9})?")
DETACH_GRACE = "claude-gateway-detach-grace"  # request header: a resumable stream, with this detach grace
LAST_EVENT_ID = "last-event-id"  # request header: resume the stream after this event (``STREAM:N``)
_EVENT_ID = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,19})")
_INDEX = re.compile(r"\[([0-9]+)\]")
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_JSON_TYPE = (b"content-type", b"application/json")


class _Status(NamedTuple):
    """A call's final status, as grpc.Status spells it."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class RefusedError(Exception):
    """Raised by ``ApiCallContext.abort_with_status``: the call ended with ``status``."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class ApiCallContext:
    """The ``CallContext`` of one Messages API request."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], client: str, deadline: float | None) -> None:
        self._metadata = metadata
        self._client = client
        self._deadline = deadline
        self.request_id: str | None = None  # the upstream's, once it answered
        self.stream_id: str | None = None  # a resumable stream's, as soon as it is known
        self.on_stream: Callable[[], Awaitable[None]] | None = None  # hears the stream id: the response begins
        self.trailer: tuple[tuple[str, str | bytes], ...] = ()  # the usage report, a failure's details
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request headers as gRPC metadata; an ``x-api-key`` is also ``authorization: Bearer``."""
        return self._metadata

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline, None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """Keeps the upstream request id for the response's ``request-id`` header, and a resumable stream's id
        (whose response then begins at once)."""
        for key, value in metadata:
            if key == REQUEST_ID_KEY:
                self.request_id = value
            elif key == STREAM_ID_KEY:
                self.stream_id = value
        if self.stream_id is not None and self.on_stream is not None:
            on_stream, self.on_stream = self.on_stream, None
            await on_stream()

    def header(self, name: str) -> str | None:
        """The request header ``name`` (lower case), None without one."""
        return next((value for key, value in self._metadata if key == name), None)

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Keeps the usage report (a header of a non-streaming reply) and a failure's rich details."""
        self.trailer = (*self.trailer, *metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        """The call's status code (not OK: the call failed)."""
        self._code = code

    def set_details(self, details: str) -> None:
        """The call's status message."""
        self._details = details

    def refusal(self) -> RefusedError | None:
        """The failure the call ended with, as the port answers it; None if it ended OK."""
        if self._code is None or self._code is grpc.StatusCode.OK:
            return None
        return RefusedError(_Status(self._code, self._details, self.trailer))

    def peer(self) -> str:
        """The client's address, as grpc spells it."""
        return self._client

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """End the call with ``status``: the port answers it as the API's error (``api_error``)."""
        raise RefusedError(status)


def call_context(scope: Scope) -> tuple[ApiCallContext, list[str], str | None]:
    """The call's context, betas (``anthropic-beta``, comma-joined, any number of times) and API version
    (``anthropic-version``) from the request headers; the deadline from ``x-stainless-timeout``."""
    metadata: list[tuple[str, str]] = []
    betas: list[str] = []
    version = api_key = None
    deadline = None
    bearer = False
    for raw_key, raw_value in scope.get("headers", ()):
        key, value = raw_key.decode("latin-1").lower(), raw_value.decode("latin-1")
        metadata.append((key, value))
        if key == "anthropic-beta":
            betas += [b.strip() for b in value.split(",") if b.strip()]
        elif key == "anthropic-version":
            version = value.strip()
        elif key == "x-api-key":
            api_key = value.strip()
        elif key == "authorization":
            bearer = bearer or value[:7].lower() == "bearer "
        elif key == "x-stainless-timeout" and _TIMEOUT.fullmatch(value.strip()):
            seconds = float(value)
            if seconds > 0:
                deadline = asyncio.get_running_loop().time() + seconds
    if api_key and not bearer:
        metadata.append(("authorization", f"Bearer {api_key}"))
    client = scope.get("client")
    peer = f"ipv4:{client[0]}:{client[1]}" if client else "unknown"
    return ApiCallContext(tuple(metadata), peer, deadline), betas, version


def message_request(data: bytes, betas: list[str], version: str | None) -> tuple[Any, bool]:
    """The protobuf request a Messages API body stands for (StreamMessageRequest when ``"stream": true``,
    else CreateMessageRequest), or ``Undecodable`` saying why there is none; and whether it streams."""
    obj, problem = _json_object(data)
    if problem is not None:
        return problem, False
    stream = obj.pop("stream", False)
    if type(stream) is not bool:
        return Undecodable("must be true or false", "stream", "not a boolean"), False
    request = pb.StreamMessageRequest() if stream else pb.CreateMessageRequest()
    params = _params(obj)
    if isinstance(params, Undecodable):
        return params, stream
    request.params.CopyFrom(params)
    request.betas.extend(betas)
    if version is not None:
        request.anthropic_version = version
    return request, stream


def count_request(data: bytes, betas: list[str], version: str | None) -> pb.CountTokensRequest | Undecodable:
    """The CountTokensRequest a count_tokens body stands for, or ``Undecodable`` saying why there is none."""
    obj, problem = _json_object(data)
    if problem is not None:
        return problem
    params = _params(obj)
    if isinstance(params, Undecodable):
        return params
    request = pb.CountTokensRequest(params=params, betas=betas)
    if version is not None:
        request.anthropic_version = version
    return request


def _json_object(data: bytes) -> tuple[dict[str, Any], Undecodable | None]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return {}, Undecodable(str(exc) if isinstance(exc, ValueError) else "nested too deep", "body", "not JSON")
    if type(obj) is not dict:
        return {}, Undecodable("the body must be a JSON object", "body", "not a request")
    return obj, None


def _params(obj: dict[str, Any]) -> pb.MessageCreateParams | Undecodable:
    try:
        return codec.from_json(obj, pb.MessageCreateParams())
    except (ValueError, TypeError, RecursionError, json_format.ParseError) as exc:
        return Undecodable(str(exc) or type(exc).__name__, "body", "not a Messages API request")


def sse(batch: list[Event]) -> bytes:
    """The events of one batch as the API frames them: ``event: NAME``, ``data: JSON``, a blank line.
    The data text is the upstream's own; data of several lines (rare) keeps its lines."""
    return "".join(
        f"event: {name}\ndata: {data}\n\n" if "\n" not in data else f"event: {name}\ndata: {_lines(data)}\n\n"
        for name, _, data in batch
    ).encode()


def _lines(data: str) -> str:
    return data.replace("\n", "\ndata: ")


def sse_numbered(stream_id: str, response: pb.StreamMessageResponse) -> bytes:
    """The events of one response of a resumable stream, each framed with its id (``STREAM:N``) for
    ``Last-Event-ID``."""
    frames = []
    for i, event in enumerate(response.events):
        obj = codec.to_json(event)
        frames.append(f"id: {stream_id}:{response.sequence + i}\nevent: {obj['type']}\ndata: {_JSON.encode(obj)}\n\n")
    return "".join(frames).encode()


def api_error(status: grpc.Status, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any]]:
    """The API's answer for a failed call: HTTP status, headers (``retry-after`` and ``retry-after-ms``
    when the status says when to retry, ``x-should-retry: false`` when nothing will mend it) and the
    error JSON. The upstream's own errors keep their type, answered with its status in the API; the gateway's follow
    ``GATEWAY_ERRORS``."""
    info, retry, bad = _details(status)
    reason = info.reason if info is not None else Reason.GATEWAY_ERROR.name
    metadata = info.metadata if info is not None else {}
    message = status.details or reason
    if bad is not None and bad.field_violations:
        message = "; ".join(f"{api_path(v.field)}: {v.description}" for v in bad.field_violations)
    upstream_type = metadata.get("error_type")
    upstream_status = int(metadata["http_status"]) if metadata.get("http_status", "").isdigit() else None
    if reason in GATEWAY_ERRORS:
        http, kind = GATEWAY_ERRORS[reason]
    elif upstream_type is not None and upstream_type in API_STATUSES:  # whichever platform said it (Bedrock: 503)
        http, kind = API_STATUSES[upstream_type], upstream_type
    elif upstream_type:
        http = upstream_status if upstream_status and 400 <= upstream_status < 600 else 500
        kind = upstream_type
    else:
        http = upstream_status if upstream_status and 400 <= upstream_status < 600 else 502
        kind = TYPE_BY_STATUS.get(http, "api_error")
    headers = [_JSON_TYPE, (b"request-id", (metadata.get("request_id") or request_id).encode())]
    if retry is not None:
        seconds = retry.retry_delay.ToNanoseconds() / 1e9
        headers.append((b"retry-after", str(max(1, math.ceil(seconds))).encode()))
        headers.append((b"retry-after-ms", str(max(1, math.ceil(seconds * 1e3))).encode()))
    elif reason in NOT_RETRIED or reason in _RETRIED_ONLY_WHEN_SAID:
        headers.append((b"x-should-retry", b"false"))  # no RetryInfo: no wait will mend it
    body = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": metadata.get("request_id") or request_id,
    }
    return http, headers, body


def api_path(field: str) -> str:
    """A BadRequest field path as the API writes one: ``params.messages[0].role`` -> ``messages.0.role``."""
    return _INDEX.sub(r".\1", field.removeprefix("params."))


def _details(
    status: grpc.Status,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.RetryInfo | None, error_details_pb2.BadRequest | None]:
    found: dict[str, Any] = {}
    for key, value in status.trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
                    if detail.Is(cls.DESCRIPTOR):
                        found[cls.__name__] = cls()
                        detail.Unpack(found[cls.__name__])
    return found.get("ErrorInfo"), found.get("RetryInfo"), found.get("BadRequest")


def new_request_id() -> str:
    """A request id for an answer the upstream had no part in (a refusal before any upstream call)."""
    return f"req_gateway_{secrets.token_hex(12)}"


def paged(data: list[dict[str, Any]], query: Mapping[str, list[str]]) -> dict[str, Any] | str:
    """One page of a model list as GET /v1/models gives it (``limit``, ``after_id``, ``before_id``), or
    what is wrong with the query."""
    raw_limit = query.get("limit", [str(DEFAULT_PAGE)])[-1]
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        return f"limit: must be a whole number from 1 to {MAX_PAGE}"
    limit = int(raw_limit)
    ids = [m["id"] for m in data]
    after, before = query.get("after_id", [""])[-1], query.get("before_id", [""])[-1]
    if before:
        end = ids.index(before) if before in ids else len(ids)
        start = max(0, end - limit)
        page, more = data[start:end], start > 0
    else:
        start = ids.index(after) + 1 if after in ids else 0
        page, more = data[start : start + limit], start + limit < len(data)
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


class MessagesApi:
    """The ASGI application of the ``/v1/`` paths."""

    def __init__(self, calls: Calls, streams: StreamCalls) -> None:
        self._calls = calls
        self._streams = streams
        self._lookups = Lookups(calls)
        self._limit = calls.settings.max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"].rstrip("/")
        want = {MESSAGES: "POST", COUNT_TOKENS: "POST", MODELS: "GET"}.get(path)
        if want is None and path.startswith(MODELS + "/"):
            want = "GET"
        if want is None:
            await _answer(send, 404, [_JSON_TYPE], _error_json("not_found_error", f"no such path: {path}"))
            return
        if method != want:
            message = f"method {method} is not allowed on {path}; use {want}"
            await _answer(
                send, 405, [_JSON_TYPE, (b"allow", want.encode())], _error_json("invalid_request_error", message)
            )
            return
        context, betas, version = call_context(scope)
        if path == MODELS or path.startswith(MODELS + "/"):
            await self._models(scope, send, context, path)
            return
        size = content_length(scope)
        if size is not None and size > self._limit:  # refused on its header, before a byte of it is read
            await _answer(send, 413, [_JSON_TYPE], _error_json("request_too_large", self._too_large()))
            return
        # The caller, drain, the policy, the concurrency limit and room in the body budget, decided on the
        # headers before the body is read: a refused caller never costs its body.
        reservation = await self._enter(send, context, "CountTokens" if path == COUNT_TOKENS else "CreateMessage", size)
        if reservation is None:
            return
        detached = False  # a resumable stream's producer, admitted, holds the reservation to its own end
        try:
            data = await _body(receive, self._limit)
            if data is None:
                return  # the client left
            if isinstance(data, int):
                await _answer(send, 413, [_JSON_TYPE], _error_json("request_too_large", self._too_large()))
                return
            reservation.resize(len(data))
            if path == COUNT_TOKENS:
                await self._count(send, context, count_request(data, betas, version))
                return
            request, stream = message_request(data, betas, version)
            held = Pending(request, len(data))
            del data, request  # held by ``held`` until admission takes it, then by no frame of this port
            detached = await self._message(receive, send, context, held, stream, reservation)
        finally:
            if not detached:
                reservation.release()

    def _too_large(self) -> str:
        return f"the request body is over GATEWAY_MAX_MESSAGE_BYTES ({self._limit} bytes)"

    async def _enter(self, send: Send, context: ApiCallContext, method: str, size: int | None) -> Reservation | None:
        """The call's room in the body budget once its headers admit it; None once a refusal was answered
        (logged and counted as a call, under ``method``: a message's body, which says whether it streams,
        is unread)."""
        admission = self._calls.admission
        try:
            admission.entry(context)
            remaining = context.time_remaining()
            return await admission.reserve(size, WAIT_SECONDS if remaining is None else remaining)
        except GatewayError as exc:
            status = self._calls.refuse(method, context, exc.failure)
        await _answer(send, *api_error(status, new_request_id()))
        return None

    async def _message(
        self,
        receive: Receive,
        send: Send,
        context: ApiCallContext,
        request: Pending,
        stream: bool,
        reservation: Reservation,
    ) -> bool:
        """Answer a message request; True when the caller left a resumable stream that goes on without it (its
        producer gives the reservation back when it ends)."""
        started = False
        accumulator: MessageAccumulator | None = None
        last_event = context.header(LAST_EVENT_ID)
        grace = context.header(DETACH_GRACE)
        if stream and (last_event is not None or grace is not None):
            return await self._resumable(receive, send, context, request, last_event, grace, reservation)
        if stream:

            async def deliver(batch: list[Event]) -> None:
                nonlocal started
                if not started:
                    started = True
                    headers = [*_SSE_HEADERS, (b"request-id", (context.request_id or new_request_id()).encode())]
                    if context.stream_id is not None:
                        headers.append((STREAM_ID_KEY.encode(), context.stream_id.encode()))
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": sse(batch), "more_body": True})

        else:
            accumulator = MessageAccumulator(self._calls.settings.max_message_bytes, request.betas)
            deliver = accumulator.add
        method = "StreamMessage" if stream else "CreateMessage"
        stream_id = new_id() if stream else None
        call = asyncio.ensure_future(
            self._calls.run(method, context, request, deliver, reservation, stream_id=stream_id)
        )
        refused = await _until_done(call, receive) or context.refusal()
        if call.cancelled():
            return False  # the client left: nothing to answer
        if refused is not None:
            http, headers, body = api_error(refused.status, context.request_id or new_request_id())
            if started:  # the stream has begun: its last frame is the error, as the API's would be
                frame = f"event: error\ndata: {_JSON.encode(body)}\n\n".encode()
                await send({"type": "http.response.body", "body": frame, "more_body": False})
            else:
                await _answer(send, http, headers, body)
            return False
        if stream:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
        assert accumulator is not None
        headers = [_JSON_TYPE, (b"request-id", (context.request_id or new_request_id()).encode())]
        headers += [(k.encode(), v.encode() if isinstance(v, str) else v) for k, v in context.trailer if k == USAGE_KEY]
        await _answer(send, 200, headers, codec.to_json(accumulator.response().message))
        return False

    async def _resumable(
        self,
        receive: Receive,
        send: Send,
        context: ApiCallContext,
        request: Pending,
        last_event: str | None,
        grace: str | None,
        reservation: Reservation,
    ) -> bool:
        """A resumable stream (``claude-gateway-detach-grace``), or one resumed (``Last-Event-ID``): its
        response begins as soon as the stream is named, and each event carries its id. True when the caller
        left a stream that goes on: its producer, admitted (the stream is named), holds ``reservation``."""
        started = False

        async def begin() -> None:
            nonlocal started
            started = True
            assert context.stream_id is not None
            headers = [
                *_SSE_HEADERS,
                (b"request-id", (context.request_id or new_request_id()).encode()),
                (STREAM_ID_KEY.encode(), context.stream_id.encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def write(response: Any) -> None:
            message = pb.StreamMessageResponse.FromString(response) if type(response) is bytes else response
            assert context.stream_id is not None
            await send(
                {"type": "http.response.body", "body": sse_numbered(context.stream_id, message), "more_body": True}
            )

        context.on_stream = begin
        work: Awaitable[Any]
        if last_event is not None:
            found = _EVENT_ID.fullmatch(last_event.strip())
            if found is None:
                message = f"Last-Event-ID: {shown(last_event)!r} is not an event id this gateway gave (STREAM:N)"
                await _answer(send, 400, [_JSON_TYPE], _error_json("invalid_request_error", message))
                return False
            resume = pb.ResumeStreamRequest(stream_id=found[1], after_seq=int(found[2]))
            work = self._streams.resume(context, resume, write)
        else:
            seconds = grace.strip() if grace is not None else ""
            if not seconds.isdigit() or not 0 < int(seconds) < 2**32:
                message = f"{DETACH_GRACE}: must be a whole number of seconds, at least 1"
                await _answer(send, 400, [_JSON_TYPE], _error_json("invalid_request_error", message))
                return False
            request.detach_grace(int(seconds))
            work = self._streams.stream_message(context, request, write, reservation)
        call = asyncio.ensure_future(work)
        refused = await _until_done(call, receive) or context.refusal()
        if call.cancelled():
            # The client left: a stream it started goes on without it for its detach grace (named, so admitted).
            return started and last_event is None
        if refused is not None:
            http, headers, body = api_error(refused.status, context.request_id or new_request_id())
            if started:  # the stream has begun: its last frame is the error, as the API's would be
                frame = f"event: error\ndata: {_JSON.encode(body)}\n\n".encode()
                await send({"type": "http.response.body", "body": frame, "more_body": False})
            else:
                await _answer(send, http, headers, body)
            return False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return False

    async def _count(self, send: Send, context: ApiCallContext, request: pb.CountTokensRequest | Undecodable) -> None:
        response = await self._lookups.count_tokens(context, request)
        refusal = context.refusal()
        if refusal is not None or response is None:
            assert refusal is not None
            await _answer(send, *api_error(refusal.status, context.request_id or new_request_id()))
            return
        headers = [_JSON_TYPE, (b"request-id", (context.request_id or new_request_id()).encode())]
        await _answer(send, 200, headers, codec.to_json(response))

    async def _models(self, scope: Scope, send: Send, context: ApiCallContext, path: str) -> None:
        request_id = new_request_id()
        response = await self._lookups.list_models(context)
        refusal = context.refusal()
        if refusal is not None or response is None:
            assert refusal is not None
            await _answer(send, *api_error(refusal.status, request_id))
            return
        data = [codec.to_json(m) for m in response.data]
        headers = [_JSON_TYPE, (b"request-id", request_id.encode())]
        if path == MODELS:
            page = paged(data, parse_qs(scope.get("query_string", b"").decode("latin-1")))
            if isinstance(page, str):
                await _answer(send, 400, headers, _error_json("invalid_request_error", page, request_id))
            else:
                await _answer(send, 200, headers, page)
            return
        wanted = path[len(MODELS) + 1 :]
        found = [m for m in data if m["id"] == wanted]
        if found:
            await _answer(send, 200, headers, found[0])
        else:
            message = f"model {shown(wanted)!r} is not among the models this caller may use"
            await _answer(send, 404, headers, _error_json("not_found_error", message, request_id))


async def _until_done(call: asyncio.Task[Any], receive: Receive) -> RefusedError | None:
    """Wait for ``call``, cancelling it (and waiting until it has closed the upstream) if the client
    goes away first; the refusal it ended with, if any."""
    left = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((call, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not call.done():
            call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((call,))
    if call.cancelled():
        return None
    error = call.exception()
    if isinstance(error, RefusedError):
        return error
    if error is not None:
        raise error
    return None


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _body(receive: Receive, limit: int) -> bytes | int | None:
    """The request body; its size so far when it is over ``limit``; None if the client left."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def content_length(scope: Scope) -> int | None:
    """The request body's size as its ``content-length`` header says, None without one (chunked)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return int(value) if value.isdigit() and len(value) < 19 else None
    return None


def _error_json(kind: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id or new_request_id()}


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: Mapping[str, Any]) -> None:
    data = _JSON.encode(body).encode()
    if not any(k == b"request-id" for k, _ in headers) and isinstance(body.get("request_id"), str):
        headers = [*headers, (b"request-id", body["request_id"].encode())]
    headers = [*headers, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
