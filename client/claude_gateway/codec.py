"""Messages API JSON <-> claude_gateway.v1 protobuf messages.

The mapping is mechanical, driven by the message descriptors and the rules written at the top of
``chat.proto``:

- field names are JSON keys; a oneof named ``type`` is chosen by the object's ``"type"`` value;
- an object of a type the proto does not model goes whole into the ``raw_json`` arm;
- a JSON null, an empty list, a value of an unexpected JSON type and an unknown key go into the
  object's ``extra`` Struct;
- key ``K`` holding a string where the proto has a list goes into ``K_text``.

So ``to_json(from_json(obj)) == obj`` for every object (key order and number formatting aside),
which is what lets the gateway relay events losslessly and forward requests unchanged.
Both functions are pure; per-descriptor plans are built once and cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

JSON = dict[str, Any]
M = TypeVar("M", bound=Message)

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_UNION = "type"
_RAW = "raw_json"
_EXTRA = "extra"
_INT32 = range(-(2**31), 2**31)

# How a field holds its JSON value.
_SCALAR, _MESSAGE, _STRUCT_FIELD, _VALUE_FIELD, _SCALARS, _MESSAGES = range(6)


@dataclass(slots=True)
class _Field:
    name: str
    json_key: str
    kind: int
    cpp_type: int
    plan: _Plan | None = None


@dataclass(slots=True)
class _Plan:
    """What the codec needs to know of one message type."""

    fields: dict[str, _Field] = field(default_factory=dict)  # by JSON key
    by_name: dict[str, _Field] = field(default_factory=dict)  # by proto field name
    always: tuple[str, ...] = ()  # scalars without presence: always in the JSON
    text_forms: dict[str, str] = field(default_factory=dict)  # JSON key -> its `K_text` field
    arms: dict[str, str] | None = None  # union: "type" value -> arm field name
    typed_arm: str | None = None  # union arm that keeps "type" itself (taken when "type" is absent)
    keeps_type: bool = False  # this message has its own `type` field
    has_extra: bool = False


_plans: dict[str, _Plan] = {}


def _plan(descriptor: Any) -> _Plan:
    plan = _plans.get(descriptor.full_name)
    if plan is not None:
        return plan
    plan = _Plan()
    _plans[descriptor.full_name] = plan  # before recursing: messages refer to each other
    union = descriptor.oneofs_by_name.get(_UNION)
    if union is not None:
        plan.arms = {f.name: f.name for f in union.fields if f.name != _RAW}
    always: list[str] = []
    for fd in descriptor.fields:
        if fd.name == _EXTRA:
            plan.has_extra = True
            continue
        repeated = fd.is_repeated
        sub = fd.message_type
        if sub is None:
            kind = _SCALARS if repeated else _SCALAR
            if not repeated and not fd.has_presence:
                always.append(fd.name)
        elif sub.full_name == _STRUCT:
            kind = _STRUCT_FIELD
        elif sub.full_name == _VALUE:
            kind = _VALUE_FIELD
        else:
            kind = _MESSAGES if repeated else _MESSAGE
        json_key = fd.name
        if fd.name.endswith("_text") and fd.name[:-5] in descriptor.fields_by_name:
            json_key = fd.name[:-5]
            plan.text_forms[json_key] = fd.name
        f = _Field(fd.name, json_key, kind, fd.cpp_type)
        if sub is not None and kind in (_MESSAGE, _MESSAGES):
            f.plan = _plan(sub)
            if plan.arms is not None and f.plan.keeps_type and fd.name != _RAW:
                plan.typed_arm = fd.name
        plan.by_name[fd.name] = f
        if json_key not in plan.text_forms or fd.name == json_key:
            plan.fields.setdefault(json_key, f)
        if fd.name == "type":
            plan.keeps_type = True
    plan.always = tuple(always)
    return plan


# ---------------------------------------------------------------------------------------------
# JSON -> proto


def from_json(obj: JSON, message: M, raw_text: str | None = None) -> M:
    """Fill ``message`` from the JSON object ``obj`` and return it.

    ``raw_text`` is ``obj`` as received, used verbatim if ``obj`` lands in a ``raw_json`` arm.
    """
    _fill(message, obj, _plan(message.DESCRIPTOR), raw_text)
    return message


def _fill(msg: Any, obj: JSON, plan: _Plan, raw_text: str | None = None) -> None:
    if plan.arms is not None:
        kind = obj.get("type")
        arm = plan.arms.get(kind) if isinstance(kind, str) else plan.typed_arm if kind is None else None
        if arm is None:
            raw = msg.raw_json
            raw.type = kind if isinstance(kind, str) else ""
            raw.json = raw_text if raw_text is not None else json.dumps(obj, ensure_ascii=False)
            return
        sub = getattr(msg, arm)
        sub.SetInParent()
        arm_plan = plan.by_name[arm].plan
        assert arm_plan is not None
        _fill_fields(sub, obj, arm_plan, skip_type=not arm_plan.keeps_type)
        return
    _fill_fields(msg, obj, plan, skip_type=False)


def _fill_fields(msg: Any, obj: JSON, plan: _Plan, *, skip_type: bool) -> None:
    extra: JSON | None = None
    fields = plan.fields
    for key, value in obj.items():
        f = fields.get(key)
        if f is None:
            if skip_type and key == "type":
                continue
        elif _put(msg, f, value, plan):
            continue
        if extra is None:
            extra = {}
        extra[key] = value
    if extra is not None:
        if not plan.has_extra:
            raise ValueError(f"{msg.DESCRIPTOR.full_name} cannot hold keys {sorted(extra)}")
        msg.extra.update(extra)


def _put(msg: Any, f: _Field, value: Any, plan: _Plan) -> bool:
    """Store ``value`` in field ``f``; False if the field cannot carry it exactly."""
    kind = f.kind
    if kind == _SCALAR:
        if not _scalar_fits(f.cpp_type, value):
            return False
        setattr(msg, f.name, value)
        return True
    if kind == _MESSAGE:
        if type(value) is not dict:
            text_field = plan.text_forms.get(f.json_key)
            if text_field is not None and type(value) is str:
                setattr(msg, text_field, value)
                return True
            return False
        sub = getattr(msg, f.name)
        sub.SetInParent()
        assert f.plan is not None
        _fill(sub, value, f.plan)
        return True
    if kind == _MESSAGES:
        if type(value) is not list or not value:
            text_field = plan.text_forms.get(f.json_key)
            if text_field is not None and type(value) is str:
                setattr(msg, text_field, value)
                return True
            return False
        if not all(type(item) is dict for item in value):
            return False
        container = getattr(msg, f.name)
        assert f.plan is not None
        for item in value:
            _fill(container.add(), item, f.plan)
        return True
    if kind == _STRUCT_FIELD:
        if type(value) is not dict:
            return False
        sub = getattr(msg, f.name)
        sub.SetInParent()
        sub.update(value)
        return True
    if kind == _VALUE_FIELD:
        json_format.ParseDict(value, getattr(msg, f.name))
        return True
    # _SCALARS
    if type(value) is not list or not value or not all(_scalar_fits(f.cpp_type, v) for v in value):
        return False
    getattr(msg, f.name).extend(value)
    return True


def _scalar_fits(cpp_type: int, value: Any) -> bool:
    t = type(value)
    if cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return t is str
    if cpp_type == FieldDescriptor.CPPTYPE_INT32:
        return t is int and value in _INT32
    if cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return t is bool
    if cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return t is float or t is int
    return False


# ---------------------------------------------------------------------------------------------
# proto -> JSON


def to_json(message: Message) -> JSON:
    """The JSON object that ``message`` stands for."""
    return _dump(message, _plan(message.DESCRIPTOR))


def _dump(msg: Any, plan: _Plan) -> JSON:
    if plan.arms is not None:
        arm = msg.WhichOneof(_UNION)
        if arm is None:
            return {}
        if arm == _RAW:
            loaded: JSON = json.loads(msg.raw_json.json)
            return loaded
        arm_plan = plan.by_name[arm].plan
        assert arm_plan is not None
        out: JSON = {} if arm_plan.keeps_type else {"type": arm}
        _dump_fields(getattr(msg, arm), arm_plan, out)
        return out
    out = {}
    _dump_fields(msg, plan, out)
    return out


def _dump_fields(msg: Any, plan: _Plan, out: JSON) -> None:
    for name in plan.always:
        out[name] = getattr(msg, name)
    by_name = plan.by_name
    for fd, value in msg.ListFields():
        name = fd.name
        if name == _EXTRA:
            out.update(plain(value))
            continue
        f = by_name[name]
        kind = f.kind
        if kind == _SCALAR:
            out[f.json_key] = value
        elif kind == _MESSAGE:
            assert f.plan is not None
            out[name] = _dump(value, f.plan)
        elif kind == _MESSAGES:
            assert f.plan is not None
            sub_plan = f.plan
            out[name] = [_dump(item, sub_plan) for item in value]
        elif kind == _SCALARS:
            out[name] = list(value)
        else:  # Struct or Value
            out[name] = plain(value)


def plain(message: struct_pb2.Struct | struct_pb2.Value | struct_pb2.ListValue) -> Any:
    """A Struct, Value or ListValue as plain JSON, with integral numbers as ints."""
    return _integral(json_format.MessageToDict(message))


def _integral(value: Any) -> Any:
    # Struct stores every number as a double; JSON integers must go back upstream as integers.
    if type(value) is float:
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if type(value) is dict:
        return {k: _integral(v) for k, v in value.items()}
    if type(value) is list:
        return [_integral(v) for v in value]
    return value
