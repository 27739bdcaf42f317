"""Upstream server-sent events -> ``MessageStreamEvent`` protos.

``SseFramer`` cuts the upstream byte stream into complete events, keeping the events of one
network read together so that the gateway sends what is already waiting in one gRPC message;
``EventStreamFramer`` does the same for Amazon Bedrock's AWS event-stream body.
Frames in the API's own form (``event: X\\ndata: JSON\\n\\n``) are taken apart directly; anything
else (CR line ends, comments, multi-line data) goes through the SDK's own SSE line decoder.

``parse`` turns a frame into its JSON object (an `error` event or a malformed frame raises
``GatewayError``); ``fill_event`` is the pure mapping of one event to its proto, lossless by
``claude_gateway.codec``, with a fast path for the four hot delta types and for the small events
every reply has (ping, a text block's start, a block's stop, message_stop), and direct fills of
message_start and message_delta in their usual shapes, each building exactly what the codec would;
``to_response`` puts the events of one read into one gRPC message.
"""

from __future__ import annotations

import json
from typing import Any

from claude_gateway import codec
from claude_gateway.sdk import SSEDecoder
from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor

from server.errors import Failure, GatewayError, Reason, fail
from server.upstream.eventstream import (
    MAX_MESSAGE_BYTES,
    BedrockDecoder,
    BedrockMessageError,
    BedrockStreamError,
    EventStreamError,
    EventTooLargeError,
)
from server.upstream.failures import bedrock_error_type, from_api_error

Frame = tuple[str, str]  # (event name, data)
Event = tuple[str, dict[str, Any], str]  # (event name, its JSON object, its data text)

_EVENT = b"event: "
_DATA = b"data: "


class SseFramer:
    """Feeds raw bytes, returns the (event, data) frames they complete, in order.

    Linear in the bytes fed: an unfinished frame is held as the chunks it came in and joined once,
    when a chunk completes it. More than ``max_event_bytes`` held for one frame (or one line, or
    one event built of many lines) raises GatewayError (UPSTREAM_EVENT_TOO_LARGE).
    """

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._decoder = SSEDecoder()
        self._parts: list[bytes] = []  # the unfinished frame (fast path) or line (by lines)
        self._held = 0  # bytes in _parts
        self._max = max_event_bytes
        self._event_bytes = 0  # by lines: bytes of the event the SDK's decoder is building
        self._crlf = False  # once a CR is seen, every line goes through the SDK's decoder

    def feed(self, chunk: bytes) -> list[Frame]:
        parts = self._parts
        if self._crlf or b"\r" in chunk:
            self._crlf = True
            return self._feed_lines(chunk)
        if parts:
            if b"\n\n" not in chunk and not (chunk[:1] == b"\n" and parts[-1][-1:] == b"\n"):
                return self._hold(chunk)
            parts.append(chunk)
            data = b"".join(parts)
            parts.clear()
            self._held = 0
        else:
            data = chunk
        frames = data.split(b"\n\n")
        rest = frames.pop()
        out = []
        large = len(data) > self._max  # else no frame of it can be
        for frame in frames:
            if large and len(frame) > self._max:
                raise GatewayError(_too_large(len(frame), self._max))
            # "event: NAME\ndata: JSON", read in place
            if frame.startswith(_EVENT):
                line = frame.find(b"\n")
                if line > 0 and frame.startswith(_DATA, line + 1) and frame.find(b"\n", line + 1) < 0:
                    out.append((frame[7:line].decode(), frame[line + 7 :].decode()))
                    continue
            if frame:
                out.extend(self._by_lines(frame + b"\n\n"))
        if rest:
            self._hold(rest)
        return out

    def _hold(self, data: bytes) -> list[Frame]:
        """Keep ``data`` for the next chunk, within the bound."""
        self._held += len(data)
        if self._held > self._max:
            raise GatewayError(_too_large(self._held, self._max))
        self._parts.append(data)
        return []

    def _feed_lines(self, chunk: bytes) -> list[Frame]:
        parts = self._parts
        if parts:
            # A held line ending in a lone CR is complete unless the chunk starts with its LF.
            if parts[-1][-1:] != b"\r" and b"\n" not in chunk and b"\r" not in chunk:
                return self._hold(chunk)
            parts.append(chunk)
            data = b"".join(parts)
            parts.clear()
            self._held = 0
        else:
            data = chunk
        lines = data.splitlines(keepends=True)
        # A last line without its terminator is incomplete; so is a lone "\r" that may be half of "\r\n".
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._hold(lines.pop())
        return self._by_lines(lines)

    def _by_lines(self, data: bytes | list[bytes]) -> list[Frame]:
        """The frames that complete lines finish (``data`` is whole lines, or bytes ending in one)."""
        lines = data.splitlines(keepends=True) if isinstance(data, bytes) else data
        out: list[Frame] = []
        decode = self._decoder.decode
        for line in lines:
            text = line.rstrip(b"\r\n")
            if text:
                self._event_bytes += len(line)
                if self._event_bytes > self._max:
                    raise GatewayError(_too_large(self._event_bytes, self._max))
            else:
                self._event_bytes = 0  # a blank line ends the event
            sse = decode(text.decode())
            # The SDK ignores frames without an `event:` line; so do we.
            if sse is not None and sse.event is not None:
                out.append((sse.event, sse.data))
        return out


class EventStreamFramer:
    """Amazon Bedrock's body (AWS event-stream messages, each a chunk carrying one Messages event's JSON in
    base64, or an exception) fed as raw bytes; returns the (event, data) frames they complete, in order,
    as ``SseFramer`` does (``server.upstream.eventstream.BedrockDecoder`` reads them). Bytes that are not a
    sound event stream are UPSTREAM_MALFORMED_EVENT; an exception message becomes the `error` event the
    Messages API would have sent, of the same class (``server.upstream.failures.bedrock_error_type``). An
    event over ``max_event_bytes`` is UPSTREAM_EVENT_TOO_LARGE."""

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        # A message holds its event in base64 (4/3 of it) inside a small JSON payload and headers.
        max_message_bytes = min(MAX_MESSAGE_BYTES, max_event_bytes * 4 // 3 + 64 * 1024)
        self._decoder = BedrockDecoder(max_message_bytes, max_event_bytes, _error_frame)
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[Frame]:
        try:
            return self._decoder.feed(chunk)
        except BedrockMessageError as exc:
            raise GatewayError(
                fail(Reason.UPSTREAM_MALFORMED_EVENT, f"upstream sent a bad Bedrock message: {exc}")
            ) from None
        except EventStreamError as exc:
            raise GatewayError(
                fail(Reason.UPSTREAM_MALFORMED_EVENT, f"upstream sent a broken event stream: {exc}")
            ) from None
        except EventTooLargeError as exc:
            raise GatewayError(_too_large(exc.size, self._max)) from None


def _error_frame(exc: BedrockStreamError) -> Frame:
    """The `error` event the Messages API would have sent for a Bedrock exception message."""
    error = {"type": bedrock_error_type(exc.error_type, exc.original_status), "message": str(exc)}
    return ("error", json.dumps({"type": "error", "error": error}))


def _too_large(size: int, limit: int) -> Failure:
    return fail(
        Reason.UPSTREAM_EVENT_TOO_LARGE,
        f"upstream sent an event over GATEWAY_MAX_EVENT_BYTES ({limit} bytes; {size} bytes held so far)",
    )


# The hot deltas: one string field besides "type". delta type -> that field.
_HOT_DELTAS = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
}
_INT32 = range(-(2**31), 2**31)


# Nesting levels of one upstream event's JSON (the event object is the first). Each level of an object
# becomes three levels of protobuf (Struct, its map entry, Value), and protobuf's decoders stop at 100:
# an event nested deeper would reach callers as a message they cannot decode.
MAX_EVENT_DEPTH = 32


def parse(name: str, data: str) -> dict[str, Any]:
    """One upstream frame's JSON object; raises GatewayError for `error` events and malformed frames
    (not JSON, not an object, nested deeper than MAX_EVENT_DEPTH or than the parser can go)."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if type(obj) is not dict:
        raise GatewayError(fail(Reason.UPSTREAM_MALFORMED_EVENT, f"upstream sent a malformed {name[:64]!r} event"))
    if data.count("{") + data.count("[") > MAX_EVENT_DEPTH and too_deep(obj, MAX_EVENT_DEPTH):
        raise GatewayError(
            fail(
                Reason.UPSTREAM_MALFORMED_EVENT,
                f"upstream sent a {name[:64]!r} event nested deeper than {MAX_EVENT_DEPTH} levels",
            )
        )
    if name == "error":
        raise GatewayError(_error_event(obj))
    return obj


def too_deep(value: Any, limit: int) -> bool:
    """Whether parsed JSON ``value`` nests objects and arrays more than ``limit`` levels deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            children: Any = item.values()
        elif type(item) is list:
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) is dict or type(child) is list)
    return False


def fill_event(event: pb.MessageStreamEvent, obj: dict[str, Any], data: str) -> None:
    """Fill ``event`` from one parsed upstream frame (``data`` is its text, kept whole by raw_json arms)."""
    kind = obj.get("type")
    if kind == "content_block_delta":
        if len(obj) == 3:
            delta, index = obj.get("delta"), obj.get("index")
            if type(delta) is dict and len(delta) == 2 and type(index) is int and index in _INT32:
                delta_type = delta.get("type")
                field = _HOT_DELTAS.get(delta_type) if type(delta_type) is str else None
                if field is not None and type(value := delta.get(field)) is str:
                    assert isinstance(delta_type, str)
                    target = event.content_block_delta
                    target.index = index
                    setattr(getattr(target.delta, delta_type), field, value)
                    return
    elif len(obj) == 1 and (kind == "ping" or kind == "message_stop"):
        getattr(event, kind).SetInParent()
        return
    elif kind == "content_block_stop":
        if len(obj) == 2 and type(index := obj.get("index")) is int and index in _INT32:
            stop = event.content_block_stop
            stop.SetInParent()
            stop.index = index
            return
    elif kind == "content_block_start" and len(obj) == 3:
        block, index = obj.get("content_block"), obj.get("index")
        if (
            type(block) is dict
            and len(block) == 2
            and block.get("type") == "text"
            and type(text := block.get("text")) is str
            and type(index) is int
            and index in _INT32
        ):
            start = event.content_block_start
            start.index = index
            target_block = start.content_block.text
            target_block.SetInParent()
            target_block.text = text
            return
    else:
        direct = _DIRECT.get(kind) if type(kind) is str else None
        if direct is not None:
            arm, table = direct
            target = getattr(event, arm)
            target.SetInParent()
            if _fill_flat(target, obj, table):
                return
            event.Clear()  # a shape the tables do not cover: the codec builds it all, from the start
    codec.from_json(obj, event, data)


# Direct fills of the events every reply has once (message_start, message_delta), built from the proto's
# descriptors as the codec's plans are, for objects whose fields are strings, int32s, objects of that kind,
# Structs and nulls. How a JSON key of one message is kept (``_fill_flat``): a table's value is its kind or,
# for a message field, the table of that message; a key the message does not name goes to ``extra``.
_STR, _INT, _STRUCT, _LIST, _OTHER, _SKIP = range(6)
_STRUCT_NAME = "google.protobuf.Struct"


def _table(descriptor: Any) -> dict[str, Any] | None:
    """The direct fill of one message type, or None if the codec must fill it (a union, a `K_text` form, no
    ``extra``)."""
    names = descriptor.fields_by_name
    if "extra" not in names or "type" in descriptor.oneofs_by_name:
        return None
    table: dict[str, Any] = {}
    for fd in descriptor.fields:
        name = fd.name
        if name == "extra":
            continue
        if name.endswith("_text") and name[:-5] in names:
            return None
        sub = fd.message_type
        if fd.is_repeated:
            kind: Any = _LIST
        elif sub is None:
            kind = {FieldDescriptor.CPPTYPE_STRING: _STR, FieldDescriptor.CPPTYPE_INT32: _INT}.get(fd.cpp_type, _OTHER)
        elif sub.full_name == _STRUCT_NAME:
            kind = _STRUCT
        else:
            kind = _table(sub)
            if kind is None:
                kind = _OTHER
        table[name] = kind
    return table


def _event_table(message: Any) -> dict[str, Any]:
    table = _table(message.DESCRIPTOR)
    assert table is not None
    return {**table, "type": _SKIP}  # the event's "type" chose the arm


# event type -> (its arm of MessageStreamEvent, the arm's table)
_DIRECT = {
    "message_start": ("message_start", _event_table(pb.MessageStartEvent)),
    "message_delta": ("message_delta", _event_table(pb.MessageDeltaEvent)),
}


def _fill_flat(msg: Any, obj: dict[str, Any], table: dict[str, Any]) -> bool:
    """Fill ``msg`` from ``obj`` as ``codec.from_json`` would; False (``msg`` part-filled) at a value the table
    leaves to the codec: a non-empty list, a field of another kind. A value that does not fit its field (a null,
    a string for a number) goes to ``extra``, as the codec puts it."""
    extra: dict[str, Any] | None = None
    for key, value in obj.items():
        kind = table.get(key)
        if kind is _STR:
            if type(value) is str:
                setattr(msg, key, value)
                continue
        elif kind is _INT:
            if type(value) is int and value in _INT32:
                setattr(msg, key, value)
                continue
        elif type(kind) is dict:
            if type(value) is dict:
                sub = getattr(msg, key)
                sub.SetInParent()
                if not _fill_flat(sub, value, kind):
                    return False
                continue
        elif kind is _SKIP:
            continue
        elif kind is _STRUCT:
            if type(value) is dict:
                struct = getattr(msg, key)
                struct.SetInParent()
                struct.update(value)
                continue
        elif kind is not None and (kind is not _LIST or type(value) is not list or value):
            return False  # _OTHER, or a list with items (an empty one goes to extra)
        if extra is None:
            extra = {}
        extra[key] = value
    if extra is not None:
        _update(msg.extra, extra)
    return True


# Serialized Structs of the usual ``extra`` objects, whose keys hold only nulls and empty lists (a
# message_start's "content": [], "stop_reason": null, "stop_sequence": null): Struct.update is Python
# and costs more than the rest of the fill, parsing its bytes costs little. Keyed by each key and whether it
# holds a list; bounded, since the keys come from upstream.
_NULL_EXTRAS: dict[tuple[object, ...], bytes] = {}
_NULL_EXTRAS_MAX = 256
_NULL_EXTRA_KEYS = 8  # keys of one object, at most
_NULL_EXTRA_KEY_CHARS = 64  # characters of one key, at most


def _update(struct: struct_pb2.Struct, extra: dict[str, Any]) -> None:
    """``struct.update(extra)``, from cached bytes when ``extra`` holds only nulls and empty lists."""
    if len(extra) <= _NULL_EXTRA_KEYS:
        signature: list[object] = []
        for key, value in extra.items():
            if len(key) > _NULL_EXTRA_KEY_CHARS:
                break
            if value is None:
                signature.append(key)
                signature.append(False)
            elif type(value) is list and not value:
                signature.append(key)
                signature.append(True)
            else:
                break
        else:
            cached = tuple(signature)
            blob = _NULL_EXTRAS.get(cached)
            if blob is None:
                # One entry at a time: parsed in the dict's order, the map's entries are made in the order
                # update makes them (a map's order on the wire follows how it was made).
                blob = b"".join(_one_entry(key, value) for key, value in extra.items())
                if len(_NULL_EXTRAS) < _NULL_EXTRAS_MAX:
                    _NULL_EXTRAS[cached] = blob
            struct.MergeFromString(blob)
            return
    struct.update(extra)


def _one_entry(key: str, value: Any) -> bytes:
    made = struct_pb2.Struct()
    made.update({key: value})
    return made.SerializeToString()


def to_response(batch: list[Event]) -> pb.StreamMessageResponse:
    """One gRPC message carrying the events of one upstream read, in order."""
    response = pb.StreamMessageResponse()
    add = response.events.add
    for _, obj, data in batch:
        fill_event(add(), obj, data)
    return response


# An event's proto is at most about 7x its JSON text (a list of one-digit numbers becomes Struct
# Values of 11 bytes each); a batch whose text is under limit / 8 needs no measuring.
_GROWTH = 8
# Batches with more text than this are converted off the event loop (``asyncio.to_thread``): a
# 4 MiB event of numbers takes seconds to convert, and health and the other calls must not wait.
OFFLOAD_BYTES = 256 * 1024


def text_size(batch: list[Event]) -> int:
    """The characters of the events' data text: what their conversion costs, roughly."""
    text = 0
    for _, _, data in batch:
        text += len(data)
    return text


def responses(
    batch: list[Event], limit: int, size: int | None = None
) -> tuple[list[pb.StreamMessageResponse], Failure | None]:
    """The events of one read as gRPC messages of at most ``limit`` bytes, in order: one message when
    the batch is small (the rule), split when it is not. An event that cannot fit in any message ends
    the list, with its failure (REPLY_TOO_LARGE) to raise once the messages before it are sent.
    ``size`` is the batch's ``text_size``, if the caller has it. An event the mapping cannot take ends the
    list the same way, with UPSTREAM_MALFORMED_EVENT."""
    if (text_size(batch) if size is None else size) * _GROWTH < limit:
        try:
            return [to_response(batch)], None
        except _UNMAPPABLE:
            pass  # one by one below: the events before the bad one still go out
    out: list[pb.StreamMessageResponse] = []
    response, size = pb.StreamMessageResponse(), 0
    for _, obj, data in batch:
        event = pb.MessageStreamEvent()
        try:
            fill_event(event, obj, data)
        except _UNMAPPABLE as exc:
            if response.events:
                out.append(response)
            return out, unmappable(obj, exc)
        n = event.ByteSize() + 16  # with its field tag and length, and the response's own
        if n > limit:
            if response.events:
                out.append(response)
            return out, too_large_reply(n, limit)
        if size + n > limit:
            out.append(response)
            response, size = pb.StreamMessageResponse(), 0
        response.events.append(event)
        size += n
    if response.events:
        out.append(response)
    return out, None


# What the mapping of a parsed event to its proto can raise on input it cannot take (a value protobuf
# refuses, a shape the codec cannot hold): the event is malformed, never a fault of the gateway's.
_UNMAPPABLE = (ValueError, TypeError, RecursionError, OverflowError)


def unmappable(obj: dict[str, Any], exc: BaseException) -> Failure:
    """The failure of an upstream event that cannot be mapped to its proto."""
    kind = obj.get("type")
    name = kind[:64] if isinstance(kind, str) else "untyped"
    return fail(
        Reason.UPSTREAM_MALFORMED_EVENT, f"upstream sent a {name!r} event the API does not define: {type(exc).__name__}"
    )


def too_large_reply(size: int, limit: int) -> Failure:
    """The failure of a reply that cannot fit in one gRPC message."""
    return fail(
        Reason.REPLY_TOO_LARGE,
        f"a reply message would be {size} bytes, over GATEWAY_MAX_MESSAGE_BYTES ({limit})",
    )


def _error_event(obj: dict[str, Any]) -> Failure:
    error = obj.get("error")
    error = error if isinstance(error, dict) else {}
    error_type, message, request_id = error.get("type"), error.get("message"), obj.get("request_id")
    return from_api_error(
        error_type if isinstance(error_type, str) else None,
        message if isinstance(message, str) else "error event",
        request_id=request_id if isinstance(request_id, str) else None,
    )
