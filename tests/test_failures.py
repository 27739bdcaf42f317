"""The one exception-mapping point: every exception the upstream path can meet, and the status it becomes."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import Callable

import aiohttp
import anthropic
import grpc
import httpx2
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http_exceptions import BadStatusLine, TransferEncodingError
from claude_gateway.v1.chat_pb2_grpc import ChatServiceStub
from grpc import StatusCode as Code

from server.app import build_server, sdk_client
from server.config import Settings
from server.errors import Failure, GatewayError, Reason, fail, to_status
from server.upstream.failures import CAUSES, from_exception, head_failure
from tests.harness import API_KEY, body, run, status_of, stream_request
from tests.store import free_port

HOST = "api.example.test"
HOST_IP = "127.0.0.1"
MALFORMED, LOST = "UPSTREAM_MALFORMED_HTTP", "UPSTREAM_CONNECTION_LOST"
REQUEST = httpx2.Request("POST", f"https://{HOST}/v1/messages")
KEY = ConnectionKey(HOST, 443, True, True, None, None, None)


def wrapped(
    inner: BaseException, outer: type[anthropic.APIConnectionError] = anthropic.APIConnectionError
) -> BaseException:
    """``inner`` as the SDK raises it: its connection error, raised from the transport's exception."""
    error = outer(request=REQUEST)
    error.__cause__ = inner
    return error


def status_error(status: int, body: bytes, **headers: str) -> BaseException:
    response = httpx2.Response(status, headers=headers, content=body, request=REQUEST)
    return anthropic.AsyncAnthropic(api_key="k")._make_status_error_from_response(response)


CONNECT = aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused"))
DNS = aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(-2, "Name or service not known"))
CERT = aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError(1, "certificate verify failed"))
BAD_STATUS_LINE = aiohttp.ClientResponseError(None, (), status=400, message="Invalid status line")  # type: ignore[arg-type]
BAD_STATUS_LINE.__cause__ = BadStatusLine("HTTP/1.1 abc")
BAD_CHUNK = aiohttp.ClientPayloadError("Response payload is not completed")
BAD_CHUNK.__cause__ = TransferEncodingError("Unexpected LF in chunk-extension: b'\\n'")
CUT_CHUNK = aiohttp.ClientPayloadError("Response payload is not completed")
CUT_CHUNK.__cause__ = TransferEncodingError("Not enough data to satisfy transfer length header.")

# exception -> (code, ErrorInfo reason, cause)
TABLE: list[tuple[str, Callable[[], BaseException], Code, str, str | None]] = [
    ("aiohttp refused", lambda: wrapped(CONNECT), Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE", "refused"),
    ("aiohttp dns", lambda: wrapped(DNS), Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE", "dns"),
    ("aiohttp tls", lambda: wrapped(CERT), Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE", "tls"),
    ("aiohttp connect timeout", lambda: wrapped(aiohttp.ConnectionTimeoutError(), anthropic.APITimeoutError),
     Code.UNAVAILABLE, "UPSTREAM_TIMEOUT", "timeout"),
    ("aiohttp bad status line", lambda: wrapped(BAD_STATUS_LINE), Code.UNAVAILABLE, MALFORMED, "malformed"),
    ("aiohttp bad chunk", lambda: BAD_CHUNK, Code.UNAVAILABLE, MALFORMED, "malformed"),
    ("aiohttp cut chunk", lambda: CUT_CHUNK, Code.UNAVAILABLE, LOST, None),
    ("aiohttp disconnected", lambda: aiohttp.ServerDisconnectedError(), Code.UNAVAILABLE, LOST, "reset"),
    ("aiohttp reset", lambda: aiohttp.ClientOSError(104, "Connection reset by peer"), Code.UNAVAILABLE,
     LOST, None),
    ("httpx connect", lambda: wrapped(httpx2.ConnectError("[Errno 111] Connection refused")), Code.UNAVAILABLE,
     "UPSTREAM_UNREACHABLE", None),
    ("httpx refused below", lambda: wrapped(_chained(httpx2.ConnectError("x"), ConnectionRefusedError(111, "refused"))),
     Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE", "refused"),
    ("httpx tls below", lambda: wrapped(_chained(httpx2.ConnectError("x"), ssl.SSLCertVerificationError(1, "verify"))),
     Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE", "tls"),
    ("httpx dns below", lambda: wrapped(_chained(httpx2.ConnectError("x"), socket.gaierror(-2, "unknown"))),
     Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE", "dns"),
    ("httpx connect timeout", lambda: wrapped(httpx2.ConnectTimeout("timed out"), anthropic.APITimeoutError),
     Code.UNAVAILABLE, "UPSTREAM_TIMEOUT", "timeout"),
    ("httpx read timeout", lambda: httpx2.ReadTimeout("timed out"), Code.UNAVAILABLE, "UPSTREAM_TIMEOUT", "timeout"),
    ("httpx protocol", lambda: httpx2.RemoteProtocolError("illegal status line"), Code.UNAVAILABLE,
     MALFORMED, "malformed"),
    ("httpx disconnected", lambda: httpx2.RemoteProtocolError("Server disconnected without sending a response."),
     Code.UNAVAILABLE, LOST, None),
    ("httpx read error", lambda: httpx2.ReadError("reset"), Code.UNAVAILABLE, LOST, None),
    ("asyncio timeout", lambda: TimeoutError(), Code.UNAVAILABLE, "UPSTREAM_TIMEOUT", "timeout"),
    ("ssl error mid-stream", lambda: ssl.SSLError(1, "bad record mac"), Code.UNAVAILABLE, LOST, "tls"),
    ("connection reset", lambda: ConnectionResetError(104, "reset"), Code.UNAVAILABLE, LOST, "reset"),
    ("sdk 529", lambda: status_error(529, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'),
     Code.UNAVAILABLE, "OVERLOADED_ERROR", None),
    ("sdk 429", lambda: status_error(429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}'),
     Code.RESOURCE_EXHAUSTED, "RATE_LIMIT_ERROR", None),
    ("sdk 401", lambda: status_error(401, b'{"type":"error","error":{"type":"authentication_error","message":"no"}}'),
     Code.UNAUTHENTICATED, "AUTHENTICATION_ERROR", None),
    ("sdk 400", lambda: status_error(400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}'),
     Code.INVALID_ARGUMENT, "INVALID_REQUEST_ERROR", None),
    ("sdk 502 not json", lambda: status_error(502, b"<html>bad gateway</html>"), Code.UNAVAILABLE, "HTTP_502", None),
    ("sdk 302", lambda: status_error(302, b""), Code.FAILED_PRECONDITION, "UPSTREAM_REDIRECTED", None),
    ("sdk without credentials", lambda: TypeError('"Could not resolve authentication method. Expected ..."'),
     Code.FAILED_PRECONDITION, "GATEWAY_NOT_CONFIGURED", None),
    ("gateway's own check under the sdk", lambda: wrapped(GatewayError(fail(Reason.UPSTREAM_COMPRESSED, "gzip"))),
     Code.FAILED_PRECONDITION, "UPSTREAM_COMPRESSED", None),
    ("a bug", lambda: KeyError("x"), Code.INTERNAL, "GATEWAY_ERROR", None),
]  # fmt: skip


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(("name", "make", "code", "reason", "cause"), TABLE, ids=[row[0] for row in TABLE])
def test_every_upstream_exception_maps_to_one_status(
    name: str, make: Callable[[], BaseException], code: Code, reason: str, cause: str | None
) -> None:
    """Each exception becomes its code and reason; below-HTTP failures name their cause and the host."""
    failure = from_exception(make(), HOST)
    assert (failure.code, failure.reason, failure.cause) == (code, reason, cause)
    if cause is not None:
        assert CAUSES[cause] in failure.message
        assert HOST in failure.message
        info = _error_info(failure)
        assert (info["cause"], info["upstream_host"]) == (cause, HOST)


def _error_info(failure: Failure) -> dict[str, str]:
    from google.rpc import error_details_pb2, status_pb2

    status = to_status(failure, 0)
    (details,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(details).details[0].Unpack(info)
    return dict(info.metadata)


@pytest.mark.parametrize(
    ("status", "encoding", "reason"),
    [(200, "", None), (200, "identity", None), (301, "", "UPSTREAM_REDIRECTED"), (307, "", "UPSTREAM_REDIRECTED"),
     (200, "gzip", "UPSTREAM_COMPRESSED"), (200, " GZIP ", "UPSTREAM_COMPRESSED"), (500, "", None)],
)  # fmt: skip
def test_the_refused_response_heads_are_written_once(status: int, encoding: str, reason: str | None) -> None:
    """A redirect or a compressed body is refused by one function, on either transport."""
    failure = head_failure(status, encoding)
    assert (failure.reason if failure else None) == reason


def test_a_retried_attempt_and_the_call_line_name_the_upstream_host_and_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection, retried once: the retry's log line and the call's log line both say which host
    refused and why, as the status and its ErrorInfo do."""
    caplog.set_level(logging.INFO)

    async def go() -> None:
        settings = Settings(listen="127.0.0.1:0", max_attempts=2)
        client = sdk_client(settings, base_url=f"http://127.0.0.1:{free_port()}", api_key=API_KEY)
        gw = await build_server(settings, client)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await ChatServiceStub(channel).CreateMessage(stream_request(body()), timeout=20)
        finally:
            await gw.close()
        status = status_of(caught.value)
        assert status.error_info is not None
        assert dict(status.error_info.metadata) | {"events_delivered": "0"} == {
            "events_delivered": "0",
            "cause": "refused",
            "upstream_host": "127.0.0.1",
        }
        assert f"127.0.0.1: {CAUSES['refused']}" in status.message
        (retry,) = [r.getMessage() for r in caplog.records if "upstream attempt 1 failed" in r.getMessage()]
        assert f"127.0.0.1: {CAUSES['refused']}" in retry
        (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "server.call"]
        assert (line["reason"], line["cause"], line["upstream_host"]) == (
            "UPSTREAM_UNREACHABLE",
            "refused",
            "127.0.0.1",
        )

    run(go)
