"""CreateMessage's reply: the final message built from the upstream events, as the SDK's helper builds it
(its beta helper when the call has betas).

The events go to the SDK's ``accumulate_event`` as the upstream's JSON objects, and the message is
converted to its proto once, at the end. The deltas that carry a block's text, thinking and tool input
do not go one by one: the SDK appends each to the block's string (a copy of all so far: quadratic in the
reply) and re-parses a tool's whole input at each piece. They are gathered per block and handed to it
as one delta each when anything else happens to the block, at its stop, or when the message ends:
appended once and parsed once. The SDK's result is the same; its cost is linear in the reply. A running
count of those pieces fails a reply that cannot fit in one message (REPLY_TOO_LARGE) as soon as it is
sure, not at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx2
from claude_gateway import codec
from claude_gateway.sdk import accumulate_beta_event, accumulate_event
from claude_gateway.v1 import chat_pb2 as pb

from server.call.events import MAX_EVENT_DEPTH, OFFLOAD_BYTES, Event, text_size, too_deep, too_large_reply
from server.errors import GatewayError, Reason, fail

# The hot deltas, gathered per block: delta type -> its one string field, and how many of its characters
# make at least one byte of the final message (text: each character is at least one byte; a tool's
# JSON input: whitespace and escapes can shrink it, so only an eighth is counted for sure).
_GATHERED = {"text_delta": ("text", 1), "thinking_delta": ("thinking", 1), "input_json_delta": ("partial_json", 8)}


class MessageAccumulator:
    """Feed it every batch of a call; ``response()`` is the CreateMessage reply."""

    def __init__(self, max_message_bytes: int, betas: Sequence[str] = ()) -> None:
        self._limit = max_message_bytes
        self.betas = betas  # the request's; a port that reads the request after making this sets them then
        self._accumulate: Callable[..., Any] = accumulate_event
        self._extra: dict[str, Any] | None = None  # made at the first event: admission checked the betas by then
        self._snapshot: Any = None
        self._json_bufs: dict[int, bytes] = {}
        self._pending: dict[int, tuple[str, list[str]]] = {}  # block index -> delta type, its pieces so far
        self._response: pb.CreateMessageResponse | None = None
        self._text = 0  # data text accumulated so far
        self._least = 0  # bytes the final message will at least hold, from the gathered pieces

    async def add(self, batch: list[Event]) -> None:
        """Accumulate one batch; at message_stop, build the reply. An event the SDK's accumulation
        cannot use (tool input that is not JSON, a message without usage...) raises GatewayError.
        Big batches, and the final conversion of a big message, run off the event loop."""
        size = text_size(batch)
        self._text += size
        if size < OFFLOAD_BYTES and (self._text < OFFLOAD_BYTES or batch[-1][0] != "message_stop"):
            self._add(batch)
        else:
            await asyncio.to_thread(self._add, batch)

    def _add(self, batch: list[Event]) -> None:
        if self._extra is None:
            self._extra = {}
            if self.betas:
                # The SDK's beta helper, which knows beta blocks and deltas (compaction, fallback, context
                # management) and reads the request's `anthropic-beta` header as the SDK's beta stream does.
                self._accumulate = accumulate_beta_event
                self._extra["request_headers"] = httpx2.Headers({"anthropic-beta": ",".join(self.betas)})
        pending = self._pending
        try:
            for name, obj, _ in batch:
                kind = obj.get("type")
                if kind == "content_block_delta":
                    index, delta = obj.get("index"), obj.get("delta")
                    if type(index) is int and type(delta) is dict and len(delta) == 2:
                        delta_type = delta.get("type")
                        gathered = _GATHERED.get(delta_type) if type(delta_type) is str else None
                        if gathered is not None and type(piece := delta.get(gathered[0])) is str:
                            assert isinstance(delta_type, str)
                            held = pending.get(index)
                            if held is None or held[0] != delta_type:
                                if held is not None:
                                    self._flush(index)
                                held = pending[index] = (delta_type, [])
                            held[1].append(piece)
                            self._least += len(piece) // gathered[1]
                            if self._least > self._limit:
                                raise GatewayError(too_large_reply(self._least, self._limit))
                            continue
                if kind in _KNOWN:  # as the SDK, which skips unknown event types (and pings)
                    if pending:
                        index = obj.get("index")
                        if kind in ("message_delta", "message_stop"):
                            for held_index in list(pending):
                                self._flush(held_index)
                        elif type(index) is int and index in pending:
                            self._flush(index)
                    self._sdk(obj)
                if name == "message_stop":
                    final = self._snapshot.to_dict(mode="json", warnings=False)
                    if too_deep(final, MAX_EVENT_DEPTH + 1):  # a block's place in a message is one level deeper
                        raise GatewayError(
                            fail(
                                Reason.UPSTREAM_MALFORMED_EVENT,
                                f"upstream's message nests deeper than {MAX_EVENT_DEPTH} levels",
                            )
                        )
                    message = codec.from_json(final, pb.Message())
                    self._response = pb.CreateMessageResponse(message=message)
                    size = self._response.ByteSize()
                    if size > self._limit:
                        raise GatewayError(too_large_reply(size, self._limit))
        except GatewayError:
            raise
        except Exception as exc:
            raise GatewayError(
                fail(Reason.UPSTREAM_MALFORMED_EVENT, f"upstream sent an event the message cannot be built from: {exc}")
            ) from None

    def _flush(self, index: int) -> None:
        """Hand the SDK the pieces gathered for block ``index`` as one delta."""
        delta_type, pieces = self._pending.pop(index)
        field = _GATHERED[delta_type][0]
        self._sdk(
            {"type": "content_block_delta", "index": index, "delta": {"type": delta_type, field: "".join(pieces)}}
        )

    def _sdk(self, event: dict[str, Any]) -> None:
        assert self._extra is not None
        self._snapshot = self._accumulate(
            event=event,  # the SDK builds its typed event from the JSON
            current_snapshot=self._snapshot,
            json_bufs=self._json_bufs,
            **self._extra,
        )

    def response(self) -> pb.CreateMessageResponse:
        """The reply, once message_stop was accumulated."""
        assert self._response is not None
        return self._response


def warm() -> None:
    """Accumulate one short message of each kind of block, with and without betas, so that the SDK builds its
    models' validators (tenths of a second of CPU, once per process) at start-up rather than on the event
    loop in the first CreateMessage calls."""
    message = {"id": "msg_warm", "type": "message", "role": "assistant", "model": "warm", "content": []}
    usage = {"input_tokens": 1, "output_tokens": 1}
    blocks: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"type": "text", "text": ""}, {"type": "text_delta", "text": "warm"}),
        ({"type": "thinking", "thinking": "", "signature": ""}, {"type": "thinking_delta", "thinking": "warm"}),
        (
            {"type": "tool_use", "id": "toolu_warm", "name": "warm", "input": {}},
            {"type": "input_json_delta", "partial_json": "{}"},
        ),
    ]
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "stop_reason": None, "stop_sequence": None, "usage": usage}}
    ]
    for index, (block, delta) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}
    )
    events.append({"type": "message_stop"})
    for betas in ((), ("warm-2025-01-01",)):
        MessageAccumulator(1 << 20, betas)._add([(e["type"], e, "") for e in events])


_KNOWN = frozenset(
    (
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    )
)
