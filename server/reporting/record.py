"""``CallRecord``: one call's facts, filled in as it runs and reported once at its end.

``server.reporting.telemetry`` turns a finished record into the trailer, the log line and the metrics;
``server.reporting.tracing`` into spans. ``see(batch)`` is the only per-batch work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.redaction import model_id
from server.reporting.usage import Usage

if TYPE_CHECKING:  # the event type only: reporting sits below the call and never imports it at run time
    from server.call.events import Event


OK = "OK"
CANCELLED = "CANCELLED"
BEFORE_FIRST_EVENT = "before_first_event"
STREAMING = "streaming"


@dataclass(eq=False)
class CallRecord:
    """One call's facts, filled in as it runs."""

    method: str
    model: str  # the model id the call asked for (aliases and the default resolved by admission)
    started: float = field(default_factory=time.monotonic)
    caller: str = ""
    usage: Usage = field(default_factory=Usage)
    first_token: float | None = None  # monotonic time of the first content delta from upstream
    ended: float | None = None
    events: int = 0  # delivered to the caller
    bytes_read: int = 0
    attempts: int = 0
    retried: list[str] = field(default_factory=list)  # the failure of each retried attempt
    request_id: str | None = None
    stream_id: str | None = None  # a StreamMessage call's stream (``claude-gateway-stream-id``)
    response_id: str | None = None
    response_model: str | None = None  # the model that served, as message_start said (when it looks like an id)
    stop_reason: str | None = None
    status: str = CANCELLED  # the gRPC code's name, unless the call ends otherwise: the client left
    reason: str = ""  # "" for OK, ErrorInfo's reason for a failure, CLIENT_CANCELLED for a client's cancel
    error_type: str | None = None  # error.type of the spans and the duration metric
    upstream_error: str | None = None  # the final failure, when it came from upstream
    cause: str | None = None  # below HTTP, of the final failure: dns, refused, tls, timeout, malformed...
    upstream_host: str | None = None  # the host the final failure is about
    cancelled_phase: str | None = None
    cost: float | None = None
    # With a backends file (else None): the backend and key id ("-": none of its own) that served, or that
    # failed last; its gen_ai.provider.name; each attempt after which the call moved on, and the one that
    # ended it (each {"backend", "key_id", "reason": the verdict, "error": the error type or reason}).
    backend: str | None = None
    key_id: str | None = None
    provider: str = "anthropic"
    failovers: list[dict[str, str]] | None = None
    final: dict[str, str] | None = None

    def pool(
        self,
        backend: str | None,
        key_id: str | None,
        provider: str | None,
        failovers: list[dict[str, str]],
        final: dict[str, str] | None,
    ) -> None:
        """Note how the call went through the pool of a backends file."""
        self.backend, self.key_id, self.failovers, self.final = backend, key_id, failovers, final
        self.provider = provider or self.provider

    def see(self, batch: list[Event]) -> None:
        """Take note of one batch of upstream events, before it is delivered: usage, the first content delta."""
        for name, obj, _ in batch:
            if name == "content_block_delta":
                if self.first_token is None:
                    self.first_token = time.monotonic()
            elif name == "message_start" or name == "message_delta":
                self.usage.observe(name, obj)
                if name == "message_start":
                    message = obj.get("message")
                    if isinstance(message, dict):
                        self.response_id = _text(message.get("id"))
                        self.response_model = model_id(message.get("model"))  # untrusted text, a metric label
                else:
                    delta = obj.get("delta")
                    if isinstance(delta, dict):
                        self.stop_reason = _text(delta.get("stop_reason")) or self.stop_reason

    @property
    def served_by(self) -> str:
        """The model the call is priced and counted by: the one that served it, else the one asked for."""
        return self.response_model or self.model

    @property
    def partial(self) -> bool:
        """Whether the call did not end OK: its usage is what the upstream reported before the end."""
        return self.status != OK

    @property
    def duration(self) -> float:
        """Seconds from the call's arrival to its end (or to now)."""
        return (self.ended or time.monotonic()) - self.started

    @property
    def ttft(self) -> float | None:
        """Seconds from the call's arrival to the first content delta from upstream."""
        return None if self.first_token is None else self.first_token - self.started

    @property
    def time_per_output_token(self) -> float | None:
        """Seconds per output token after the first, for a call that completed with more than one."""
        tokens = self.usage.output_tokens
        if self.status != OK or self.first_token is None or self.ended is None or tokens < 2:
            return None
        return (self.ended - self.first_token) / (tokens - 1)

    def summary(self) -> dict[str, Any]:
        """The usage trailer's JSON object; with a backends file, also who served and what failed over."""
        out = {
            "model": self.model,
            "response_model": self.response_model,
            "usage": self.usage.values,
            "cost_usd": self.cost,
            "partial": self.partial,
        }
        if self.usage.invalid is not None:
            out["usage_invalid"] = self.usage.invalid
        if self.failovers is not None:
            out.update(self.upstream())
        return out

    def upstream(self) -> dict[str, Any]:
        """The backend and key that served (or failed last), and the attempts that failed over before."""
        return {
            "backend": self.backend,
            "key_id": self.key_id,
            "failovers": self.failovers,
        }

    def log_line(self) -> dict[str, Any]:
        """The call's log line, as a JSON object."""
        ttft = self.ttft
        return {
            "event": "call",
            "method": self.method,
            "caller": self.caller,
            "model": self.model,
            "response_model": self.response_model,
            "status": self.status,
            "reason": self.reason,
            "request_id": self.request_id,
            "stream_id": self.stream_id,
            "ttft_ms": None if ttft is None else round(ttft * 1e3, 3),
            "duration_ms": round(self.duration * 1e3, 3),
            "events": self.events,
            "attempts": self.attempts,
            "usage": self.usage.values,
            "usage_invalid": self.usage.invalid,
            "cost_usd": self.cost,
            "partial": self.partial,
            "cause": self.cause,
            "upstream_host": self.upstream_host,
            **(self.upstream() if self.failovers is not None else {}),
        }


def _text(value: Any) -> str | None:
    """An upstream string the record keeps (span attributes): at most 128 characters, else none."""
    return value if isinstance(value, str) and len(value) <= 128 else None
