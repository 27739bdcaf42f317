"""Every failure of a call, as one ``Failure`` and then one gRPC status with rich details.

    GatewayError(Failure)            raised anywhere in a call, turned into a status by the servicer
      from_api_error(...)            an upstream HTTP error or mid-stream `error` event, by error type
      from_exception(exc)            SDK and transport exceptions, in one place
      to_status(failure, delivered)  google.rpc.Status with ErrorInfo, RetryInfo, BadRequest, QuotaFailure

The table ``API_ERRORS`` is the README's status table. Messages never carry secrets: they are
built from the upstream's error message, the error type and our own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import grpc
import httpx2
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import StatusCode as Code
from grpc_status import rpc_status

from server.reasons import Reason

__all__ = [
    "API_ERRORS",
    "Code",
    "Failure",
    "GatewayError",
    "QuotaViolation",
    "Reason",
    "Violation",
    "fail",
    "from_api_error",
    "from_exception",
    "to_status",
]

DOMAIN = "claude-gateway"
_ERROR_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")  # what an API error type looks like

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


@dataclass(frozen=True)
class Violation:
    """One bad field of a request: its path (e.g. ``params.messages[0].role``) and what is wrong."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One of the caller's limits that refused the call: which, its value, and what is wrong."""

    caller: str
    metric: str  # the policy's name for the limit: concurrent_streams, requests_per_minute...
    limit: int
    description: str


@dataclass(frozen=True)
class Failure:
    """Why a call failed, with everything its status details need."""

    code: Code
    reason: str  # ErrorInfo.reason, UPPER_SNAKE_CASE
    message: str
    error_type: str | None = None  # the API's error.type, when the upstream said
    request_id: str | None = None  # the upstream request id, for Anthropic support
    http_status: int | None = None
    retry_after: float | None = None  # seconds, when the upstream said
    retryable: bool = False  # safe to try again upstream, if nothing was sent yet
    violations: tuple[Violation, ...] = field(default=())
    quota_violations: tuple[QuotaViolation, ...] = field(default=())


def fail(reason: Reason, message: str, **details: Any) -> Failure:
    """A failure of the gateway's own: its code comes from the ``Reason`` table."""
    return Failure(reason.code, reason.name, message, **details)


class GatewayError(Exception):
    """Ends a call with ``failure`` as its status."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


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
    if error_type is not None and not _ERROR_TYPE.fullmatch(error_type):
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


def _retryable_status(http_status: int | None, error_type: str | None) -> bool:
    if http_status is None:  # an `error` event after 200
        return error_type in ("overloaded_error", "api_error", "rate_limit_error", "timeout_error")
    return http_status in (408, 409, 429) or http_status >= 500


def from_exception(exc: BaseException) -> Failure:
    """Map an exception from the SDK or its HTTP library. Unknown ones become INTERNAL."""
    if isinstance(exc, GatewayError):
        return exc.failure
    if isinstance(exc, anthropic.APIConnectionError) and isinstance(exc.__cause__, GatewayError):
        return exc.__cause__.failure  # the gateway's own response check, wrapped by the SDK
    if isinstance(exc, anthropic.APIStatusError) and 300 <= exc.status_code < 400:
        return fail(Reason.UPSTREAM_REDIRECTED, f"upstream answered HTTP {exc.status_code}, a redirect; not followed")
    if isinstance(exc, anthropic.APIStatusError):
        headers = exc.response.headers
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        error = error if isinstance(error, dict) else {}
        return from_api_error(
            _str(error.get("type")),
            _str(error.get("message")) or f"HTTP {exc.status_code}",
            http_status=exc.status_code,
            request_id=headers.get("request-id") or exc.request_id,
            retry_after=retry_after(headers),
            should_retry=_should_retry(headers),
        )
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return fail(Reason.UPSTREAM_TIMEOUT, "upstream timed out", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.ConnectError):
        return fail(Reason.UPSTREAM_UNREACHABLE, "cannot connect to the upstream", retryable=True)
    if isinstance(exc, TypeError) and "authentication method" in str(exc):
        # The SDK's words when it finds no API key, auth token or credentials: a setup problem.
        return fail(
            Reason.GATEWAY_NOT_CONFIGURED,
            "the gateway has no Anthropic credentials: set ANTHROPIC_API_KEY where it runs",
        )
    if isinstance(exc, httpx2.TransportError | aiohttp.ClientError):  # reset, or a chunked body cut short
        return fail(Reason.UPSTREAM_CONNECTION_LOST, "upstream connection lost mid-stream", retryable=True)
    return fail(Reason.GATEWAY_ERROR, f"gateway error: {type(exc).__name__}")


def retry_after(headers: Any) -> float | None:
    """Seconds the upstream asked us to wait, from retry-after-ms or retry-after."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _should_retry(headers: Any) -> bool | None:
    value = headers.get("x-should-retry")
    return {"true": True, "false": False}.get(value) if value else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def to_status(failure: Failure, events_delivered: int) -> grpc.Status:
    """The gRPC status for ``failure``, after ``events_delivered`` events reached the client."""
    metadata = {"events_delivered": str(events_delivered)}
    if failure.error_type:
        metadata["error_type"] = failure.error_type
    if failure.request_id:
        metadata["request_id"] = failure.request_id
    if failure.http_status:
        metadata["http_status"] = str(failure.http_status)
    details = [error_details_pb2.ErrorInfo(reason=failure.reason, domain=DOMAIN, metadata=metadata)]
    if failure.retry_after is not None and events_delivered == 0:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(failure.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if failure.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in failure.violations
                ]
            )
        )
    if failure.quota_violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"caller:{q.caller}",
                        description=q.description,
                        quota_metric=q.metric,
                        quota_id=q.metric,
                        quota_dimensions={"caller": q.caller},
                        quota_value=q.limit,
                    )
                    for q in failure.quota_violations
                ]
            )
        )
    message = failure.message
    if events_delivered:
        message += f" (after {events_delivered} events were delivered; not retried)"
    status = status_pb2.Status(code=_CODE_NUMBERS[failure.code], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


_CODE_NUMBERS = {code: getattr(code_pb2, code.name) for code in Code}
