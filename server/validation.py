"""Request checks made before any upstream call: what the API would reject for its shape.

``violations(params)`` lists every bad field with its path, so the caller gets one
INVALID_ARGUMENT with a BadRequest detail naming them all, and the upstream is never called.
Checks stay to shape; the API remains the judge of meaning (model names, token limits...).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from claude_gateway.v1 import chat_pb2 as pb

from server.errors import Violation

ROLES = ("user", "assistant")


def violations(params: pb.MessageCreateParams, path: str = "params") -> list[Violation]:
    """Every shape error in ``params``; empty when the request may go upstream."""
    return list(_params(params, path))


def _params(p: pb.MessageCreateParams, path: str) -> Iterator[Violation]:
    if not p.model:
        yield Violation(f"{path}.model", "required: the model name, e.g. claude-sonnet-4-6")
    if p.max_tokens < 1:
        yield Violation(f"{path}.max_tokens", f"must be at least 1, got {p.max_tokens}")
    if not p.messages:
        yield Violation(f"{path}.messages", "required: at least one message")
    if p.system and p.HasField("system_text"):
        yield Violation(f"{path}.system_text", "set system or system_text, not both")
    for i, m in enumerate(p.messages):
        where = f"{path}.messages[{i}]"
        if m.role not in ROLES:
            yield Violation(f"{where}.role", f"must be 'user' or 'assistant', got {m.role!r}")
        if m.content and m.HasField("content_text"):
            yield Violation(f"{where}.content_text", "set content or content_text, not both")
        elif not m.content and not m.HasField("content_text"):
            yield Violation(f"{where}.content", "required: content blocks or content_text")
        for j, block in enumerate(m.content):
            yield from _union(block, f"{where}.content[{j}]")
            if m.role == "assistant" and block.WhichOneof("type") == "document":
                yield Violation(f"{where}.content[{j}]", "document blocks are only allowed in user messages")
    for i, tool in enumerate(p.tools):
        yield from _union(tool, f"{path}.tools[{i}]")
        if tool.WhichOneof("type") == "custom" and not tool.custom.name:
            yield Violation(f"{path}.tools[{i}].custom.name", "required: the tool's name")
    for name in ("tool_choice", "thinking"):
        if p.HasField(name):
            yield from _union(getattr(p, name), f"{path}.{name}")


def _union(msg: Any, path: str) -> Iterator[Violation]:
    """A oneof `type` message must have an arm set, and a raw_json arm must be a typed object."""
    arm = msg.WhichOneof("type")
    if arm is None:
        yield Violation(path, f"no {msg.DESCRIPTOR.name} type set: set exactly one of its fields")
        return
    if arm == "raw_json":
        raw = msg.raw_json
        where = f"{path}.raw_json.json"
        if not raw.json:
            yield Violation(where, 'empty: must be a JSON object with a string "type"')
            return
        try:
            obj = json.loads(raw.json)
        except ValueError as exc:
            yield Violation(where, f"not valid JSON: {exc}")
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            yield Violation(where, 'must be a JSON object with a string "type"')
        return
    # Nested unions (tool_result content, document sources...) are checked the same way.
    for fd, value in getattr(msg, arm).ListFields():
        if fd.message_type is None or fd.message_type.oneofs_by_name.get("type") is None:
            continue
        items = value if fd.is_repeated else [value]
        for k, item in enumerate(items):
            yield from _union(item, f"{path}.{arm}.{fd.name}" + (f"[{k}]" if fd.is_repeated else ""))
