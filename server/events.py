"""Upstream server-sent events -> ``MessageStreamEvent`` protos.

``SseFramer`` cuts the upstream byte stream into complete SSE events with the SDK's own line
decoder, keeping the events of one network read together so that the gateway can send what is
already waiting in one gRPC message. ``to_event`` is the pure mapping of one event, lossless by
``claude_gateway.codec``; an `error` event or a malformed frame raises ``GatewayError``.
"""

from __future__ import annotations

import json

from anthropic._streaming import ServerSentEvent, SSEDecoder
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb

from server.errors import Code, Failure, GatewayError, from_api_error


class SseFramer:
    """Feeds raw bytes, returns the events they complete, in order."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._pending = b""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        data = self._pending + chunk if self._pending else chunk
        lines = data.splitlines(keepends=True)
        # A last line without its terminator is incomplete; so is a lone "\r" that may be half of "\r\n".
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._pending = lines.pop()
        else:
            self._pending = b""
        events = []
        decode = self._decoder.decode
        for line in lines:
            sse = decode(line.rstrip(b"\r\n").decode("utf-8"))
            # The SDK ignores frames without an `event:` line; so do we.
            if sse is not None and sse.event is not None:
                events.append(sse)
        return events


def to_event(sse: ServerSentEvent) -> pb.MessageStreamEvent:
    """The proto for one upstream event; raises GatewayError for `error` events and bad frames."""
    try:
        obj = json.loads(sse.data)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise GatewayError(
            Failure(Code.DATA_LOSS, "UPSTREAM_MALFORMED_EVENT", f"upstream sent a malformed {sse.event!r} event")
        )
    if sse.event == "error":
        error = obj.get("error")
        error = error if isinstance(error, dict) else {}
        error_type = error.get("type")
        message = error.get("message")
        request_id = obj.get("request_id")
        raise GatewayError(
            from_api_error(
                error_type if isinstance(error_type, str) else None,
                message if isinstance(message, str) else "error event",
                request_id=request_id if isinstance(request_id, str) else None,
            )
        )
    return codec.from_json(obj, pb.MessageStreamEvent(), sse.data)
