"""The simulator's deterministic "model": the events of the reply to a checked request.

`reply()` is a pure function of the request body, the prompt (the last user turn with directives
removed), a length and a serial number (for ids). One token is one word with its leading space,
and each token is one delta.

- Text echoes the prompt's words, then cycles through filler words, up to `length` tokens
  (`DEFAULT_LENGTH` when None).
- `thinking` of type `enabled` or `adaptive`: a thinking block comes first (a `thinking_delta` per
  word, then one `signature_delta`).
- Custom tools offered (and `tool_choice` not `none`): a short text block (only under `auto`), then
  a `tool_use` block for the tool `tool_choice` names, else the first one. Its input is built from
  the tool's `input_schema` properties (an enum's first value; strings take the prompt's words,
  numbers 42, booleans true, arrays [] and objects {}) and streamed as `input_json_delta` pieces
  split mid-token; stop_reason `tool_use`.
- `stop_sequences` end a text block right before the earliest match (stop_reason `stop_sequence`).
- `max_tokens` bounds the output tokens, which are the deltas except `signature_delta` and the
  empty opening `input_json_delta`. The block it interrupts is still closed, except a `tool_use`
  block, which, as from the real API, gets no content_block_stop.

`message()` folds the events into the Message a non-streaming request gets.
"""

import base64
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from itertools import cycle, islice
from typing import Any

Event = dict[str, Any]

DEFAULT_LENGTH = 24
_FILLER = ("the", "simulator", "streams", "these", "words", "in", "a", "fixed", "order", "for", "tests", "to", "check")
_JSON_PIECE = 7  # characters per input_json_delta: short, so pieces split keys and values as the real API's do


def prompt_of(body: Mapping[str, Any]) -> str:
    """The text of the last user message (text blocks and tool results joined)."""
    for turn in reversed(body["messages"]):
        if turn["role"] == "user":
            return _text(turn["content"])
    return ""


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text(b.get("text", b.get("content"))) for b in content if isinstance(b, dict))
    return ""


def reply(body: Mapping[str, Any], *, prompt: str, length: int | None, serial: int) -> list[Event]:
    """Every event of the streamed reply, from message_start to message_stop."""
    words = prompt.split()
    out = _Output(body["max_tokens"], body.get("stop_sequences") or ())
    if (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"):
        signature = base64.b64encode(f"simulated-signature-{serial}".encode()).decode()
        out.thinking(_tokens(["Considering", *words[:8], "before", "answering."]), signature)
    tool = _chosen_tool(body)
    if tool is None:
        out.text(_tokens(_fill(words, DEFAULT_LENGTH if length is None else length)))
    else:
        if (body.get("tool_choice") or {"type": "auto"}).get("type") == "auto":
            out.text(_tokens(["Let", "me", "use", f"{tool['name']}."]))
        out.tool_use(f"toolu_sim{serial:017d}", tool["name"], _arguments(tool["input_schema"], words))
    start = {
        "type": "message_start",
        "message": {
            "id": f"msg_sim{serial:017d}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens(body),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard",
            },
        },
    }
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": out.stop_reason or "end_turn", "stop_sequence": out.stop_sequence},
        "usage": {"output_tokens": out.used},
    }
    return [start, *out.events, end, {"type": "message_stop"}]


def message(events: Sequence[Event]) -> dict[str, Any]:
    """The Message that `events` (a complete reply) add up to."""
    result: dict[str, Any] = copy.deepcopy(events[0]["message"])
    blocks: dict[int, dict[str, Any]] = {}
    tool_json: dict[int, str] = {}
    for event in events[1:]:
        if event["type"] == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "input_json_delta":
                tool_json[event["index"]] = tool_json.get(event["index"], "") + delta["partial_json"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                field = "text" if delta["type"] == "text_delta" else "thinking"
                block[field] += delta[field]
        elif event["type"] == "message_delta":
            result.update(event["delta"])
            result["usage"].update(event["usage"])
    for index, text in tool_json.items():
        with suppress(ValueError):  # JSON cut short by max_tokens leaves the input {}
            blocks[index]["input"] = json.loads(text)
    result["content"] = [blocks[i] for i in sorted(blocks)]
    return result


class _Output:
    """Content blocks in the making, within the max_tokens budget and the stop sequences."""

    def __init__(self, max_tokens: int, stop_sequences: Sequence[str]) -> None:
        self.events: list[Event] = []
        self.used = 0
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self._max_tokens = max_tokens
        self._stop_sequences = stop_sequences
        self._blocks = 0

    def thinking(self, tokens: list[str], signature: str) -> None:
        index = self._open({"type": "thinking", "thinking": "", "signature": ""})
        self._deltas(index, [{"type": "thinking_delta", "thinking": t} for t in tokens])
        self.events.append(_delta(index, {"type": "signature_delta", "signature": signature}))
        self._close(index)

    def text(self, tokens: list[str]) -> None:
        if not self._may_continue():
            return
        tokens, sequence = _before_stop_sequence(tokens, self._stop_sequences)
        index = self._open({"type": "text", "text": ""})
        complete = self._deltas(index, [{"type": "text_delta", "text": t} for t in tokens])
        self._close(index)
        if complete and sequence is not None:
            self.stop_reason, self.stop_sequence = "stop_sequence", sequence

    def tool_use(self, tool_id: str, name: str, arguments: str) -> None:
        if not self._may_continue():
            return
        index = self._open({"type": "tool_use", "id": tool_id, "name": name, "input": {}})
        self.events.append(_delta(index, {"type": "input_json_delta", "partial_json": ""}))
        pieces = [arguments[i : i + _JSON_PIECE] for i in range(0, len(arguments), _JSON_PIECE)]
        if self._deltas(index, [{"type": "input_json_delta", "partial_json": p} for p in pieces]):
            self._close(index)
            self.stop_reason = "tool_use"

    def _may_continue(self) -> bool:
        if self.stop_reason is None and self.used >= self._max_tokens:
            self.stop_reason = "max_tokens"
        return self.stop_reason is None

    def _open(self, block: dict[str, Any]) -> int:
        index, self._blocks = self._blocks, self._blocks + 1
        self.events.append({"type": "content_block_start", "index": index, "content_block": block})
        if index == 0:
            self.events.append({"type": "ping"})  # where the real API sends its first ping
        return index

    def _deltas(self, index: int, deltas: list[dict[str, Any]]) -> bool:
        """Emit `deltas` while the budget lasts; False if max_tokens cut them short."""
        for delta in deltas:
            if self.used >= self._max_tokens:
                self.stop_reason = "max_tokens"
                return False
            self.events.append(_delta(index, delta))
            self.used += 1
        return True

    def _close(self, index: int) -> None:
        self.events.append({"type": "content_block_stop", "index": index})


def _delta(index: int, delta: dict[str, Any]) -> Event:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _tokens(words: Sequence[str]) -> list[str]:
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]


def _fill(words: list[str], length: int) -> list[str]:
    echo = words[:length]
    return [*echo, *islice(cycle(_FILLER), length - len(echo))]


def _before_stop_sequence(tokens: list[str], stop_sequences: Sequence[str]) -> tuple[list[str], str | None]:
    """The tokens up to the earliest stop sequence (a token may end part way), and that sequence."""
    text = "".join(tokens)
    hits = [(text.find(s), s) for s in stop_sequences if s and s in text]
    if not hits:
        return tokens, None
    cut, sequence = min(hits, key=lambda hit: hit[0])
    kept: list[str] = []
    for token in tokens:
        room = cut - sum(map(len, kept))
        if len(token) >= room:
            kept.extend([token[:room]] if room > 0 else [])
            break
        kept.append(token)
    return kept, sequence


def _chosen_tool(body: Mapping[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice.get("type") == "none":
        return None
    custom = [t for t in body.get("tools") or () if isinstance(t, dict) and "input_schema" in t and "name" in t]
    named = [t for t in custom if t["name"] == choice.get("name")]
    return (named or custom)[0] if custom else None


def _arguments(schema: object, words: list[str]) -> str:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    strings = cycle(words or _FILLER)
    if not isinstance(properties, dict):
        return "{}"
    return json.dumps({name: _value(spec, strings) for name, spec in properties.items()})


def _value(spec: object, strings: Iterator[str]) -> object:
    if not isinstance(spec, dict):
        return next(strings)
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return spec["enum"][0]
    kind = spec.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    defaults: dict[object, object] = {"integer": 42, "number": 42, "boolean": True, "array": [], "object": {}}
    return defaults[kind] if isinstance(kind, str) and kind in defaults else next(strings)


def input_tokens(body: Mapping[str, Any]) -> int:
    texts = [_text(body.get("system")), *(_text(turn["content"]) for turn in body["messages"])]
    return max(1, sum(len(text.split()) for text in texts))
