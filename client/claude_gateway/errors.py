"""GatewayError: a call that ended with a non-OK gRPC status, with its rich status details decoded."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def metadata_dict(metadata: Any) -> dict[str, str | bytes]:
    """gRPC metadata (a sequence of key/value pairs, or None) as a dict; a repeated key keeps its last value."""
    return {key: value for key, value in (metadata or ())}


class GatewayError(Exception):
    """A call ended with a non-OK status.

    ``code`` and ``details`` are the status; ``error_info`` (google.rpc.ErrorInfo: reason, domain and
    metadata such as ``error_type`` and ``request_id``), ``retry_delay`` (seconds, from
    google.rpc.RetryInfo), ``violations`` (``(field, description)`` pairs from google.rpc.BadRequest)
    and ``quota_failure`` (google.rpc.QuotaFailure) come from the status details when the gateway
    sent them. ``trailing_metadata`` holds the call's trailers.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        status_details: Any = (),
        trailing_metadata: dict[str, str | bytes] | None = None,
    ) -> None:
        self.code = code
        self.details = details
        self.error_info: error_details_pb2.ErrorInfo | None = None
        self.retry_delay: float | None = None
        self.bad_request: error_details_pb2.BadRequest | None = None
        self.quota_failure: error_details_pb2.QuotaFailure | None = None
        self.trailing_metadata: dict[str, str | bytes] = trailing_metadata or {}
        for detail in status_details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                self.error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(self.error_info)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                self.retry_delay = info.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                self.bad_request = error_details_pb2.BadRequest()
                detail.Unpack(self.bad_request)
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                self.quota_failure = error_details_pb2.QuotaFailure()
                detail.Unpack(self.quota_failure)
        super().__init__(f"{code.name}: {details}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> GatewayError:
        """The GatewayError for a failed sync or asyncio call (both are grpc.RpcError)."""
        status = rpc_status.from_call(error)
        details = error.details() or ""
        trailers = metadata_dict(error.trailing_metadata())
        return cls(error.code(), details, status.details if status is not None else (), trailers)

    @property
    def error_type(self) -> str | None:
        """The Messages API error type (e.g. "rate_limit_error"), when the failure came from upstream."""
        return self.error_info.metadata.get("error_type") if self.error_info is not None else None

    @property
    def request_id(self) -> str | None:
        """The upstream request id, when the upstream answered."""
        return self.error_info.metadata.get("request_id") if self.error_info is not None else None

    @property
    def violations(self) -> list[tuple[str, str]]:
        """Each offending request field and why, from google.rpc.BadRequest."""
        if self.bad_request is None:
            return []
        return [(v.field, v.description) for v in self.bad_request.field_violations]

    def describe(self) -> str:
        """Every detail, one per line, for people reading a terminal."""
        lines = [f"{self.code.name}: {self.details}"]
        if self.error_info is not None:
            meta = " ".join(f"{k}={v}" for k, v in sorted(self.error_info.metadata.items()))
            lines.append(f"  reason: {self.error_info.reason} ({self.error_info.domain}) {meta}".rstrip())
        if self.retry_delay is not None:
            lines.append(f"  retry after: {self.retry_delay:g}s")
        lines.extend(f"  bad field {name}: {why}" for name, why in self.violations)
        if self.quota_failure is not None:
            lines.extend(f"  quota {v.subject}: {v.description}" for v in self.quota_failure.violations)
        return "\n".join(lines)
