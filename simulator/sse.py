"""Server-sent event frames as the real API writes them.

A frame is `event: TYPE\\ndata: ONE-LINE-JSON\\n\\n`. The JSON is compact, and some frames carry
spaces before the final `}` as real captures do, so clients that compare bytes or split naively
are caught; pings are written exactly as the API writes them.
"""

import json
from collections.abc import Mapping
from typing import Any

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MALFORMED = b"event: content_block_delta\ndata: {not json\n\n"
_PADDING = (0, 0, 3, 0, 1, 0, 0, 9)  # spaces before the closing brace, by position in the stream


def frame(event: Mapping[str, Any], position: int) -> bytes:
    """The frame for `event`, the `position`-th of its stream (which decides its padding)."""
    if event["type"] == "ping":
        return PING
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    data = data[:-1] + " " * _PADDING[position % len(_PADDING)] + "}"
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def split(body: bytes) -> list[bytes]:
    """`body` cut after each blank line, so the pieces join back to exactly `body`."""
    pieces = [piece + b"\n\n" for piece in body.split(b"\n\n")]
    pieces[-1] = pieces[-1][:-2]  # the text after the last blank line had no separator
    return [piece for piece in pieces if piece]


def is_delta(frame: bytes) -> bool:
    """Whether `frame` carries content, and so is paced."""
    return frame.startswith(b"event: content_block_delta")
