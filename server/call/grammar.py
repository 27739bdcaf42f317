"""The documented stream grammar, checked at a few comparisons per event.

    message_start (content_block_start content_block_delta* content_block_stop)* message_delta+ message_stop

with `ping` anywhere, blocks that may interleave (each keeps its own index, started in order from 0),
and a tool block that a `max_tokens` stop may leave without its `content_block_stop`. Event types
the gateway does not know pass once the message has started. As the SDKs do, a repeated
`message_start` and a `message_stop` without `message_delta` are let through (the official SDKs' own
test streams hold both). ``Grammar.check`` raises GatewayError
(DATA_LOSS / UPSTREAM_OUT_OF_ORDER) at the first event that breaks the grammar, or whose shape would
leave the SDK's accumulation nothing to work on (an `index` that is not an integer, a `delta` that is
not an object...).
"""

from __future__ import annotations

from typing import Any

from server.errors import GatewayError, Reason, fail

_BLOCK_EVENTS = ("content_block_start", "content_block_delta", "content_block_stop")


class Grammar:
    """The state of one stream: started, blocks started and still open, message_delta seen."""

    __slots__ = ("_ended", "_open", "_started", "_started_blocks")

    def __init__(self) -> None:
        self._started = False
        self._ended = False  # message_delta seen: no block event may follow
        self._open: set[int] = set()
        self._started_blocks = 0

    def check(self, name: str, obj: dict[str, Any]) -> None:
        """Accept the next event or raise GatewayError saying how it breaks the grammar."""
        kind = obj.get("type")
        if kind == "content_block_delta":  # the hot path: three comparisons
            index = obj.get("index")
            if type(index) is int and index in self._open and type(obj.get("delta")) is dict and name == kind:
                return
            if type(index) is int and index not in self._open:
                raise _broken(f"content_block_delta for block {index}, which is not open")
            raise _broken("content_block_delta without an integer index and a delta object")
        if name != kind:
            raise _broken(f"event {name!r} carries type {kind!r}")
        if kind == "ping":
            return
        if not self._started:
            if kind != "message_start":
                raise _broken(f"the stream starts with {kind!r}, not message_start")
            if type(obj.get("message")) is not dict:
                raise _broken("message_start without a message object")
            self._started = True
            return
        if kind == "content_block_start":
            index = obj.get("index")
            if index != self._started_blocks or type(index) is not int:
                raise _broken(f"content_block_start for block {index!r}, expected {self._started_blocks}")
            if type(obj.get("content_block")) is not dict:
                raise _broken("content_block_start without a content_block object")
            if self._ended:
                raise _broken("content_block_start after message_delta")
            self._open.add(index)
            self._started_blocks += 1
        elif kind == "content_block_stop":
            index = obj.get("index")
            if type(index) is not int or index not in self._open:
                raise _broken(f"content_block_stop for block {index!r}, which is not open")
            self._open.discard(index)
        elif kind == "message_delta":
            if type(obj.get("delta")) is not dict or type(obj.get("usage")) is not dict:
                raise _broken("message_delta without delta and usage objects")
            self._ended = True


def _broken(what: str) -> GatewayError:
    return GatewayError(fail(Reason.UPSTREAM_OUT_OF_ORDER, f"upstream broke the stream grammar: {what}"))
