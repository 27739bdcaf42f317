"""`Simulator`: a loopback HTTP server that answers as the Claude API does, on three platforms.

It serves the Messages API (`POST /v1/messages`), Amazon Bedrock's
(`POST /model/{model}/invoke-with-response-stream` and `/invoke`) and Google Vertex AI's
(`POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:streamRawPredict` and
`:rawPredict`); see `platforms` for what each takes and how each writes errors. `platforms=` limits
one simulator to some of them, so that several simulators, each on its own port, can play one
backend each.

A request is checked as the real platform checks it (path, method, credentials, version, body,
then on the Messages API the model, one of `catalog`'s names, else a 404; see `platforms` and
`validation`), then answered with the deterministic reply of `model`: a 200
stream (`Transfer-Encoding: chunked`, one chunk per event, written as it is produced, paced by
`Pace`: SSE, or AWS event-stream on Bedrock) when the request streams, else a JSON Message.
Connections are kept alive. Every answer on the Messages API path carries the key's rate-limit
headers (`ratelimits`). A fault queued with `enqueue` (or, failing that, one named by a prompt
directive, see `directives`) changes how a request is answered. Queued faults are taken by
requests that pass the path, method and credential checks (and match the fault's scope), even if
their body is then rejected; an `HttpError`, a `SpendLimit` or a `Replay` is answered without
checking the body at all.

`POST /v1/messages/count_tokens` and `GET /v1/models` (and `/v1/models/{id}`) are answered from the
catalog by `lookups`, checked as the API checks them; a count takes a queued `HttpError`, if one is
next. `requests` records every request; `count()` counts them by platform, key and model.
`GET /_simulator/requests` answers the same counts as JSON, for tests in another process.

For Vertex's application default credentials it also plays Google's OAuth 2.0 token endpoint:
`POST /token` (a credentials file's `token_uri`) answers a refresh with a new access token
`ya29.sim-N` valid for an hour, which the Vertex paths then accept; `tokens_issued` counts them.
These exchanges are not API requests: they are not recorded in `requests`.
"""

import asyncio
import hashlib
import json
import math
import ssl
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import count
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

from . import catalog, lookups, model, sse
from .connection import Connection, Request, UnreadableRequestError
from .directives import Directives, Seen, parse
from .faults import (
    STATUS_BY_ERROR_TYPE,
    Cut,
    EndWithoutStop,
    ErrorEvent,
    Fault,
    HttpError,
    Malformed,
    Replay,
    SpendLimit,
    Stall,
    StreamFault,
)
from .pace import Pace
from .platforms import Platform, Route, anthropic_error, credentials, error_response, messages_body, route
from .ratelimits import Buckets, Limits, RateLimiter
from .recording import RecordedRequest
from .validation import RejectedRequestError, check_headers, check_model
from .wire import EventStreamWire, SseWire, Wire

_JSON_HEADERS = {"content-type": "application/json"}
_UNPACED = Pace()
_SSE = SseWire()
COUNTS_PATH = "/_simulator/requests"
TOKEN_PATH = "/token"


def key_id(key: str) -> str:
    """The short id `GET /_simulator/requests` names a key by: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Queued:
    fault: Fault
    platform: str | None
    key: str | None

    def matches(self, platform: str, key: str) -> bool:
        return self.platform in (None, platform) and self.key in (None, key)


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
        *,
        keys: Iterable[str] | None = None,
        platforms: Iterable[str] = tuple(Platform),
        name: str | None = None,
        limits: Limits | None = None,
        models: Collection[str] = catalog.MODELS,
    ) -> None:
        """``connection`` is the class that serves each TCP connection; a subclass can observe or
        alter what is written (the benchmark stamps send times into text deltas with one). With
        ``tls`` (a server context) it serves HTTPS, as the real API does.

        ``api_key`` and ``keys`` are the only keys accepted (default: any); ``platforms`` those it
        serves (default: all three; a path of another answers 404); ``name`` is what a directive's
        ``name=`` scope matches; ``limits`` sizes every key's rate-limit buckets; ``models`` are the
        model names the Messages API serves (default: simulator/models.txt), any other answered 404
        not_found_error."""
        self.tls = tls
        self.models = models
        self.pace = pace
        self.api_key = api_key
        accepted = {*(keys or ()), *((api_key,) if api_key is not None else ())}
        self.keys: set[str] | None = accepted if keys is not None or api_key is not None else None
        self.platforms = frozenset(Platform(p) for p in platforms)
        self.name = name
        self.rate_limits = RateLimiter(limits or Limits())
        self.host = host
        self.port = port  # the bound port once started
        self._connection_class = connection
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Queued] = []
        self._serials = count(1)
        self.tokens_issued = 0  # access tokens minted at TOKEN_PATH
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

    def enqueue(self, *faults: Fault, platform: str | None = None, key: str | None = None) -> None:
        """Have the next requests, one fault each in order, misbehave; with ``platform`` or ``key``
        only requests to that platform or with that key take them."""
        scope = Platform(platform) if platform is not None else None
        self._faults.extend(_Queued(fault, scope, key) for fault in faults)

    def count(self, platform: str | None = None, key: str | None = None, model: str | None = None) -> int:
        """How many requests were received, of that platform, key and model (each None: any)."""
        return sum(
            (platform is None or r.platform == platform)
            and (key is None or r.key == key)
            and (model is None or r.model == model)
            for r in self.requests
        )

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
            body = anthropic_error("invalid_request_error", str(exc), None)
            await connection.send_response(400, {**_JSON_HEADERS, "connection": "close"}, body)
        finally:
            await connection.close()
            self._connections.discard(connection)
            self._handlers.discard(handler)

    def _take_fault(self, platform: str, key: str) -> Fault | None:
        for i, queued in enumerate(self._faults):
            if queued.matches(platform, key):
                del self._faults[i]
                return queued.fault
        return None

    async def _respond(self, connection: Connection, request: Request) -> bool:
        """Answer `request`; True if the connection can carry another one."""
        path = request.target.partition("?")[0]
        if path == COUNTS_PATH and request.method == "GET":
            return await connection.send_response(200, _JSON_HEADERS, self._counts())
        if path == TOKEN_PATH and request.method == "POST" and Platform.VERTEX in self.platforms:
            return await connection.send_response(200, _JSON_HEADERS, self._token(request.body))
        record = RecordedRequest(
            request.method, path, request.headers, _json_or_none(request.body), asyncio.get_running_loop().time()
        )
        self.requests.append(record)
        connection.on_close(record.mark_closed)
        serial = next(self._serials)
        request_id = record.request_id = f"req_sim{serial:017d}"
        if path in lookups.PATHS or path.startswith(lookups.MODEL_PATH):
            record.platform = Platform.ANTHROPIC
            return await self._lookup(request, path, _Answer(connection, record, request_id, Platform.ANTHROPIC))
        where = route(path)
        if where is None or where.platform not in self.platforms:
            return await _Answer(connection, record, request_id, Platform.ANTHROPIC).error(
                HttpError(404, "not_found_error", "Not Found"), None
            )
        record.platform, record.model = where.platform, where.model
        answer = _Answer(connection, record, request_id, where.platform)
        key: str | None = None
        try:
            if request.method != "POST":
                raise RejectedRequestError(405, "invalid_request_error", f"Method {request.method} is not allowed")
            key, version = credentials(where.platform, request.headers, self.keys)
            record.key, record.anthropic_version = key, version
            fault = self._take_fault(where.platform, key)
            if isinstance(fault, HttpError | SpendLimit):
                return await answer.error(fault, self._buckets(where, key))
            if isinstance(fault, Replay):
                frames = sse.split(fault.body)
                return await answer.stream(
                    frames,
                    [sse.is_delta(f) for f in frames],
                    None,
                    self.pace,
                    _wire(where),
                    fault.headers or {},
                    end_delay=fault.end_delay,
                    replay=True,
                )
            if where.platform is not Platform.ANTHROPIC and isinstance(record.body, dict):
                record.anthropic_version = record.body.get("anthropic_version")
            body = messages_body(where, request.body, version)
            record.model = body["model"]
            if where.platform is Platform.ANTHROPIC:
                check_model(body, self.models)
            try:
                directives = parse(model.prompt_of(body), Seen(where.platform, key, self.name))
            except ValueError as exc:
                raise RejectedRequestError(400, "invalid_request_error", str(exc)) from exc
        except RejectedRequestError as rejection:
            rejected = HttpError(rejection.status, rejection.error_type, rejection.message)
            return await answer.error(rejected, None if key is None else self._buckets(where, key))
        return await self._reply(answer, where, key, body, directives, fault, serial)

    async def _reply(
        self,
        answer: "_Answer",
        where: Route,
        key: str,
        body: dict[str, Any],
        directives: Directives,
        queued: Fault | None,
        serial: int,
    ) -> bool:
        buckets = self._buckets(where, key)
        if buckets is not None:
            wait = buckets.admit(time.time(), model.input_tokens(body), body["max_tokens"])
            for kind, remaining in directives.remaining.items():
                buckets.set(kind, remaining)
            if wait > 0:
                message = "This request would exceed your account's rate limit. Please try again later."
                limited = HttpError(429, "rate_limit_error", message, retry_after=float(math.ceil(wait)))
                return await answer.error(limited, buckets)
        fault = queued or directives.fault
        if isinstance(fault, HttpError | SpendLimit):
            return await answer.error(fault, buckets)
        assert not isinstance(fault, Replay)  # directives name no replays
        events = model.reply(body, prompt=directives.prompt, length=directives.tokens, serial=serial)
        if directives.model is not None:
            events[0]["message"]["model"] = directives.model
        pace = directives.pace(self.pace)
        headers = buckets.headers(time.time()) if buckets is not None else {}
        if buckets is not None:
            buckets.give_back(body["max_tokens"] - events[-2]["usage"]["output_tokens"])
        if body.get("stream") is not True:
            return await answer.message(events, fault, pace, headers)
        wire = _wire(where, events)
        frames = [wire.event(e, i) for i, e in enumerate(events)]
        deltas = [e["type"] == "content_block_delta" for e in events]
        return await answer.stream(frames, deltas, fault, pace, wire, headers)

    async def _lookup(self, request: Request, path: str, answer: "_Answer") -> bool:
        """Answer a count_tokens or models request (`lookups`), or refuse it as the API would. A count
        takes a queued `HttpError` if one is next."""
        want = "POST" if path == lookups.COUNT_PATH else "GET"
        try:
            if request.method != want:
                raise RejectedRequestError(405, "invalid_request_error", f"Method {request.method} is not allowed")
            version = check_headers(request.headers, self.keys)
            if path == lookups.COUNT_PATH:
                queued = self._faults[0].fault if self._faults else None
                if isinstance(queued, HttpError):
                    del self._faults[0]
                    return await answer.error(queued, None)
                body = lookups.count_tokens(request.body, version, self.models)
            elif path == lookups.MODELS_PATH:
                body = lookups.models_page(self.models, parse_qs(request.target.partition("?")[2]))
            else:
                body = lookups.model_info(self.models, path.removeprefix(lookups.MODEL_PATH))
        except RejectedRequestError as rejection:
            return await answer.error(HttpError(rejection.status, rejection.error_type, rejection.message), None)
        return await answer.json(body)

    def _buckets(self, where: Route, key: str) -> Buckets | None:
        """The key's rate-limit buckets, on the Messages API path (the only one that reports them)."""
        return self.rate_limits.of(key) if where.platform is Platform.ANTHROPIC else None

    def _token(self, form: bytes) -> bytes:
        """An OAuth 2.0 token response to a refresh (or any grant): a new access token, accepted from now on."""
        self.tokens_issued += 1
        token = f"ya29.sim-{self.tokens_issued}"
        if self.keys is not None:
            self.keys.add(token)
        scope = parse_qs(form.decode("latin-1")).get("scope", [""])[0]
        body = {"access_token": token, "expires_in": 3600, "token_type": "Bearer", "scope": scope}
        return json.dumps(body).encode()

    def _counts(self) -> bytes:
        counted: dict[tuple[str | None, str | None, str | None], int] = {}
        for r in self.requests:
            label = (r.platform, key_id(r.key) if r.key is not None else None, r.model)
            counted[label] = counted.get(label, 0) + 1
        rows = [{"platform": p, "key_id": k, "model": m, "count": n} for (p, k, m), n in counted.items()]
        return json.dumps({"total": len(self.requests), "counts": rows}).encode()


def _wire(where: Route, events: Sequence[model.Event] | None = None) -> Wire:
    if where.platform is not Platform.BEDROCK:
        return _SSE
    if events is None:
        return EventStreamWire()
    usage = events[0]["message"]["usage"]
    return EventStreamWire(usage["input_tokens"], events[-2]["usage"]["output_tokens"])


class _Answer:
    """The response to one request, written to its connection and noted in its record."""

    def __init__(self, connection: Connection, record: RecordedRequest, request_id: str, platform: Platform) -> None:
        self._connection = connection
        self._record = record
        self._request_id = request_id
        self._platform = platform
        self._start = connection.written  # where this response begins on a keep-alive connection

    def _sent(self, ok: bool) -> bool:
        """Note in the record the bytes of this response handed to the socket so far; pass ``ok`` on."""
        self._record.bytes_sent = self._connection.written - self._start
        return ok

    def _id_headers(self) -> dict[str, str]:
        if self._platform is Platform.ANTHROPIC:
            return {"request-id": self._request_id}
        if self._platform is Platform.BEDROCK:
            return {"x-amzn-requestid": self._request_id}
        return {}

    async def error(self, error: HttpError | SpendLimit, buckets: Buckets | None) -> bool:
        status, headers, body = error_response(self._platform, error, self._request_id)
        if buckets is not None:
            headers.update(buckets.headers(time.time()))
        self._record.status = status
        return self._sent(await self._connection.send_response(status, headers, body))

    async def json(self, body: dict[str, Any]) -> bool:
        """A 200 JSON answer."""
        self._record.status = 200
        data = json.dumps(body).encode()
        return await self._connection.send_response(200, {**_JSON_HEADERS, **self._id_headers()}, data)

    async def message(
        self, events: Sequence[model.Event], fault: StreamFault | None, pace: Pace, headers: dict[str, str]
    ) -> bool:
        """A non-streaming answer; it takes as long as the stream would."""
        match fault:
            case Cut() | EndWithoutStop():
                self._connection.abort()
                return False
            case Stall():
                await self._connection.closed.wait()
                return False
            case ErrorEvent(error_type=error_type, message=text):
                error = HttpError(STATUS_BY_ERROR_TYPE.get(error_type, 500), error_type, text)
                return await self.error(error, None)
        deltas = sum(event["type"] == "content_block_delta" for event in events)
        if not await self._connection.idle(sum(pace.delay(i == 0) for i in range(deltas))):
            return False
        body = b"{not json" if isinstance(fault, Malformed) else json.dumps(model.message(events)).encode()
        self._record.status = 200
        return self._sent(
            await self._connection.send_response(200, {**_JSON_HEADERS, **self._id_headers(), **headers}, body)
        )

    async def stream(
        self,
        frames: list[bytes],
        deltas: list[bool],
        fault: StreamFault | None,
        pace: Pace,
        wire: Wire,
        headers: dict[str, str],
        end_delay: float = 0.0,
        replay: bool = False,
    ) -> bool:
        """Stream `frames` (`deltas` says which carry content, and so are paced), misbehaving as
        `fault` says after its number of them; end the body `end_delay` seconds after the last frame.
        With `replay`, `frames` are SSE frames that `wire` rewrites."""
        if isinstance(fault, Stall) and fault.after_events < 0:
            await self._connection.closed.wait()
            return False
        if replay:
            rewritten = [wire.replayed(f, i) for i, f in enumerate(frames)]
            kept = [i for i, f in enumerate(rewritten) if f is not None]
            frames, deltas = [rewritten[i] or b"" for i in kept], [deltas[i] for i in kept]
        self._record.status = 200
        head = {**wire.headers, **self._id_headers(), **headers}
        if not self._sent(await self._connection.start_chunked(200, head)):
            return False
        delays = _delays(deltas, pace)
        at = len(frames) if fault is None else min(fault.after_events, len(frames))
        if not await self._send(frames[:at], delays[:at], pace, wire):
            return False
        match fault:
            case ErrorEvent(error_type=error_type, message=text):
                if not await self._event(wire.error(error_type, text, self._request_id)):
                    return False
            case Cut():
                self._connection.abort()
                return False
            case Stall():
                await self._connection.closed.wait()
                return False
            case Malformed():
                if not await self._event(wire.malformed) or not await self._send(frames[at:], delays[at:], pace, wire):
                    return False
        if end_delay > 0 and not await self._connection.idle(end_delay):
            return False
        return self._sent(await self._connection.end_chunked())

    async def _send(self, frames: list[bytes], delays: list[float], pace: Pace, wire: Wire) -> bool:
        for frame, delay in zip(frames, delays, strict=True):
            if not await self._pause(delay, pace, wire) or not await self._event(frame):
                return False
        return True

    async def _pause(self, seconds: float, pace: Pace, wire: Wire) -> bool:
        """Wait `seconds`, with a keep-alive ping every `pace.ping_interval` of it."""
        if pace.ping_interval > 0:
            while seconds > pace.ping_interval:
                if not await self._connection.idle(pace.ping_interval) or not await self._event(wire.ping):
                    return False
                seconds -= pace.ping_interval
        return await self._connection.idle(seconds)

    async def _event(self, frame: bytes) -> bool:
        if not self._sent(await self._connection.send_chunk(frame)):
            return False
        self._record.events_sent += 1
        return True


def _delays(deltas: Sequence[bool], pace: Pace) -> list[float]:
    """The wait before each frame: `ttft` before the first delta, the token interval before the others."""
    delays: list[float] = []
    first = True
    for delta in deltas:
        delays.append(pace.delay(first) if delta else 0.0)
        first = first and not delta
    return delays


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
