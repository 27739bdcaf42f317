"""`Simulator`: a loopback HTTP server that answers `POST /v1/messages` as the Claude API does.

A request is checked as the real API checks it (path, method, credentials, `anthropic-version`,
body; see `validation`), then answered with the deterministic reply of `model`: a 200 SSE stream
(`Transfer-Encoding: chunked`, one chunk per event, written as it is produced, paced by `Pace`)
when `"stream": true`, else a JSON Message. Each response carries a `request-id: req_...`;
connections are kept alive. A fault queued with `enqueue` (or, failing that, one named by a
prompt directive, see `directives`) changes how a POST /v1/messages is answered. Queued faults
are taken by requests that pass the path, method and credential checks, even if their body is
then rejected; an `HttpError` or a `Replay` is answered without checking the body at all.
"""

import asyncio
import json
import ssl
from collections import deque
from collections.abc import Sequence
from itertools import count
from types import TracebackType
from typing import Any, Self

from . import model, sse
from .connection import Connection, Request, UnreadableRequestError
from .directives import parse
from .faults import (
    STATUS_BY_ERROR_TYPE,
    Cut,
    EndWithoutStop,
    ErrorEvent,
    Fault,
    HttpError,
    Malformed,
    Replay,
    Stall,
    StreamFault,
)
from .pace import Pace
from .recording import RecordedRequest
from .validation import RejectedRequestError, check_body, check_headers

_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
_JSON_HEADERS = {"content-type": "application/json"}


_UNPACED = Pace()


class Simulator:
    """The server; `async with Simulator(...) as sim:` (or `start`/`stop`) on the running loop."""

    def __init__(
        self,
        pace: Pace = _UNPACED,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        connection: type[Connection] = Connection,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``connection`` is the class that serves each TCP connection; a subclass can observe or
        alter what is written (the benchmark stamps send times into text deltas with one). With
        ``tls`` (a server context) it serves HTTPS, as the real API does."""
        self.tls = tls
        self.pace = pace
        self.api_key = api_key
        self.host = host
        self.port = port  # the bound port once started
        self._connection_class = connection
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._serials = count(1)
        self.accepted = 0  # connections accepted since start: a client that reuses its connections makes few
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return sum(not connection.closed.is_set() for connection in self._connections)

    def enqueue(self, *faults: Fault) -> None:
        """Have the next POST /v1/messages requests, one fault each in order, misbehave."""
        self._faults.extend(faults)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is None:
            return
        self._server.close()
        for connection in self._connections:
            connection.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self._connection_class(reader, writer)
        handler = asyncio.current_task()
        assert handler is not None  # start_server runs each connection in a task
        self._connections.add(connection)
        self._handlers.add(handler)
        self.accepted += 1
        try:
            while (request := await connection.read_request()) is not None:
                if not await self._respond(connection, request) or not request.keep_alive:
                    break
        except UnreadableRequestError as exc:
            body = _error_body("invalid_request_error", str(exc), None)
            await connection.send_response(400, {**_JSON_HEADERS, "connection": "close"}, body)
        finally:
            await connection.close()
            self._connections.discard(connection)
            self._handlers.discard(handler)

    async def _respond(self, connection: Connection, request: Request) -> bool:
        """Answer `request`; True if the connection can carry another one."""
        path = request.target.partition("?")[0]
        record = RecordedRequest(
            request.method, path, request.headers, _json_or_none(request.body), asyncio.get_running_loop().time()
        )
        self.requests.append(record)
        connection.on_close(record.mark_closed)
        serial = next(self._serials)
        request_id = record.request_id = f"req_sim{serial:017d}"
        answer = _Answer(connection, record, request_id)
        try:
            if path != "/v1/messages":
                raise RejectedRequestError(404, "not_found_error", "Not Found")
            if request.method != "POST":
                raise RejectedRequestError(405, "invalid_request_error", f"Method {request.method} is not allowed")
            version = check_headers(request.headers, self.api_key)
            fault = self._faults.popleft() if self._faults else None
            if isinstance(fault, HttpError):
                return await answer.error(fault)
            if isinstance(fault, Replay):
                return await answer.stream(
                    sse.split(fault.body), None, self.pace, fault.headers or {}, end_delay=fault.end_delay
                )
            body = check_body(request.body, version)
            try:
                directives = parse(model.prompt_of(body))
            except ValueError as exc:
                raise RejectedRequestError(400, "invalid_request_error", str(exc)) from exc
        except RejectedRequestError as rejection:
            return await answer.error(HttpError(rejection.status, rejection.error_type, rejection.message))
        fault = fault or directives.fault
        if isinstance(fault, HttpError):
            return await answer.error(fault)
        assert not isinstance(fault, Replay)  # directives name no replays
        events = model.reply(body, prompt=directives.prompt, length=directives.tokens, serial=serial)
        pace = directives.pace(self.pace)
        if body.get("stream") is True:
            return await answer.stream([sse.frame(e, i) for i, e in enumerate(events)], fault, pace, {})
        return await answer.message(events, fault, pace)


class _Answer:
    """The response to one request, written to its connection and noted in its record."""

    def __init__(self, connection: Connection, record: RecordedRequest, request_id: str) -> None:
        self._connection = connection
        self._record = record
        self._request_id = request_id
        self._start = connection.written  # where this response begins on a keep-alive connection

    def _sent(self, ok: bool) -> bool:
        """Note in the record the bytes of this response handed to the socket so far; pass ``ok`` on."""
        self._record.bytes_sent = self._connection.written - self._start
        return ok

    async def error(self, error: HttpError) -> bool:
        headers = {**_JSON_HEADERS, "request-id": self._request_id}
        if error.retry_after is not None:
            headers["retry-after"] = f"{error.retry_after:g}"
        if error.retry_after_ms is not None:
            headers["retry-after-ms"] = str(error.retry_after_ms)
        if error.should_retry is not None:
            headers["x-should-retry"] = "true" if error.should_retry else "false"
        self._record.status = error.status
        body = _error_body(error.error_type, error.message, self._request_id)
        return self._sent(await self._connection.send_response(error.status, headers, body))

    async def message(self, events: Sequence[model.Event], fault: StreamFault | None, pace: Pace) -> bool:
        """A non-streaming answer; it takes as long as the stream would."""
        match fault:
            case Cut() | EndWithoutStop():
                self._connection.abort()
                return False
            case Stall():
                await self._connection.closed.wait()
                return False
            case ErrorEvent(error_type=error_type, message=text):
                return await self.error(HttpError(STATUS_BY_ERROR_TYPE.get(error_type, 500), error_type, text))
        deltas = sum(event["type"] == "content_block_delta" for event in events)
        if not await self._connection.idle(sum(pace.delay(i == 0) for i in range(deltas))):
            return False
        body = b"{not json" if isinstance(fault, Malformed) else json.dumps(model.message(events)).encode()
        self._record.status = 200
        return self._sent(
            await self._connection.send_response(200, {**_JSON_HEADERS, "request-id": self._request_id}, body)
        )

    async def stream(
        self,
        frames: list[bytes],
        fault: StreamFault | None,
        pace: Pace,
        headers: dict[str, str],
        end_delay: float = 0.0,
    ) -> bool:
        """Stream `frames`, misbehaving as `fault` says after its number of them; end the body
        `end_delay` seconds after the last frame."""
        if isinstance(fault, Stall) and fault.after_events < 0:
            await self._connection.closed.wait()
            return False
        self._record.status = 200
        head = {**_SSE_HEADERS, "request-id": self._request_id, **headers}
        if not self._sent(await self._connection.start_chunked(200, head)):
            return False
        delays = _delays(frames, pace)
        at = len(frames) if fault is None else min(fault.after_events, len(frames))
        if not await self._send(frames[:at], delays[:at], pace):
            return False
        match fault:
            case ErrorEvent(error_type=error_type, message=text):
                frame = b"event: error\ndata: %s\n\n" % _error_body(error_type, text, self._request_id)
                if not await self._event(frame):
                    return False
            case Cut():
                self._connection.abort()
                return False
            case Stall():
                await self._connection.closed.wait()
                return False
            case Malformed():
                if not await self._event(sse.MALFORMED) or not await self._send(frames[at:], delays[at:], pace):
                    return False
        if end_delay > 0 and not await self._connection.idle(end_delay):
            return False
        return self._sent(await self._connection.end_chunked())

    async def _send(self, frames: list[bytes], delays: list[float], pace: Pace) -> bool:
        for frame, delay in zip(frames, delays, strict=True):
            if not await self._pause(delay, pace) or not await self._event(frame):
                return False
        return True

    async def _pause(self, seconds: float, pace: Pace) -> bool:
        """Wait `seconds`, with a keep-alive ping every `pace.ping_interval` of it."""
        if pace.ping_interval > 0:
            while seconds > pace.ping_interval:
                if not await self._connection.idle(pace.ping_interval) or not await self._event(sse.PING):
                    return False
                seconds -= pace.ping_interval
        return await self._connection.idle(seconds)

    async def _event(self, frame: bytes) -> bool:
        if not self._sent(await self._connection.send_chunk(frame)):
            return False
        self._record.events_sent += 1
        return True


def _delays(frames: Sequence[bytes], pace: Pace) -> list[float]:
    """The wait before each frame: `ttft` before the first delta, the token interval before the others."""
    delays: list[float] = []
    first = True
    for frame in frames:
        delta = sse.is_delta(frame)
        delays.append(pace.delay(first) if delta else 0.0)
        first = first and not delta
    return delays


def _error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body, separators=(",", ":")).encode()


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
