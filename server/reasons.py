"""The gateway's own failure reasons, in one table: ``ErrorInfo.reason``, its gRPC code, and when.

Upstream API errors carry the API's error type instead (``OVERLOADED_ERROR``...; see
``server.upstream.failures.API_ERRORS``). The docs' table of the gateway's own failures is this enum, and a
test holds them equal.
"""

from __future__ import annotations

from enum import Enum

from grpc import StatusCode as Code


class Reason(Enum):
    """A failure of the gateway's own, with its gRPC code and a sentence on when it happens."""

    def __init__(self, code: Code, when: str) -> None:
        self.code = code
        self.when = when

    INVALID_REQUEST = (
        Code.INVALID_ARGUMENT,
        "the request's shape is wrong; `BadRequest` names every bad field; nothing was sent upstream",
    )
    TOO_MANY_STREAMS = (Code.RESOURCE_EXHAUSTED, "`GATEWAY_MAX_CONCURRENT_STREAMS` calls are in flight")
    BODY_BUDGET_EXHAUSTED = (
        Code.RESOURCE_EXHAUSTED,
        "the request bodies in flight fill `GATEWAY_MAX_BODY_BYTES_IN_FLIGHT`; refused before the body was read, "
        "`RetryInfo` says when to try again",
    )
    SHUTTING_DOWN = (Code.UNAVAILABLE, "the gateway is draining, or the drain grace ended mid-call")
    FIRST_EVENT_TIMEOUT = (Code.DEADLINE_EXCEEDED, "no upstream event within `GATEWAY_FIRST_EVENT_TIMEOUT`")
    UPSTREAM_IDLE_TIMEOUT = (Code.DEADLINE_EXCEEDED, "upstream silent for `GATEWAY_IDLE_TIMEOUT`")
    MAX_STREAM_DURATION = (Code.DEADLINE_EXCEEDED, "the call reached `GATEWAY_MAX_STREAM_SECONDS`")
    DEADLINE_EXCEEDED = (Code.DEADLINE_EXCEEDED, "the caller's deadline passed")
    CALLER_UNAUTHENTICATED = (
        Code.UNAUTHENTICATED,
        "callers are identified and the call names none: no `authorization: Bearer <token>` of a known token, "
        "or no client certificate name (mtls); nothing was sent upstream",
    )
    CALLER_NOT_ALLOWED = (
        Code.PERMISSION_DENIED,
        'the policy file neither names the caller nor has a `"*"` entry; nothing was sent upstream',
    )
    MODEL_NOT_ALLOWED = (
        Code.PERMISSION_DENIED,
        "the model, after aliases, is not in the caller's `models` list; nothing was sent upstream",
    )
    MAX_TOKENS_OVER_LIMIT = (
        Code.RESOURCE_EXHAUSTED,
        "`max_tokens` is over the caller's cap; `QuotaFailure` names it; no `RetryInfo` (waiting will not help)",
    )
    QUOTA_EXCEEDED = (
        Code.RESOURCE_EXHAUSTED,
        "the caller is at its `concurrent_streams`, `requests_per_minute` or `tokens_per_minute` limit; "
        "`QuotaFailure` names each, `RetryInfo` says when to try again; nothing was sent upstream",
    )
    QUOTA_STORE_UNAVAILABLE = (
        Code.UNAVAILABLE,
        "Redis cannot be reached and `GATEWAY_REDIS_UNREACHABLE=closed`; nothing was sent upstream",
    )
    GATEWAY_NOT_CONFIGURED = (
        Code.FAILED_PRECONDITION,
        "the gateway has no Anthropic credentials (`ANTHROPIC_API_KEY` unset)",
    )
    MODEL_NOT_SERVED = (
        Code.NOT_FOUND,
        "no backend of `GATEWAY_BACKENDS_FILE` serves the model (after aliases); nothing was sent upstream",
    )
    NO_BACKEND_AVAILABLE = (
        Code.UNAVAILABLE,
        "every key that serves the model is dead (a spend limit, refused credentials) or cooling down past the "
        "call's first-event bound (`RetryInfo` says for how long); nothing was sent upstream",
    )
    UPSTREAM_UNREACHABLE = (
        Code.UNAVAILABLE,
        "cannot connect to the upstream; ErrorInfo's `cause` says why (dns, refused, tls, timeout) and "
        "`upstream_host` where",
    )
    UPSTREAM_MALFORMED_HTTP = (
        Code.UNAVAILABLE,
        "the upstream's response is not valid HTTP (a bad status line, header or chunk)",
    )
    UPSTREAM_TIMEOUT = (Code.UNAVAILABLE, "the upstream connection timed out")
    UPSTREAM_CONNECTION_LOST = (Code.UNAVAILABLE, "the upstream connection broke mid-stream")
    UPSTREAM_INCOMPLETE_STREAM = (Code.UNAVAILABLE, "the upstream stream ended without `message_stop`")
    UPSTREAM_MALFORMED_EVENT = (
        Code.DATA_LOSS,
        "the upstream sent a frame that is not a JSON object, bytes that are not UTF-8, or (CreateMessage) an "
        "event the message cannot be built from, such as tool input that is not JSON",
    )
    UPSTREAM_ECHOED_SECRET = (
        Code.DATA_LOSS,
        "the upstream's reply holds the gateway's credentials (its API key or token): the read that held them "
        "was not passed on, nor anything after it; the events before it were delivered",
    )
    UPSTREAM_OUT_OF_ORDER = (
        Code.DATA_LOSS,
        "the upstream broke the stream grammar (a delta before its block's start, an index jump, a stream not "
        "starting with `message_start`...); the events before it were delivered",
    )
    UPSTREAM_EVENT_TOO_LARGE = (
        Code.RESOURCE_EXHAUSTED,
        "one upstream event (or line) is larger than `GATEWAY_MAX_EVENT_BYTES`; the events before it were delivered",
    )
    REPLY_TOO_LARGE = (
        Code.RESOURCE_EXHAUSTED,
        "one event, or CreateMessage's whole message, is larger than `GATEWAY_MAX_MESSAGE_BYTES`",
    )
    UPSTREAM_REDIRECTED = (
        Code.FAILED_PRECONDITION,
        "the upstream answered with a redirect (HTTP 3xx), which the gateway never follows",
    )
    UPSTREAM_COMPRESSED = (
        Code.FAILED_PRECONDITION,
        "the upstream answered with a `content-encoding` other than `identity`, which the gateway never inflates",
    )
    STREAM_NOT_FOUND = (
        Code.NOT_FOUND,
        "ResumeStream or CancelStream named a stream the gateway never saw (or forgot a day after its retention): "
        "not started with `detach_grace_seconds`, or started on another replica of a gateway without Redis",
    )
    STREAM_EXPIRED = (
        Code.OUT_OF_RANGE,
        "the stream's events after `after_seq` are no longer all kept (past `GATEWAY_RESUME_RETENTION`, evicted "
        "from memory, or beyond `GATEWAY_RESUME_MAX_EVENTS`): nothing is replayed; start the call again",
    )
    STREAM_OF_ANOTHER_CALLER = (
        Code.PERMISSION_DENIED,
        "ResumeStream or CancelStream named a stream another caller started; only its own caller may",
    )
    STREAM_CANCELLED = (Code.CANCELLED, "CancelStream ended the resumable stream; the events before it were delivered")
    STREAM_ABANDONED = (
        Code.CANCELLED,
        "no caller followed the resumable stream for its detach grace, so the gateway cancelled its upstream request",
    )
    STREAM_NOT_RESUMABLE = (
        Code.FAILED_PRECONDITION,
        "the stream's events could not all be stored (Redis failed mid-stream), so it cannot be resumed; "
        "the stream itself went on to its end for the caller that was following it",
    )
    STREAM_PRODUCER_LOST = (
        Code.UNAVAILABLE,
        "the replica reading the stream's reply stopped before its end (it crashed, or was killed past its drain "
        "grace): the events it had stored were replayed once, the rest will never come; start the call again",
    )
    STREAM_STORE_UNAVAILABLE = (
        Code.UNAVAILABLE,
        "ResumeStream or CancelStream could not reach Redis to find the stream; try again",
    )
    GATEWAY_ERROR = (Code.INTERNAL, "a fault inside the gateway (a bug: please report it with the log line)")
