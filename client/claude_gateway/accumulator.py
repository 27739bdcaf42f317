"""Rebuild the final message from stream events, as the anthropic SDK's stream helper does.

``accumulate(snapshot, event)`` takes and returns plain JSON objects (the Messages API shapes),
so it works on what ``claude_gateway.codec.to_json`` gives back for each event. Tool input is
parsed from the concatenated input_json_delta pieces, partially if a reply was cut short.
"""

from __future__ import annotations

import copy
from typing import Any

import jiter

JSON = dict[str, Any]

# message_delta usage counts that, when present, replace the message_start values.
_USAGE_TOTALS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)
_TRACKS_TOOL_INPUT = ("tool_use", "server_tool_use")


class Accumulator:
    """Feeds events in stream order; ``message`` is the snapshot so far (None before message_start)."""

    def __init__(self) -> None:
        self.message: JSON | None = None
        self._json_bufs: dict[int, str] = {}

    def add(self, event: JSON) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.message = copy.deepcopy(event["message"])
            return
        message = self.message
        if message is None:
            if kind in ("ping",) or kind not in _KNOWN:
                return
            raise ValueError(f"{kind} before message_start")
        if kind == "content_block_start":
            message["content"].append(copy.deepcopy(event["content_block"]))
        elif kind == "content_block_delta":
            self._delta(message["content"][event["index"]], event["index"], event["delta"])
        elif kind == "message_delta":
            delta = event.get("delta", {})
            message["stop_reason"] = delta.get("stop_reason")
            message["stop_sequence"] = delta.get("stop_sequence")
            message["stop_details"] = delta.get("stop_details")
            if delta.get("container") is not None:
                message["container"] = delta["container"]
            usage = event.get("usage", {})
            message["usage"]["output_tokens"] = usage.get("output_tokens")
            for key in _USAGE_TOTALS:
                if usage.get(key) is not None:
                    message["usage"][key] = usage[key]

    def _delta(self, block: JSON, index: int, delta: JSON) -> None:
        kind = delta.get("type")
        if kind == "text_delta" and block.get("type") == "text":
            block["text"] += delta["text"]
        elif kind == "input_json_delta" and block.get("type") in _TRACKS_TOOL_INPUT:
            buf = self._json_bufs.get(index, "") + delta["partial_json"]
            self._json_bufs[index] = buf
            if buf:
                block["input"] = jiter.from_json(buf.encode(), partial_mode=True)
        elif kind == "citations_delta" and block.get("type") == "text":
            if block.get("citations"):
                block["citations"].append(delta["citation"])
            else:
                block["citations"] = [delta["citation"]]
        elif kind == "thinking_delta" and block.get("type") == "thinking":
            block["thinking"] += delta["thinking"]
        elif kind == "signature_delta" and block.get("type") == "thinking":
            block["signature"] = delta["signature"]


_KNOWN = ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta")
