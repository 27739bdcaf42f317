"""Misbehaviours the simulator can be told to show on one POST /v1/messages.

`after_events` counts the events of the reply itself, including the ping that follows the first
content_block_start but not the keep-alive pings of `Pace.ping_interval`. A count beyond the
reply's length applies the fault after its last event. On a non-streaming request, `Cut` and
`EndWithoutStop` drop the connection without a response, `Stall` never answers, `ErrorEvent`
becomes the HTTP error of its type and `Malformed` answers 200 with a body that is not JSON.

Error types are the Messages API's (`overloaded_error`, ...); each platform writes them in its own
shape (`platforms`). A type ending in `Exception` (`throttlingException`, `ThrottlingException`)
is Bedrock's own and is sent as it is: meant for requests to the Bedrock paths.
"""

from dataclasses import dataclass

# The HTTP status the real API pairs with each error type.
STATUS_BY_ERROR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@dataclass(frozen=True)
class HttpError:
    """Answer with this status and an error body instead of a reply."""

    status: int
    error_type: str
    message: str = "Simulated error"
    retry_after: float | None = None  # seconds, sent as `retry-after`
    retry_after_ms: int | None = None  # sent as `retry-after-ms`
    should_retry: bool | None = None  # sent as `x-should-retry: true|false`


@dataclass(frozen=True)
class SpendLimit:
    """Answer as when the key's spend or credit limit is reached: waiting will not clear it.

    The Messages API says 429 `rate_limit_error` with no `retry-after` and a message naming the
    usage limit and when access returns (`status` can make it the 400 also seen for it); Bedrock
    says 403 `AccessDeniedException` about the payment instrument; Vertex 403 `PERMISSION_DENIED`
    about billing.
    """

    status: int = 429


@dataclass(frozen=True)
class ErrorEvent:
    """Stream 200, then after N events an `error` event, then end the response cleanly."""

    after_events: int
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


@dataclass(frozen=True)
class Cut:
    """After N events abort the TCP connection, with no chunked terminator."""

    after_events: int


@dataclass(frozen=True)
class Stall:
    """After N events send nothing more until the client leaves; -1 stalls before the headers."""

    after_events: int


@dataclass(frozen=True)
class Malformed:
    """After N events send a frame whose data is not JSON, then the rest of the reply."""

    after_events: int


@dataclass(frozen=True)
class EndWithoutStop:
    """After N events end the response cleanly, so the stream lacks message_stop."""

    after_events: int


@dataclass(frozen=True)
class Replay:
    """Answer 200 with exactly this SSE body (and these extra headers), paced like a reply.

    The body is sent in one chunk per blank-line-terminated frame; a `Pace.ping_interval` adds pings.
    """

    body: bytes
    headers: dict[str, str] | None = None
    end_delay: float = 0.0  # seconds between the last frame and the body's end (the last, empty chunk)


StreamFault = ErrorEvent | Cut | Stall | Malformed | EndWithoutStop
Fault = HttpError | SpendLimit | Replay | StreamFault
