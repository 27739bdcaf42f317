"""Every way the upstream can fail, as one ``Failure``: the one place where exceptions become statuses.

    from_exception(exc, host)        any exception the upstream path raises (the SDK's, aiohttp's,
                                     httpx's, ssl's, socket's, asyncio's) -> Failure, with its cause
      cause_of(exc)                  what went wrong below HTTP: dns, refused, tls, timeout, malformed
      from_api_error(...)            an HTTP error body or a mid-stream `error` event, by error type
    bedrock_error_type(...)          an exception message inside a Bedrock event stream, as an API error type
    head_failure(status, encoding)   a response head the gateway refuses: a redirect, a compressed body

``API_ERRORS`` is the status table of the API's error types (docs/api.md); ``HTTP_CODES`` is the
fallback by HTTP status for types the table does not know. Amazon Bedrock's and Google Vertex AI's own
error names are read as the API's error types first (``BEDROCK_EXCEPTIONS``, ``GOOGLE_STATUSES``), so
one failure reads the same from every platform. Messages never carry secrets: they are
built from the upstream's error message (cleaned by ``server.redaction``), the error type, the
upstream's host and the gateway's own words.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import anthropic
import httpx2
from aiohttp.http_exceptions import HttpProcessingError, TransferEncodingError

from server.errors import Code, Failure, GatewayError, Reason, fail

__all__ = [
    "API_ERRORS",
    "BEDROCK_EXCEPTIONS",
    "GOOGLE_STATUSES",
    "HTTP_CODES",
    "TYPE_BY_STATUS",
    "bedrock_error_type",
    "cause_of",
    "from_api_error",
    "from_exception",
    "head_failure",
    "ratelimit_headers",
    "retry_after",
]

# API error type -> gRPC code. Unknown types fall back to HTTP_CODES by status.
API_ERRORS: dict[str, Code] = {
    "invalid_request_error": Code.INVALID_ARGUMENT,  # 400
    "authentication_error": Code.UNAUTHENTICATED,  # 401: the gateway's API key was refused
    "billing_error": Code.FAILED_PRECONDITION,  # 402
    "permission_error": Code.PERMISSION_DENIED,  # 403
    "not_found_error": Code.NOT_FOUND,  # 404
    "conflict_error": Code.ABORTED,  # 409
    "request_too_large": Code.INVALID_ARGUMENT,  # 413
    "rate_limit_error": Code.RESOURCE_EXHAUSTED,  # 429
    "api_error": Code.UNAVAILABLE,  # 500: transient on the upstream's side
    "timeout_error": Code.UNAVAILABLE,  # 504: the upstream timed out, not the caller's deadline
    "overloaded_error": Code.UNAVAILABLE,  # 529
}

HTTP_CODES: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    409: Code.ABORTED,
    413: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
}

# Amazon Bedrock's exception names (the HTTP `x-amzn-errortype`, or `:exception-type` in a stream, where the
# first letter is lower case) -> the API's error type. modelStreamErrorException carries the status the
# model answered (``TYPE_BY_STATUS``).
BEDROCK_EXCEPTIONS: dict[str, str] = {
    "throttlingException": "rate_limit_error",
    "serviceQuotaExceededException": "rate_limit_error",
    "serviceUnavailableException": "overloaded_error",
    "modelNotReadyException": "overloaded_error",
    "internalServerException": "api_error",
    "modelErrorException": "api_error",
    "modelTimeoutException": "timeout_error",
    "validationException": "invalid_request_error",
    "accessDeniedException": "permission_error",
    "unrecognizedClientException": "authentication_error",
    "resourceNotFoundException": "not_found_error",
}

# Google's error status (Vertex AI's own errors: credentials, quota, billing) -> the API's error type.
GOOGLE_STATUSES: dict[str, str] = {
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "NOT_FOUND": "not_found_error",
    "UNAVAILABLE": "overloaded_error",
    "INTERNAL": "api_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}

# The API's error type for an HTTP status (a status a platform reports without a type).
TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

RATELIMIT_PREFIX = "anthropic-ratelimit-"

# Below HTTP, in the words a status message uses. ``cause_of`` returns the key.
CAUSES: dict[str, str] = {
    "dns": "the host name does not resolve",
    "refused": "the connection was refused",
    "tls": "TLS verification failed",
    "timeout": "the connection timed out",
    "reset": "the connection was reset",
    "malformed": "the response is not valid HTTP",
}

_ERROR_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_CHAIN_DEPTH = 16  # exceptions followed through __cause__ / __context__; a chain is never longer in practice


def head_failure(status: int, content_encoding: str) -> Failure | None:
    """The failure for a response head the gateway will not read on: a redirect (never followed) or a
    body in a content-encoding other than identity (never inflated); None for any other head."""
    if 300 <= status < 400:
        return fail(Reason.UPSTREAM_REDIRECTED, f"upstream answered HTTP {status}, a redirect; not followed")
    if content_encoding.strip().lower() not in ("", "identity"):
        return fail(Reason.UPSTREAM_COMPRESSED, "upstream sent a compressed body although identity was asked for")
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, nearest first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _CHAIN_DEPTH:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _cause(exc: BaseException) -> str | None:
    """The cause one exception names by itself, if any (most specific classes first)."""
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError):
        below = _cause(exc.os_error)  # aiohttp keeps the socket's error as an attribute, not as the cause
        if below is not None:
            return below
    if isinstance(exc, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TransferEncodingError):
        # "Not enough data ..." is a body cut short; any other chunked-coding error is broken HTTP.
        return None if "Not enough data" in str(exc) else "malformed"
    if isinstance(exc, HttpProcessingError | httpx2.RemoteProtocolError | httpx2.LocalProtocolError):
        return None if "disconnected" in str(exc).lower() else "malformed"
    if isinstance(exc, aiohttp.ClientResponseError) and not isinstance(exc, aiohttp.ClientHttpProxyError):
        return "malformed"  # raised for a response aiohttp cannot parse (a bad status line or header)
    if isinstance(exc, TimeoutError | httpx2.TimeoutException | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError | aiohttp.ServerDisconnectedError):
        return "reset"
    return None


def cause_of(exc: BaseException) -> str | None:
    """What went wrong below HTTP (a key of ``CAUSES``), from ``exc`` or what it was raised from."""
    for link in _chain(exc):
        cause = _cause(link)
        if cause is not None:
            return cause
    return None


def from_exception(exc: BaseException, host: str | None = None) -> Failure:
    """Map any exception of the upstream path; one the gateway does not know becomes GATEWAY_ERROR.

    ``host`` (the upstream's host name, never a URL with credentials) goes into the message and
    ErrorInfo, with the cause, so that a caller and the log both say what could not be reached and why.
    """
    if isinstance(exc, GatewayError):
        return exc.failure
    if isinstance(exc, anthropic.APIConnectionError) and isinstance(exc.__cause__, GatewayError):
        return exc.__cause__.failure  # the gateway's own response check, wrapped by the SDK
    if isinstance(exc, anthropic.APIStatusError):
        refused = head_failure(exc.status_code, "")
        return refused if refused is not None else _from_status_error(exc)
    if isinstance(exc, TypeError) and "authentication method" in str(exc):
        # The SDK's words when it finds no API key, auth token or credentials: a setup problem.
        return fail(
            Reason.GATEWAY_NOT_CONFIGURED,
            "the gateway has no Anthropic credentials: set ANTHROPIC_API_KEY where it runs",
        )
    cause = cause_of(exc)
    where = f" {host}" if host else ""
    why = f": {CAUSES[cause]}" if cause else ""
    details: dict[str, Any] = {"cause": cause, "host": host, "retryable": True}
    if cause == "malformed":
        return fail(Reason.UPSTREAM_MALFORMED_HTTP, f"upstream{where} answered badly{why}", **details)
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return fail(Reason.UPSTREAM_TIMEOUT, f"upstream{where} timed out{why}", **details)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.ConnectError | aiohttp.ClientConnectorError):
        return fail(Reason.UPSTREAM_UNREACHABLE, f"cannot connect to the upstream{where}{why}", **details)
    if isinstance(exc, httpx2.TransportError | aiohttp.ClientError | OSError):  # OSError: ssl's and sockets' too
        # A reset, or a chunked body cut short, after the response began.
        return fail(Reason.UPSTREAM_CONNECTION_LOST, f"upstream{where} connection lost mid-stream{why}", **details)
    return fail(Reason.GATEWAY_ERROR, f"gateway error: {type(exc).__name__}")


def _from_status_error(exc: anthropic.APIStatusError) -> Failure:
    headers = exc.response.headers
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    error_type, message = _str(error.get("type")), _str(error.get("message"))
    if error_type is None and isinstance(exc.body, str):
        # Not JSON: most often a body cut at GATEWAY_MAX_ERROR_BODY_BYTES, whose type still leads it.
        found = _LEADING_ERROR_TYPE.match(exc.body)
        if found is not None:
            error_type, message = found[1], "an error body that is not whole JSON (cut at the gateway's bound?)"
    if error_type is None:
        error_type = _platform_error_type(headers.get("x-amzn-errortype"), _str(error.get("status")))
        message = message or _str(body.get("message")) or _str(body.get("Message"))
    failure = from_api_error(
        error_type,
        message or f"HTTP {exc.status_code}",
        http_status=exc.status_code,
        request_id=headers.get("request-id") or headers.get("x-amzn-requestid") or exc.request_id,
        retry_after=retry_after(headers),
        should_retry=_should_retry(headers),
    )
    limits = ratelimit_headers(headers)
    return replace(failure, ratelimits=limits) if limits else failure


# The API's error body as it begins: {"type": "error", "error": {"type": "<error type>", ... (the outer
# "type" may be left out). A JSON string cannot hold an unescaped quote, so a message never matches.
_LEADING_ERROR_TYPE = re.compile(
    r'\s*\{(?:\s*"type"\s*:\s*"error"\s*,)?\s*"error"\s*:\s*\{\s*"type"\s*:\s*"([a-z_]{1,64})"'
)


def _platform_error_type(amazon: str | None, google: str | None) -> str | None:
    """The API's error type for Bedrock's ``x-amzn-errortype`` or Vertex's Google status, if known."""
    if amazon:
        name = amazon.partition(":")[0].strip()
        return BEDROCK_EXCEPTIONS.get(name[:1].lower() + name[1:])
    if google:
        return GOOGLE_STATUSES.get(google)
    return None


def ratelimit_headers(headers: Any) -> tuple[tuple[str, str], ...]:
    """The ``anthropic-ratelimit-*`` headers of a response, as (name, value) pairs with lower-case names."""
    return tuple((name.lower(), value) for name, value in headers.items() if name.lower().startswith(RATELIMIT_PREFIX))


def bedrock_error_type(exception: str, original_status: int | None = None) -> str:
    """The API's error type of a Bedrock exception (``throttlingException``...; a
    ``modelStreamErrorException`` by the status the model answered); ``api_error`` when unknown."""
    error_type = BEDROCK_EXCEPTIONS.get(exception[:1].lower() + exception[1:])
    if error_type is None and original_status is not None:
        error_type = TYPE_BY_STATUS.get(original_status)
    return error_type or "api_error"


def from_api_error(
    error_type: str | None,
    message: str,
    *,
    http_status: int | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    should_retry: bool | None = None,
) -> Failure:
    """Map an upstream API error (HTTP error body or `error` event) by its error type.

    The upstream's words are untrusted: an error type that does not look like one is dropped (it
    becomes ErrorInfo.reason), and ``server.redaction`` cleans the message before it is shown."""
    if error_type is not None and not _looks_like_error_type(error_type):
        error_type = None
    code = API_ERRORS.get(error_type or "")
    if code is None:
        code = HTTP_CODES.get(http_status or 0, Code.UNAVAILABLE if (http_status or 500) >= 500 else Code.UNKNOWN)
    where = f"HTTP {http_status}" if http_status else "mid-stream"
    retryable = should_retry if should_retry is not None else _retryable_status(http_status, error_type)
    return Failure(
        code=code,
        reason=(error_type or f"http_{http_status}").upper(),
        message=f"upstream {error_type or 'error'} ({where}): {message}",
        error_type=error_type,
        request_id=request_id,
        http_status=http_status,
        retry_after=retry_after,
        retryable=retryable,
    )


def _looks_like_error_type(text: str) -> bool:
    """``[a-z][a-z0-9_]{0,63}``: what an API error type looks like."""
    return 0 < len(text) <= 64 and text[0].isalpha() and text[0].islower() and set(text) <= _ERROR_TYPE_CHARS


def _retryable_status(http_status: int | None, error_type: str | None) -> bool:
    if http_status is None:  # an `error` event after 200
        return error_type in ("overloaded_error", "api_error", "rate_limit_error", "timeout_error")
    return http_status in (408, 409, 429) or http_status >= 500


def retry_after(headers: Any) -> float | None:
    """Seconds the upstream asked us to wait, from retry-after-ms or retry-after."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if seconds == seconds and seconds != float("inf"):  # not NaN, not infinite
                return max(0.0, seconds)
    return None


def _should_retry(headers: Any) -> bool | None:
    value = headers.get("x-should-retry")
    return {"true": True, "false": False}.get(value) if value else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
