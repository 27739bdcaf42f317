"""Every failure of a call, as one ``Failure`` and then one gRPC status with rich details.

    GatewayError(Failure)            raised anywhere in a call, turned into a status by the call's runner
      fail(reason, message)          a failure of the gateway's own (``server.reasons``)
      server.upstream.failures       every upstream exception and API error, in one place
    to_status(failure, delivered)    google.rpc.Status with ErrorInfo, RetryInfo, BadRequest, QuotaFailure

Messages never carry secrets: they are built from the upstream's error message, the error type and
the gateway's own words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from claude_gateway.wire import ERROR_DOMAIN as DOMAIN
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import StatusCode as Code
from grpc_status import rpc_status

from server.reasons import Reason

__all__ = [
    "Code",
    "Failure",
    "GatewayError",
    "QuotaViolation",
    "Reason",
    "Violation",
    "fail",
    "to_status",
]


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
    cause: str | None = None  # below HTTP (``server.upstream.failures.CAUSES``): dns, refused, tls...
    host: str | None = None  # the upstream host the failure is about
    quota_violations: tuple[QuotaViolation, ...] = field(default=())
    ratelimits: tuple[tuple[str, str], ...] = field(default=())  # the upstream's anthropic-ratelimit-* headers


def fail(reason: Reason, message: str, **details: Any) -> Failure:
    """A failure of the gateway's own: its code comes from the ``Reason`` table."""
    return Failure(reason.code, reason.name, message, **details)


class GatewayError(Exception):
    """Ends a call with ``failure`` as its status."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def to_status(failure: Failure, events_delivered: int) -> grpc.Status:
    """The gRPC status for ``failure``, after ``events_delivered`` events reached the client."""
    metadata = {"events_delivered": str(events_delivered)}
    if failure.error_type:
        metadata["error_type"] = failure.error_type
    if failure.request_id:
        metadata["request_id"] = failure.request_id
    if failure.http_status:
        metadata["http_status"] = str(failure.http_status)
    if failure.cause:
        metadata["cause"] = failure.cause
    if failure.host:
        metadata["upstream_host"] = failure.host
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
