"""How a streamed reply is written: SSE (the Messages API, Vertex) or AWS event-stream (Bedrock).

A wire turns each event of the reply, an in-stream error, a keep-alive ping and a malformed
frame into the bytes of one chunk, and names the response's headers. Bedrock's last event,
`message_stop`, also carries `amazon-bedrock-invocationMetrics` as Bedrock's does.
"""

import json
from collections.abc import Mapping
from typing import Any, Protocol

from . import eventstream, sse
from .model import Event
from .platforms import anthropic_error, stream_exception


class Wire(Protocol):
    headers: Mapping[str, str]  # of the 200 response, besides the request id
    ping: bytes
    malformed: bytes  # a frame a reader must refuse

    def event(self, event: Event, position: int) -> bytes: ...

    def error(self, error_type: str, message: str, request_id: str) -> bytes: ...

    def replayed(self, frame: bytes, position: int) -> bytes | None:
        """An SSE frame of a recorded stream, on this wire (None: nothing to send for it)."""


class SseWire:
    headers: Mapping[str, str] = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    ping = sse.PING
    malformed = sse.MALFORMED

    def event(self, event: Event, position: int) -> bytes:
        return sse.frame(event, position)

    def error(self, error_type: str, message: str, request_id: str) -> bytes:
        return b"event: error\ndata: %s\n\n" % anthropic_error(error_type, message, request_id)

    def replayed(self, frame: bytes, position: int) -> bytes | None:
        return frame


class EventStreamWire:
    headers: Mapping[str, str] = {
        "content-type": "application/vnd.amazon.eventstream",
        "x-amzn-bedrock-content-type": "application/json",
    }
    ping = eventstream.chunk(b'{"type":"ping"}', 0)
    malformed = eventstream.corrupted(ping)

    def __init__(self, input_tokens: int = 0, output_tokens: int = 0, latency_ms: int = 0) -> None:
        self._metrics = {
            "inputTokenCount": input_tokens,
            "outputTokenCount": output_tokens,
            "invocationLatency": latency_ms,
            "firstByteLatency": latency_ms,
        }

    def event(self, event: Event, position: int) -> bytes:
        if event["type"] == "message_stop":
            event = {**event, "amazon-bedrock-invocationMetrics": self._metrics}
        return eventstream.chunk(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode(), position)

    def error(self, error_type: str, message: str, request_id: str) -> bytes:
        return eventstream.exception(*stream_exception(error_type, message))

    def replayed(self, frame: bytes, position: int) -> bytes | None:
        data = [line[5:].strip() for line in frame.split(b"\n") if line.startswith(b"data:")]
        return eventstream.chunk(b"\n".join(data), position) if data else None


def metrics_of(events: list[Event]) -> dict[str, Any]:
    """Input and output tokens of a whole reply, for Bedrock's invocation metrics."""
    start, delta = events[0]["message"]["usage"], events[-2]["usage"]
    return {"input_tokens": start["input_tokens"], "output_tokens": delta["output_tokens"]}
