"""CreateMessage's reply: the final message built from the upstream events, as the SDK's helper builds it.

The events go to the SDK's ``accumulate_event`` as the upstream's JSON objects, and the message is
converted to its proto once, at the end.
"""

from __future__ import annotations

from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb

from server.events import Event


class MessageAccumulator:
    """Feed it every batch of a call; ``response()`` is the CreateMessage reply."""

    def __init__(self) -> None:
        self._snapshot: Any = None
        self._json_bufs: dict[int, bytes] = {}

    async def add(self, batch: list[Event]) -> None:
        for name, obj, _ in batch:
            if name != "ping" and obj.get("type") in _KNOWN:  # as the SDK, which skips unknown event types
                self._snapshot = accumulate_event(
                    event=obj,  # type: ignore[arg-type]  # the SDK builds its typed event from the JSON
                    current_snapshot=self._snapshot,
                    json_bufs=self._json_bufs,
                )

    def response(self) -> pb.CreateMessageResponse:
        message = codec.from_json(self._snapshot.to_dict(mode="json", warnings=False), pb.Message())
        return pb.CreateMessageResponse(message=message)


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
