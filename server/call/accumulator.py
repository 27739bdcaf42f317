"""CreateMessage's reply: the final message built from the upstream events, as the SDK's helper builds it
(its beta helper when the call has betas).

The events go to the SDK's ``accumulate_event`` as the upstream's JSON objects, and the message is
converted to its proto once, at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx2
from claude_gateway import codec
from claude_gateway.sdk import accumulate_beta_event, accumulate_event
from claude_gateway.v1 import chat_pb2 as pb

from server.call.events import OFFLOAD_BYTES, Event, text_size, too_large_reply
from server.errors import GatewayError, Reason, fail


class MessageAccumulator:
    """Feed it every batch of a call; ``response()`` is the CreateMessage reply."""

    def __init__(self, max_message_bytes: int, betas: Sequence[str] = ()) -> None:
        self._limit = max_message_bytes
        self.betas = betas  # the request's; a port that reads the request after making this sets them then
        self._accumulate: Callable[..., Any] = accumulate_event
        self._extra: dict[str, Any] | None = None  # made at the first event: admission checked the betas by then
        self._snapshot: Any = None
        self._json_bufs: dict[int, bytes] = {}
        self._response: pb.CreateMessageResponse | None = None
        self._text = 0  # data text accumulated so far

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
        try:
            for name, obj, _ in batch:
                if obj.get("type") in _KNOWN:  # as the SDK, which skips unknown event types (and pings)
                    self._snapshot = self._accumulate(
                        event=obj,  # the SDK builds its typed event from the JSON
                        current_snapshot=self._snapshot,
                        json_bufs=self._json_bufs,
                        **self._extra,
                    )
                if name == "message_stop":
                    message = codec.from_json(self._snapshot.to_dict(mode="json", warnings=False), pb.Message())
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

    def response(self) -> pb.CreateMessageResponse:
        """The reply, once message_stop was accumulated."""
        assert self._response is not None
        return self._response


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
