"""The upstream Messages API, reached through the official anthropic SDK.

The SDK gives the gateway what it is for: the auth header, the API version, the base URL, and
its exceptions for error bodies. The gateway reads the streaming body as raw bytes, because the
SDK's event iterator drops `ping` events and builds a pydantic object per event. On the default
transport (aiohttp) the SDK's URL and headers are read once and each call is posted on the
gateway's own aiohttp session (``Upstream``); on httpx, or with a client whose auth is computed per
request, each call goes through the SDK's generic ``post`` (its documented way to send any body).
Leaving ``Upstream.stream`` closes the HTTP response, and with it the connection if the body was
not read to its end.

Nothing the upstream sends is trusted (see docs/operations.md, "Limits and hardening"): both paths refuse
redirects and compressed bodies and read at most ``max_error_body_bytes`` of an error body (on
httpx, ``http_client`` builds the SDK's HTTP client with a response hook that does so); every
request asks for ``accept-encoding: identity`` and says not to follow redirects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import httpx2
from aiohttp.helpers import get_env_proxy_for_url
from claude_gateway.sdk import aiohttp_response, status_error
from multidict import CIMultiDict
from yarl import URL

from server.config import Settings
from server.errors import GatewayError, Reason, fail
from server.upstream.failures import head_failure

log = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
SSE = "sse"  # server-sent events: the Messages API, Vertex AI
EVENT_STREAM = "eventstream"  # the AWS event-stream framing: Amazon Bedrock
_JSON = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call
_MAX_CONNECTIONS = 1000  # the SDK's own default pool size
# What may follow a stream's last event before its connection is kept: the body's end (a few bytes).
_FINISH_BYTES = 16 * 1024
_FINISH_SECONDS = 1.0


def http_client(settings: Settings) -> httpx2.AsyncClient:
    """The SDK's HTTP client on the transport the settings name, with the gateway's response checks."""
    hooks: dict[str, list[Callable[..., Any]]] = {"response": [_ResponseCheck(settings.max_error_body_bytes)]}
    if settings.http_client == "aiohttp":
        # The SDK's own aiohttp transport: about half the CPU per relayed event of its default (bench/).
        return anthropic.DefaultAioHttpClient(event_hooks=hooks, follow_redirects=False)
    return anthropic.DefaultAsyncHttpxClient(event_hooks=hooks, follow_redirects=False)


class _ResponseCheck:
    """An httpx response hook, run when the headers arrive and before the SDK reads any of the body."""

    def __init__(self, max_error_body_bytes: int) -> None:
        self._limit = max_error_body_bytes

    async def __call__(self, response: httpx2.Response) -> None:
        refused = head_failure(response.status_code, response.headers.get("content-encoding", ""))
        if refused is not None:
            raise GatewayError(refused)
        if not response.is_success:
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _Capped(response.stream, self._limit)


class _Capped(httpx2.AsyncByteStream):
    """The first ``limit`` bytes of a body; the rest is never read (closing drops the connection)."""

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._left = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            if len(chunk) >= self._left:
                yield chunk[: self._left]
                self._left = 0
                return
            self._left -= len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def body_reader(response: httpx2.Response) -> Callable[[], Awaitable[bytes]]:
    """How to read ``response``'s body: what has arrived, b"" at the end.

    On the SDK's aiohttp transport this is aiohttp's own ``readany`` on the response under the SDK's
    adapter and httpx2's timing wrapper: one await per read instead of five nested async generators
    (httpx2's raw and bound streams, the adapter's chunker and exception mapper, aiohttp's chunk
    iterator). The response hook already refused any content-encoding, so the bytes are the same.
    On httpx, or if those layers ever change shape, it is httpx2's raw iterator (no decoder, for the
    same reason).
    """
    raw = aiohttp_response(response)
    if isinstance(raw, aiohttp.ClientResponse):
        return raw.content.readany
    chunks = response.aiter_raw()

    async def read() -> bytes:
        return await anext(chunks, b"")

    return read


class Body:
    """One upstream response body, as ``Upstream.stream`` yields it."""

    __slots__ = ("complete", "framing", "headers", "read", "request_id")

    def __init__(
        self,
        request_id: str | None,
        read: Callable[[], Awaitable[bytes]],
        headers: Mapping[str, str] | None = None,
        framing: str = SSE,
    ) -> None:
        self.request_id = request_id  # the upstream's request-id header
        self.read = read  # what has arrived; b"" at the end
        self.headers = headers  # the response's headers (rate limits are read from them)
        self.framing = framing  # how the bytes are framed: SSE, or EVENT_STREAM (Amazon Bedrock)
        # Set by the reader once the stream's last event (message_stop) is in: leaving then keeps
        # the connection, reading the body's end in the background instead of dropping it.
        self.complete = False


async def _read_to_end(response: aiohttp.ClientResponse) -> None:
    """Read a complete body's remaining bytes (at most a few, within a second) and release its
    connection to the pool; anything more, later or broken drops the connection."""
    left = _FINISH_BYTES
    try:
        async with asyncio.timeout(_FINISH_SECONDS):
            while chunk := await response.content.readany():
                left -= len(chunk)
                if left < 0:
                    break
    except (TimeoutError, aiohttp.ClientError):
        pass
    finally:
        if response.content.at_eof():
            response.release()
        else:
            response.close()


def credentials_held(client: anthropic.AsyncAnthropic) -> str:
    """Which kind of upstream credentials ``client`` holds, in words (never their values); "" for none,
    when every call would fail with GATEWAY_NOT_CONFIGURED."""
    if client.api_key:
        return "an API key"
    if client.auth_token:
        return "an auth token"
    if client.credentials is not None:
        return f"a credentials provider ({type(client.credentials).__name__})"
    headers = {k.lower() for k, v in client.default_headers.items() if isinstance(v, str)}
    if headers & {"x-api-key", "authorization"}:
        return "an authorization header of its own"
    return ""


class Upstream:
    """Opens streaming Messages API calls. One per process; it owns the connection pool.

    On aiohttp (the default) the SDK is asked once, at start-up, for what it is for: the request's
    URL under its base URL, and its headers (the key as the API version wants it, the version
    header, its user agent). Each call then posts the body on the gateway's own aiohttp session and
    reads the response below any adapter; an HTTP error body is handed back to the SDK, which makes
    its own exception of it. This skips the SDK's per-request building (options, httpx2 request and
    response objects, its transport adapter; docs/performance.md). A client the
    gateway cannot read once (custom auth such as the SDK's credential providers, which mint tokens
    per request, or middleware), a client with no key (whose calls fail with the SDK's own words)
    and the httpx transport go through the SDK's ``post`` for every call instead.
    """

    def __init__(
        self,
        client: anthropic.AsyncAnthropic | anthropic.AsyncAnthropicBedrock | anthropic.AsyncAnthropicVertex,
        settings: Settings,
        *,
        request_id_header: str = "request-id",
        framing: str = SSE,
    ) -> None:
        self._client = client.with_options(max_retries=0)  # the gateway decides what to retry
        self._host = self._client.base_url.host
        self._request_id_header = request_id_header  # Bedrock names it x-amzn-requestid
        self.framing = framing
        self._connect_timeout = settings.connect_timeout
        self._max_error_body_bytes = settings.max_error_body_bytes
        self._max_answer_bytes = settings.max_event_bytes  # a count or a model list is read whole, as one event
        self._session: aiohttp.ClientSession | None = None
        self._finishing: set[asyncio.Task[None]] = set()  # complete bodies whose end is still being read
        if (
            settings.http_client == "aiohttp"
            and isinstance(client, anthropic.AsyncAnthropic)
            and client.auth_headers
            and client.custom_auth is None
            and not client.middleware
        ):
            self._url = str(self._client.base_url.join(MESSAGES_PATH.lstrip("/")))
            self._request = httpx2.Request("POST", self._url)  # what the SDK's exceptions point at
            # Built once as aiohttp's own header type: a plain dict would be copied into one per request.
            self._headers = CIMultiDict((k, v) for k, v in self._client.default_headers.items() if isinstance(v, str))
            self._headers["accept-encoding"] = "identity"
            # HTTPS_PROXY / NO_PROXY as the SDK's clients read them, once: aiohttp's trust_env would
            # look them up in a thread on every request.
            self._proxy: URL | None = None
            self._proxy_auth: aiohttp.BasicAuth | None = None
            with contextlib.suppress(LookupError):
                self._proxy, self._proxy_auth = get_env_proxy_for_url(URL(self._url))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, ssl=httpx2.create_ssl_context(trust_env=True)),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )

    @property
    def host(self) -> str:
        """The upstream's host name (no scheme, port, path or credentials): for statuses and logs."""
        return self._host

    @property
    def base_url(self) -> str:
        """The upstream's base URL (for the platform an overload is shared by; never logged: it may hold a userinfo)."""
        return str(self._client.base_url)

    @property
    def url(self) -> str:
        """The upstream's base URL without any user name or password in it: for the start-up line."""
        return str(self._client.base_url.copy_with(userinfo=b""))

    @property
    def finishing(self) -> int:
        """Complete bodies whose end is still being read in the background."""
        return len(self._finishing)

    def stream(
        self, body: dict[str, Any], betas: Sequence[str], timeout: float, version: str | None = None
    ) -> AbstractAsyncContextManager[Body]:
        """POST /v1/messages with "stream": true; yields the response ``Body``. ``version`` replaces the
        SDK's `anthropic-version` header when given.

        Raises the SDK's exceptions for HTTP errors and connection failures; a read raises its
        transport's (``server.upstream.failures.from_exception`` maps both). Leaving closes the response, and the
        connection with it unless the body was read to its end or marked ``complete``.
        """
        if self._session is not None:
            return _Post(self, self._session, body, betas, timeout, version)
        return self._sdk_post(body, betas, timeout, version)

    async def post(
        self,
        session: aiohttp.ClientSession,
        body: dict[str, Any],
        betas: Sequence[str],
        timeout: float,
        version: str | None = None,
    ) -> aiohttp.ClientResponse:
        """POST the body on the gateway's session and check the response's head: the SDK's exceptions
        for connection failures and HTTP errors, GatewayError for a redirect or a compressed body."""
        headers = self._headers
        if betas or version:
            headers = headers.copy()
            if betas:
                headers["anthropic-beta"] = ",".join(betas)
            if version:
                headers["anthropic-version"] = version
        data = _JSON.encode({**body, "stream": True}).encode()
        # Only the connect bound: the watchdog bounds the rest (the wait for the first event, silence,
        # the deadline) without a timer per request or per read, which is what aiohttp's others cost.
        limits = aiohttp.ClientTimeout(sock_connect=min(self._connect_timeout, timeout))
        try:
            response = await session.post(
                self._url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=limits,
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
            )
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise anthropic.APITimeoutError(request=self._request) from exc
        except aiohttp.ClientError as exc:
            raise anthropic.APIConnectionError(request=self._request) from exc
        try:
            refused = head_failure(response.status, response.headers.get("content-encoding", ""))
            if refused is not None:
                raise GatewayError(refused)
            if response.status >= 300:
                raise await self._status_error(response)
        except BaseException:
            response.close()
            raise
        return response

    def finish(self, response: aiohttp.ClientResponse) -> None:
        """Read what is left of a complete body (its end, usually in flight) in the background, so the
        connection goes back to the pool as a reader to the end (the SDK's) would leave it."""
        task = asyncio.get_running_loop().create_task(_read_to_end(response))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _status_error(self, response: aiohttp.ClientResponse) -> anthropic.APIStatusError:
        """The SDK's exception for an HTTP error, from at most ``max_error_body_bytes`` of its body."""
        chunks: list[bytes] = []
        left = self._max_error_body_bytes
        while left > 0 and (chunk := await response.content.read(left)):
            chunks.append(chunk)
            left -= len(chunk)
        http_response = httpx2.Response(
            response.status, headers=response.raw_headers, content=b"".join(chunks), request=self._request
        )
        error: anthropic.APIStatusError = status_error(self._client, http_response)
        return error

    @asynccontextmanager
    async def _sdk_post(
        self, body: dict[str, Any], betas: Sequence[str], timeout: float, version: str | None
    ) -> AsyncIterator[Body]:
        limits = httpx2.Timeout(timeout, connect=min(self._connect_timeout, timeout), read=None)
        headers = _headers(betas, version)
        response = await self._client.post(
            MESSAGES_PATH,
            cast_to=httpx2.Response,  # the response as it arrives, body unread
            body={**body, "stream": True},
            options={"timeout": limits, "headers": headers, "follow_redirects": False},
            stream=True,
        )
        try:
            got = response.headers
            yield Body(got.get(self._request_id_header), body_reader(response), got, self.framing)
        finally:
            await response.aclose()

    async def ask(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        betas: Sequence[str] = (),
        version: str | None = None,
    ) -> tuple[Any, str | None]:
        """One small JSON request through the SDK's own ``get`` and ``post`` (the API's count_tokens and
        models endpoints): its parsed JSON answer and the upstream's request id. At most
        ``max_event_bytes`` of the answer are read (``UPSTREAM_EVENT_TOO_LARGE`` beyond); an answer that is
        not JSON is ``UPSTREAM_MALFORMED_EVENT``; HTTP errors and connection failures raise the SDK's
        exceptions (``server.upstream.failures.from_exception`` maps them)."""
        limits = httpx2.Timeout(timeout, connect=min(self._connect_timeout, timeout))
        headers = _headers(betas, version)
        if method == "POST":
            response = await self._client.post(
                path,
                cast_to=httpx2.Response,  # the response as it arrives, body unread
                body=body,
                options={"timeout": limits, "headers": headers, "follow_redirects": False},
                stream=True,
            )
        else:
            response = await self._client.get(
                path,
                cast_to=httpx2.Response,
                options={"timeout": limits, "headers": headers, "follow_redirects": False, "params": params or {}},
                stream=True,
            )
        try:
            read = body_reader(response)
            chunks: list[bytes] = []
            size = 0
            while chunk := await read():
                size += len(chunk)
                if size > self._max_answer_bytes:
                    raise GatewayError(
                        fail(
                            Reason.UPSTREAM_EVENT_TOO_LARGE,
                            f"upstream's answer to {path} is over GATEWAY_MAX_EVENT_BYTES ({self._max_answer_bytes})",
                        )
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        try:
            answer = json.loads(b"".join(chunks))
        except ValueError:
            raise GatewayError(
                fail(Reason.UPSTREAM_MALFORMED_EVENT, f"upstream's answer to {path} is not JSON")
            ) from None
        return answer, response.headers.get("request-id")

    async def aclose(self) -> None:
        for task in self._finishing:
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self._client.close()


def _headers(betas: Sequence[str], version: str | None) -> dict[str, str]:
    """The per-request headers of a call through the SDK: identity encoding, the betas, the version."""
    headers = {"accept-encoding": "identity"}
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    if version:
        headers["anthropic-version"] = version
    return headers


class _Post:
    """One call's POST on the gateway's session, as the async context manager ``Upstream.stream`` returns:
    entering sends it and yields its ``Body``; leaving releases the connection to the pool if the body
    was read to its end, keeps it if the body is complete (``Upstream.finish``), and drops it otherwise.
    A class rather than a generator: it is held by every open stream, and is smaller."""

    __slots__ = ("_args", "_body", "_response", "_upstream")

    def __init__(
        self,
        upstream: Upstream,
        session: aiohttp.ClientSession,
        body: dict[str, Any],
        betas: Sequence[str],
        timeout: float,
        version: str | None = None,
    ) -> None:
        self._upstream = upstream
        self._args: tuple[aiohttp.ClientSession, dict[str, Any], Sequence[str], float, str | None] | None = (
            session,
            body,
            betas,
            timeout,
            version,
        )
        self._response: aiohttp.ClientResponse | None = None
        self._body: Body | None = None

    async def __aenter__(self) -> Body:
        assert self._args is not None, "entered twice"
        args, self._args = self._args, None
        response = self._response = await self._upstream.post(*args)
        self._body = Body(response.headers.get("request-id"), response.content.readany, response.headers)
        return self._body

    async def __aexit__(self, *exc: object) -> None:
        response, body = self._response, self._body
        assert response is not None
        assert body is not None
        self._response = self._body = None
        if response.content.at_eof():
            response.release()  # the connection goes back to the pool
        elif body.complete:
            self._upstream.finish(response)
        else:
            response.close()  # a body left unread: the connection is dropped
            if log.isEnabledFor(logging.DEBUG):  # CLOCK_MONOTONIC, to set against a client's or upstream's clock
                log.debug("upstream %s closed unread at monotonic_ns %d", body.request_id, time.monotonic_ns())
