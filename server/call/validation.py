"""Request checks made before any upstream call: what the API would reject for its shape.

``violations(params)`` lists every bad field with its path, so the caller gets one
INVALID_ARGUMENT with a BadRequest detail naming them all, and the upstream is never called.
Checks stay to shape; the API remains the judge of meaning (model names, token limits...). What
cannot be sent at all is refused too: raw JSON that is not strict JSON, nests past MAX_JSON_DEPTH
or holds lone surrogates; numbers that are not finite; betas that are not header-safe.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from claude_gateway import codec
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import struct_pb2

from server.errors import Violation
from server.redaction import MODEL_ID_RULE, model_id, shown

ROLES = ("user", "assistant")
_POLICY_KEYS = (("model", str), ("max_tokens", int))  # body keys the caller's policy judges
EXTRA = "extra"  # the Struct of keys a message does not model, merged into its JSON
MAX_JSON_DEPTH = 64  # nesting levels of JSON in one raw_json field
_JSON_TYPES = frozenset(("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"))
_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # an anthropic-version value
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}")  # RFC 9110 token, minus the comma that joins betas


def violations(params: pb.MessageCreateParams, path: str = "params") -> list[Violation]:
    """Every shape error in ``params``; empty when the request may go upstream."""
    return list(_params(params, path))


def _params(p: pb.MessageCreateParams, path: str) -> Iterator[Violation]:
    if not p.model:
        yield Violation(f"{path}.model", "required: the model name, e.g. claude-sonnet-4-6")
    elif model_id(p.model) is None:
        yield Violation(f"{path}.model", f"must be a model name, {MODEL_ID_RULE}; got {shown(p.model)!r}")
    if p.max_tokens < 1:
        yield Violation(f"{path}.max_tokens", f"must be at least 1, got {p.max_tokens}")
    if not p.messages:
        yield Violation(f"{path}.messages", "required: at least one message")
    if p.system and p.HasField("system_text"):
        yield Violation(f"{path}.system_text", "set system or system_text, not both")
    for i, m in enumerate(p.messages):
        where = f"{path}.messages[{i}]"
        if m.role not in ROLES:
            yield Violation(f"{where}.role", f"must be 'user' or 'assistant', got {shown(m.role)!r}")
        if m.content and m.HasField("content_text"):
            yield Violation(f"{where}.content_text", "set content or content_text, not both")
        elif not m.content and not m.HasField("content_text"):
            yield Violation(f"{where}.content", "required: content blocks or content_text")
        for j, block in enumerate(m.content):
            if m.role == "assistant" and block.WhichOneof("type") == "document":
                yield Violation(f"{where}.content[{j}]", "document blocks are only allowed in user messages")
    for i, tool in enumerate(p.tools):
        if tool.WhichOneof("type") == "custom" and not tool.custom.name:
            yield Violation(f"{path}.tools[{i}].custom.name", "required: the tool's name")
    yield from _unions(p, path)


def _unions(msg: Any, path: str) -> Iterator[Violation]:
    """Under ``msg``, anywhere: every oneof `type` message has an arm set, every raw_json arm is a
    JSON object with a string "type" that the API can take (see ``_raw_json``), and no ``extra`` names
    a field the proto models (see ``_extra``)."""
    arm_of_union = False
    if msg.DESCRIPTOR.oneofs_by_name.get("type") is not None:
        arm = msg.WhichOneof("type")
        if arm is None:
            yield Violation(path, f"no {msg.DESCRIPTOR.name} type set: set exactly one of its fields")
            return
        if arm == "raw_json":
            yield from _raw_json(msg.raw_json.json, f"{path}.raw_json.json")
            return
        msg, path, arm_of_union = getattr(msg, arm), f"{path}.{arm}", True
    for fd, value in msg.ListFields():
        kind = fd.message_type
        if fd.name == EXTRA and kind is not None and kind.full_name == "google.protobuf.Struct":
            yield from _extra(msg, value, path, arm_of_union)
            continue
        if kind is None or kind.full_name in _JSON_TYPES:
            continue
        if fd.is_repeated:
            for k, item in enumerate(value):
                yield from _unions(item, f"{path}.{fd.name}[{k}]")
        else:
            yield from _unions(value, f"{path}.{fd.name}")


@dataclass(frozen=True)
class _Modeled:
    """The JSON keys one message type models: each with its fields, and those always written."""

    fields: dict[str, tuple[str, ...]]  # JSON key -> the fields that write it (`K` and `K_text`)
    always: frozenset[str]  # keys the message always writes: scalars without presence, "type" of an arm


_modeled: dict[tuple[str, bool], _Modeled] = {}


def _modeled_keys(descriptor: Any, arm_of_union: bool) -> _Modeled:
    key = (descriptor.full_name, arm_of_union)
    known = _modeled.get(key)
    if known is None:
        by_key: dict[str, list[str]] = {}
        always: set[str] = {"type"} if arm_of_union else set()
        for fd in descriptor.fields:
            if fd.name == EXTRA:
                continue
            json_key = fd.name
            if fd.name.endswith("_text") and fd.name[:-5] in descriptor.fields_by_name:
                json_key = fd.name[:-5]
            by_key.setdefault(json_key, []).append(fd.name)
            if fd.message_type is None and not fd.is_repeated and not fd.has_presence:
                always.add(json_key)
        known = _modeled[key] = _Modeled({k: tuple(v) for k, v in by_key.items()}, frozenset(always))
    return known


def _extra(msg: Any, extra: struct_pb2.Struct, path: str, arm_of_union: bool) -> Iterator[Violation]:
    """``extra`` goes upstream merged over the message's own fields, so it may not name one of them: the
    body that goes upstream is the one the checks and the policy saw. The one exception is what the codec
    itself puts there, a JSON null or an empty list for a field left unset (the proto cannot hold them)."""
    modeled = _modeled_keys(msg.DESCRIPTOR, arm_of_union)
    for key, value in extra.fields.items():
        names = modeled.fields.get(key)
        if names is None and key not in modeled.always:
            continue
        kind = value.WhichOneof("kind")
        empty = kind == "null_value" or (kind == "list_value" and not value.list_value.values)
        unset = key not in modeled.always and not any(_is_set(msg, name) for name in names or ())
        if empty and unset:
            continue
        field = f"{path}.{names[0]}" if names else f"another arm of {path.rpartition('.')[0]}"
        yield Violation(
            f"{path}.extra.{shown(key)}",
            f"names {shown(key)!r}, a field the proto models: set {field} instead (extra holds only keys the "
            "proto does not name, and nulls or empty lists of fields left unset)",
        )


def _is_set(msg: Any, name: str) -> bool:
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if fd.is_repeated:
        return len(getattr(msg, name)) > 0
    return bool(msg.HasField(name)) if fd.has_presence else True


def _raw_json(text: str, where: str) -> Iterator[Violation]:
    if not text:
        yield Violation(where, 'empty: must be a JSON object with a string "type"')
        return
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        yield Violation(where, f"nested deeper than {MAX_JSON_DEPTH} levels")
        return
    except ValueError as exc:
        yield Violation(where, f"not valid JSON: {exc}")
        return
    problem = json_problem(obj)
    if problem:
        yield Violation(where, problem)
    elif not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        yield Violation(where, 'must be a JSON object with a string "type"')


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_problem(value: Any) -> str | None:
    """Why ``value`` (parsed JSON) cannot go upstream: nesting past MAX_JSON_DEPTH, a number that is
    not finite (1e999 parses as infinity), or a string with a lone surrogate (not encodable as UTF-8)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            if kind is dict:
                for key, sub in item.items():
                    if not _encodable(key):
                        return "holds a key that is not valid Unicode (a lone surrogate)"
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)
        elif kind is float:
            if not math.isfinite(item):
                return f"holds a number that is not finite ({item})"
        elif kind is str and not _encodable(item):
            return "holds a string that is not valid Unicode (a lone surrogate)"
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def body_of(params: pb.MessageCreateParams, path: str = "params") -> tuple[dict[str, Any], list[Violation]]:
    """The JSON body for ``params`` (checked by ``violations`` first), or the fields that cannot be
    JSON: numbers in Struct or Value fields that are not finite."""
    try:
        body = codec.to_json(params)
    except (ValueError, RecursionError):
        pass
    else:
        # What the policy reads (``server.admission``) is what goes upstream; ``_extra`` keeps these two
        # the fields' own, and this holds it whatever a future change to the codec does.
        wrong = [key for key, kind in _POLICY_KEYS if type(body.get(key)) is not kind]
        return body, [Violation(f"{path}.{key}", "must be set by its own field") for key in wrong]
    bad = list(_non_finite(params, path))
    return {}, bad or [Violation(path, "cannot be encoded as JSON")]


def _non_finite(msg: Any, path: str) -> Iterator[Violation]:
    """Every Struct / Value / ListValue field under ``msg`` holding NaN or an infinity."""
    for fd, value in msg.ListFields():
        kind = fd.message_type
        if kind is None:
            continue
        items = list(enumerate(value)) if fd.is_repeated else [(None, value)]
        for k, item in items:
            where = f"{path}.{fd.name}" + ("" if k is None else f"[{k}]")
            if kind.full_name in _JSON_TYPES:
                problem = _struct_problem(item)
                if problem:
                    yield Violation(where, problem)
            else:
                yield from _non_finite(item, where)


def _struct_problem(message: Any) -> str | None:
    stack = [message]
    while stack:
        item = stack.pop()
        if isinstance(item, struct_pb2.Struct):
            stack.extend(item.fields.values())
        elif isinstance(item, struct_pb2.ListValue):
            stack.extend(item.values)
        elif isinstance(item, struct_pb2.Value):
            arm = item.WhichOneof("kind")
            if arm == "number_value" and not math.isfinite(item.number_value):
                return f"holds a number that is not finite ({item.number_value})"
            if arm in ("struct_value", "list_value"):
                stack.append(getattr(item, arm))
    return None


def version_violations(request: Any, path: str = "anthropic_version") -> Iterator[Violation]:
    """An `anthropic_version`, when set, must be a date as the API's versions are (YYYY-MM-DD)."""
    if request.HasField("anthropic_version") and not _VERSION.fullmatch(request.anthropic_version):
        yield Violation(
            path, f"must be an API version date such as 2023-06-01, got {shown(request.anthropic_version)!r}"
        )


def beta_violations(betas: Sequence[str], path: str = "betas") -> Iterator[Violation]:
    """Each beta must be an HTTP token (it goes into the `anthropic-beta` header, comma-joined)."""
    for i, beta in enumerate(betas):
        if not _TOKEN.fullmatch(beta):
            yield Violation(f"{path}[{i}]", "must be a beta name: letters, digits and -._ only (an HTTP token)")
