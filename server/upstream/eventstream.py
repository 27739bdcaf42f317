"""The AWS event-stream binary framing, decoded incrementally; and Bedrock's frames read as Messages events.

Amazon Bedrock streams a reply (``/model/{id}/invoke-with-response-stream``) as event-stream messages.
Each message is

    total length (uint32) | headers length (uint32) | CRC32 of those 8 bytes (uint32)
    headers | payload | CRC32 of everything before it (uint32)

all big-endian, where each header is a name (1 length byte, then UTF-8) and a typed value (1 type
byte, then the value; see ``HEADER_TYPES``). The bytes come from the upstream, so they are untrusted:

    decoder = EventStreamDecoder(max_message_bytes=...)
    for chunk in body:                           # any split, down to one byte per chunk
        for message in decoder.feed(chunk):      # the messages this chunk completed, in order
            event_json = bedrock_event(message)  # bytes of one Messages stream event, or None
    decoder.end()                                # raises if the body stopped inside a message

Every way the bytes can be wrong raises ``EventStreamError``: a prelude or message CRC that does
not match, a length that is too small or above ``max_message_bytes`` (checked as soon as the
prelude is in, before anything is held for it), headers that overrun their section, an unknown
header type, a repeated header name, a name or string that is not UTF-8, a body that ends inside a
message. The messages before the bad bytes are returned first; once raised, the error is raised
again by every later call. Memory is bounded by one message; work is linear in the bytes fed,
however they are split: whole messages are read where they lie in the chunk, and only the
unfinished end of a chunk is copied, once, into the held buffer that later chunks complete. The
parsed headers of a few recurring header sections are kept, so a stream of chunks with the same
headers parses them once; the last section is compared where it lies (no copy, no hash), and a
message with the same headers as the one before shares its ``headers`` object, so a reader can
classify a stream's recurring section once (``EventStreamFramer`` does: ``is`` the last chunk's).

``BedrockDecoder``, what the gateway reads Bedrock with, is the same decoder turning each message
straight into the ``(type, event JSON text)`` frame of the Messages event it carries, in its walk over
the fed bytes (see its docstring for why); its frames are what ``bedrock_event`` gives, message by message.

``bedrock_event`` turns one decoded Bedrock message into what the Messages API would have sent:
an ``event``/``chunk`` message's payload ``{"bytes": "<base64>"}`` (with any ``"p"`` padding Bedrock
adds) decoded to the event's JSON bytes; an ``exception`` (or ``error``) message raises
``BedrockStreamError`` carrying its type and message. Nothing here imports the rest of the gateway.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from struct import Struct
from types import MappingProxyType
from typing import Final, Generic, NamedTuple, NoReturn, TypeVar
from zlib import crc32

PRELUDE_BYTES: Final = 12  # total length, headers length, prelude CRC
MIN_MESSAGE_BYTES: Final = PRELUDE_BYTES + 4  # no headers, no payload, the message CRC
# The format's own limits: 16 MiB for a whole message, 128 KiB of headers.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
MAX_HEADERS_BYTES: Final = 128 * 1024

_PRELUDE = Struct(">III")
_U32 = Struct(">I")
_U16 = Struct(">H")
_I8 = Struct(">b")
_I16 = Struct(">h")
_I32 = Struct(">i")
_I64 = Struct(">q")

HeaderValue = bool | int | bytes | str | datetime | uuid.UUID
# Header value types by their type byte: the name, and the Python type the value decodes to.
HEADER_TYPES: Final[Mapping[int, tuple[str, type]]] = {
    0: ("bool true", bool),
    1: ("bool false", bool),
    2: ("byte", int),
    3: ("short", int),
    4: ("integer", int),
    5: ("long", int),
    6: ("byte array", bytes),
    7: ("string", str),
    8: ("timestamp", datetime),  # milliseconds since the epoch, as an aware UTC datetime
    9: ("uuid", uuid.UUID),
}
_FIXED: Final[Mapping[int, Struct]] = {2: _I8, 3: _I16, 4: _I32, 5: _I64}
# A stream repeats the same few header sections (Bedrock: one for every chunk), so each decoder keeps
# the parsed headers of up to this many distinct sections of up to this size, keyed by their bytes.
_CACHED_SECTIONS: Final = 16
_CACHED_SECTION_BYTES: Final = 512
# A reply's chunks have a few hundred distinct preludes at most (one per message length); each decoder
# keeps up to this many it has checked.
_KEPT_PRELUDES: Final = 4096


class EventStreamError(ValueError):
    """The upstream's bytes are not a well-formed event stream within this decoder's bounds."""


class EventStreamMessage(NamedTuple):
    headers: Mapping[str, HeaderValue]  # read-only: messages with the same header bytes share one
    payload: bytes


# EventStreamMessage((headers, payload)) without the Python-level __new__ a NamedTuple has: one per message.
_new_message: Final = partial(tuple.__new__, EventStreamMessage)

T = TypeVar("T")


class FramingDecoder(Generic[T]):
    """The event-stream framing, decoded incrementally into items of type ``T``; see the module docstring.

    ``feed`` completes the held message, then ``_whole`` walks the messages that lie whole in the fed
    bytes, and ``_read`` appends what each message is to the consumer's list. A message whose header
    section is the same bytes as the one before's is known where it lies, with no copy but its payload's,
    and shares that message's headers object. A subclass that reads messages straight into what its
    consumer wants (``BedrockDecoder``) replaces ``_whole`` with a walk that does so inline. A reader
    raising EventStreamError ends the decoder as bad bytes do: the items appended before are returned,
    the error raised by the next call."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if not MIN_MESSAGE_BYTES <= max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in [{MIN_MESSAGE_BYTES}, {MAX_MESSAGE_BYTES}]")
        self._max = max_message_bytes
        self._held = bytearray()  # the start of a message that is not complete yet
        self._need = 0  # the total length of the held message, once its prelude is in and checked
        self._failure: EventStreamError | None = None
        self._sections: dict[bytes, Mapping[str, HeaderValue]] = {}
        # The last message's header section and its parsed headers: Bedrock repeats one on every chunk.
        self._last_section = b""
        self._last_headers: Mapping[str, HeaderValue] = MappingProxyType({})

    @property
    def pending(self) -> int:
        """Bytes held of a message that has not been completed yet."""
        return len(self._held)

    def feed(self, data: bytes | bytearray | memoryview) -> list[T]:
        """The items of the messages completed by ``data``, in order; raises EventStreamError.

        The messages before bad bytes are never lost: when ``data`` completes some and then goes
        wrong, they are returned and the error is raised by the next call (``feed`` or ``end``)."""
        if self._failure is not None:
            raise self._failure
        out: list[T] = []
        try:
            self._feed(data if type(data) is bytes else bytes(data), out)
        except EventStreamError as exc:
            self._failure = exc
            self._held = bytearray()
            if not out:
                raise
        return out

    def end(self) -> None:
        """The body has ended: raises EventStreamError if it stopped inside a message."""
        if self._failure is not None:
            raise self._failure
        if self._held:
            self._failure = EventStreamError(f"the stream ended inside a message ({len(self._held)} bytes of it)")
            raise self._failure

    def _read(self, out: list[T], message: EventStreamMessage) -> None:
        """Append what ``message`` is to ``out`` (nothing, for one the consumer skips)."""
        raise NotImplementedError

    def _feed(self, data: bytes, out: list[T], at: int = 0) -> None:
        """Read ``data`` from ``at`` (0 unless nothing is held) into ``out``; hold its unfinished end."""
        size = len(data)
        held = self._held
        if held:
            # Complete the held message first, taking from ``data`` only what it lacks.
            if not self._need:
                at = min(PRELUDE_BYTES - len(held), size)
                held += data[:at]
                if len(held) < PRELUDE_BYTES:
                    return
                self._need = _checked_prelude(held, 0, self._max)
            more = min(self._need - len(held), size - at)
            held += data[at : at + more]
            at += more
            if len(held) < self._need:
                return
            message = self._message(bytes(held), 0, self._need)
            self._held = bytearray()
            self._need = 0
            self._read(out, message)
        at = self._whole(data, at, out)  # then every whole message where it lies in ``data``
        if at < size:
            self._held = bytearray(data[at:])  # the unfinished end

    def _whole(self, data: bytes, at: int, out: list[T]) -> int:
        """Read the messages that lie whole in ``data`` from ``at``; returns where the first unfinished one
        starts (its total length in ``_need`` once its prelude is in). A message with the headers of the one
        before and a sound CRC (every chunk of a Bedrock reply) is taken inline, its headers not looked at."""
        size, limit, unpack, unpack_u32 = len(data), self._max, _PRELUDE.unpack_from, _U32.unpack_from
        last, headers, read = self._last_section, self._last_headers, self._read
        while size - at >= PRELUDE_BYTES:
            total, headers_length, prelude_crc = unpack(data, at)
            if (
                crc32(data[at : at + 8]) != prelude_crc
                or not MIN_MESSAGE_BYTES <= total <= limit
                or headers_length > total - MIN_MESSAGE_BYTES
                or headers_length > MAX_HEADERS_BYTES
            ):
                _checked_prelude(data, at, limit)  # raises, saying which
            if size - at < total:
                self._need = total
                break
            end = at + total - 4
            if (
                headers_length == len(last)
                and data.startswith(last, at + PRELUDE_BYTES)
                and crc32(data[at:end]) == unpack_u32(data, end)[0]
            ):
                start = at + PRELUDE_BYTES + headers_length
                at += total
                read(out, _new_message((headers, data[start:end])))
            else:
                message = self._message(data, at, total)  # raises for a bad CRC
                last, headers = self._last_section, self._last_headers
                at += total
                read(out, message)
        return at

    def _message(self, data: bytes, at: int, total: int) -> EventStreamMessage:
        """The message of ``total`` bytes at ``at`` (its prelude checked): its CRC verified, its headers parsed."""
        end = at + total - 4
        if crc32(data[at:end]) != _U32.unpack_from(data, end)[0]:
            raise EventStreamError("message CRC mismatch")
        start = at + PRELUDE_BYTES
        headers_end = start + _U32.unpack_from(data, at + 4)[0]
        last = self._last_section
        if headers_end - start == len(last) and data.startswith(last, start):
            return EventStreamMessage(self._last_headers, data[headers_end:end])
        section = data[start:headers_end]
        headers = self._sections.get(section)
        if headers is None:
            headers = MappingProxyType(_headers(memoryview(section)))
            if len(section) <= _CACHED_SECTION_BYTES and len(self._sections) < _CACHED_SECTIONS:
                self._sections[section] = headers
        self._last_section, self._last_headers = section, headers
        return EventStreamMessage(headers, data[headers_end:end])


class EventStreamDecoder(FramingDecoder[EventStreamMessage]):
    """Feeds bytes, returns the messages they complete: each message as it is (headers and payload)."""

    def _read(self, out: list[EventStreamMessage], message: EventStreamMessage) -> None:
        out.append(message)


def _checked_prelude(data: bytes | bytearray, at: int, max_bytes: int) -> int:
    """The total length of the message at ``at``, once its prelude's CRC and lengths are sound."""
    total: int
    headers_length: int
    total, headers_length, prelude_crc = _PRELUDE.unpack_from(data, at)
    if crc32(data[at : at + 8]) != prelude_crc:
        raise EventStreamError("prelude CRC mismatch")
    if total < MIN_MESSAGE_BYTES:
        raise EventStreamError(f"message length {total} is below the minimum {MIN_MESSAGE_BYTES}")
    if total > max_bytes:
        raise EventStreamError(f"message length {total} exceeds the limit {max_bytes}")
    if headers_length > min(total - MIN_MESSAGE_BYTES, MAX_HEADERS_BYTES):
        raise EventStreamError(f"headers length {headers_length} does not fit a message of {total} bytes")
    return total


def _headers(view: memoryview) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at, size = 0, len(view)
    try:
        while at < size:
            name_length = view[at]
            if name_length == 0:
                raise EventStreamError("a header has an empty name")
            name = _text(view[at + 1 : at + 1 + name_length], "header name")
            at += 1 + name_length
            if at >= size:
                raise EventStreamError(f"header {name!r} has no value")
            kind = view[at]
            at += 1
            value: HeaderValue
            if kind == 7 or kind == 6:
                length = _U16.unpack_from(view, at)[0]
                at += 2
                if at + length > size:
                    raise EventStreamError(f"header {name!r} overruns the headers")
                raw = view[at : at + length]
                value = _text(raw, f"header {name!r}") if kind == 7 else bytes(raw)
                at += length
            elif kind == 0 or kind == 1:
                value = kind == 0
            elif kind in _FIXED:
                fixed = _FIXED[kind]
                value = fixed.unpack_from(view, at)[0]
                at += fixed.size
            elif kind == 8:
                milliseconds = _I64.unpack_from(view, at)[0]
                at += 8
                try:
                    value = datetime.fromtimestamp(milliseconds / 1000, UTC)
                except (OverflowError, OSError, ValueError) as exc:
                    raise EventStreamError(f"header {name!r} is a timestamp out of range") from exc
            elif kind == 9:
                if at + 16 > size:
                    raise EventStreamError(f"header {name!r} overruns the headers")
                value = uuid.UUID(bytes=bytes(view[at : at + 16]))
                at += 16
            else:
                raise EventStreamError(f"header {name!r} has unknown value type {kind}")
            if name in headers:
                raise EventStreamError(f"header {name!r} is repeated")
            headers[name] = value
    except (IndexError, struct.error) as exc:  # a length, type or fixed-size value past the end
        raise EventStreamError("a header overruns the headers") from exc
    return headers


def _text(raw: memoryview, what: str) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise EventStreamError(f"{what} is not UTF-8") from exc


# ---- Bedrock's messages ---------------------------------------------------------------------------


class BedrockStreamError(Exception):
    """An ``exception`` (or ``error``) message in a Bedrock stream: the upstream failed mid-stream.

    ``error_type`` is Bedrock's name for it (``throttlingException``, ``modelStreamErrorException``,
    ...; for an ``error`` message its ``:error-code``); ``original_status`` and ``original_message``
    are what a ``modelStreamErrorException`` says the model answered.
    """

    def __init__(
        self, error_type: str, message: str, original_status: int | None = None, original_message: str | None = None
    ) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.original_status = original_status
        self.original_message = original_message


_BYTES: Final = b'{"bytes":"'
_PADDING: Final = b'","p":"'
_DELTA: Final = '{"type":"content_block_delta"'  # an event's start, its type whole


def bedrock_event(message: EventStreamMessage) -> bytes | None:
    """The JSON of the Messages stream event a Bedrock ``chunk`` message carries.

    Returns None for an event of another type (none is defined today: skipped, as the SDK skips
    them); raises BedrockStreamError for an exception or error message and EventStreamError for a
    message that is none of these or whose payload is not ``{"bytes": base64}``.
    """
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "event":
        if headers.get(":event-type") != "chunk":
            return None
        return chunk_json(message.payload)
    if kind == "exception":
        error_type = headers.get(":exception-type")
        if not isinstance(error_type, str):
            raise EventStreamError("an exception message without :exception-type")
        raise _exception(error_type, message.payload)
    if kind == "error":
        code, text = headers.get(":error-code"), headers.get(":error-message")
        raise BedrockStreamError(code if isinstance(code, str) else "error", text if isinstance(text, str) else "")
    raise EventStreamError(f"a message of unknown :message-type {kind!r}")


def chunk_json(payload: bytes) -> bytes:
    """The event JSON of a ``chunk`` message's payload; raises EventStreamError if it is not ``{"bytes": base64}``.

    Bedrock's own layout, ``{"bytes":"<base64>"}`` or ``{"bytes":"<base64>","p":"<padding>"}``, is read
    without a JSON parser, by positions in the payload (every chunk of a reply has it). It is taken only
    when it is exactly that: the base64 strict (so no quote, escape or other character), the padding
    ASCII letters and digits, the object closed right after; a payload of that shape is JSON whose
    ``bytes`` is that base64, so the result is what JSON gives. Anything else (spaces, escapes, other
    keys or characters, a broken layout) is read as JSON, and ends as JSON says."""
    if payload.startswith(_BYTES) and payload.endswith(b'"}'):
        close = payload.find(b'"', 10)
        end = len(payload) - 2
        if close == end or (close > 0 and payload.startswith(_PADDING, close) and payload[close + 7 : end].isalnum()):
            try:
                return binascii.a2b_base64(payload[10:close], strict_mode=True)
            except binascii.Error:
                pass  # e.g. an escaped solidus: JSON's business
    try:
        document = json.loads(payload)
    except ValueError as exc:
        raise EventStreamError("a chunk's payload is not JSON") from exc
    text = document.get("bytes") if isinstance(document, dict) else None
    if not isinstance(text, str):
        raise EventStreamError('a chunk\'s payload has no "bytes" string')
    try:
        return binascii.a2b_base64(text.encode("ascii", "replace"), strict_mode=True)
    except binascii.Error as exc:
        raise EventStreamError('a chunk\'s "bytes" is not base64') from exc


Frame = tuple[str, str]  # (event type, event JSON text)


class BedrockMessageError(EventStreamError):
    """A sound event-stream message that is not one of Bedrock's: a chunk that is not ``{"bytes": base64}``,
    a message of an unknown type, an exception without its type."""


class EventTooLargeError(Exception):
    """A chunk's event is over the decoder's ``max_event_bytes``; ``size`` is its length."""

    def __init__(self, size: int) -> None:
        super().__init__(f"an event of {size} bytes")
        self.size = size


class BedrockDecoder(FramingDecoder[Frame]):
    """Bedrock's body straight to the Messages events it carries: each ``(type, JSON text)``, in order.

    Every chunk of a reply has the same header section, so once a chunk has been read the walk over the
    fed bytes (``_whole``) takes the run of whole chunks that follows with that section's pattern
    (``_chunk_pattern``): one regular-expression match per chunk, in C, finds its prelude, its base64
    (``chunk_json``'s own layout) and its CRC, and the walk checks the prelude (a sound one is kept, so a
    stream's recurring preludes are checked once), the message CRC and the base64 (strict), then takes
    the event's type where the API writes it. On CPython a call costs about as much as a check, and the
    match does in one call what would otherwise take a find and several prefix tests (``python -m
    bench.eventstream`` times the decoder against reading SSE). Whatever the pattern does not take (the
    first chunk, a chunk split across reads, one in another layout, an exception) is read message by
    message: its frame is what ``bedrock_event`` gives. An exception (or error) message becomes the ``error`` frame that
    ``error_frame`` makes of it, the last one returned (nothing follows an exception); a message that is
    not Bedrock's raises ``BedrockMessageError``, or, after frames of the same feed, ends them with the
    frame ``("", "")`` (malformed in its place, for the consumer to refuse after the frames before it).
    An event over ``max_event_bytes`` raises ``EventTooLargeError`` at once; one that is not UTF-8,
    ``UnicodeDecodeError``.
    """

    def __init__(
        self, max_message_bytes: int, max_event_bytes: int, error_frame: Callable[[BedrockStreamError], Frame]
    ) -> None:
        super().__init__(max_message_bytes)
        self._max_event = max_event_bytes
        self._error_frame = error_frame
        self._chunk_headers: object = None  # the headers of the chunks read: the recurring ones, known by ``is``
        self._pattern: re.Pattern[bytes] | None = None  # their section's chunk pattern, once one is read
        self._patterns = 0  # patterns this decoder has taken: a stream has one section, a broken one may not
        self._preludes: dict[bytes, int] = {}  # sound preludes (with their CRC) -> their message's length

    def _feed(self, data: bytes, out: list[Frame], at: int = 0) -> None:
        pattern = self._pattern
        if pattern is not None and not self._held:
            # A paced stream's read is one recurring chunk, whole: the pattern reads it with no other step.
            at = self._scan(pattern, data, at, out)
            if at == len(data):
                return
        super()._feed(data, out, at)

    def _whole(self, data: bytes, at: int, out: list[Frame]) -> int:
        size, limit = len(data), self._max
        while size - at >= PRELUDE_BYTES:
            if self._pattern is not None:
                at = self._scan(self._pattern, data, at, out)
                if size - at < PRELUDE_BYTES:
                    break
            total = _checked_prelude(data, at, limit)
            if size - at < total:
                self._need = total
                break
            message = self._message(data, at, total)  # raises for a bad CRC
            at += total
            self._read(out, message)
        return at

    def _scan(self, pattern: re.Pattern[bytes], data: bytes, at: int, out: list[Frame]) -> int:
        """Read the whole chunks of the recurring section from ``at`` on, each where the last one ended;
        returns where the first message it does not take starts (read by ``_whole``, which says why)."""
        match, preludes, append, size = pattern.match, self._preludes, out.append, len(data)
        while at < size and (found := match(data, at)) is not None:
            message, prelude, base64, crc = found.groups()
            total = len(message) + 4
            if preludes.get(prelude) != total and not self._sound(prelude, total):
                break
            if crc32(message) != int.from_bytes(crc):
                break
            try:
                text = binascii.a2b_base64(base64, strict_mode=True).decode()
            except binascii.Error:
                break  # e.g. an escaped solidus: JSON's business
            append(("content_block_delta", text) if text.startswith(_DELTA) else (event_type(text), text))
            at += total
        return at

    def _sound(self, prelude: bytes, total: int) -> bool:
        """Whether ``prelude`` is sound (else raises) and gives ``total``; a sound one is kept, up to a bound."""
        if _checked_prelude(prelude, 0, self._max) != total:
            return False
        if len(self._preludes) < _KEPT_PRELUDES:
            self._preludes[prelude] = total
        return True

    def _read(self, out: list[Frame], message: EventStreamMessage) -> None:
        try:
            event = bedrock_event(message)
        except BedrockStreamError as exc:
            out.append(self._error_frame(exc))
            raise EventStreamError(f"the stream ended with {exc.error_type}") from None  # nothing follows it
        except EventStreamError as exc:
            self._refuse(out, exc)
        if event is not None:
            if message.headers is not self._chunk_headers:
                self._chunk_headers = message.headers
                self._pattern = None
                if len(section := self._last_section) <= _CACHED_SECTION_BYTES and self._patterns < _CACHED_SECTIONS:
                    self._pattern = _chunk_pattern(section, min(self._max_event // 3 * 4, MAX_MESSAGE_BYTES))
                    self._patterns += 1
            self._append(out, event)

    def _append(self, out: list[Frame], event: bytes) -> None:
        if len(event) > self._max_event:
            raise EventTooLargeError(len(event))
        text = event.decode()
        out.append((event_type(text), text))

    @staticmethod
    def _refuse(out: list[Frame], exc: EventStreamError) -> NoReturn:
        if out:
            out.append(("", ""))  # malformed, in its place: the frames before it go first
        raise BedrockMessageError(str(exc)) from None


@functools.lru_cache(maxsize=_CACHED_SECTIONS)
def _chunk_pattern(section: bytes, max_base64: int) -> re.Pattern[bytes]:
    """A whole chunk message with header section ``section`` in Bedrock's own layout, base64 of at most
    ``max_base64`` characters (so an event of at most max_event_bytes): groups are the message without its
    CRC, its prelude (with the prelude's CRC), the base64, the CRC. Each part of the layout is
    unambiguous (the base64 ends at the first quote, the padding at the next), so a chunk has one match."""
    return re.compile(
        rb"((.{12})" + re.escape(section) + rb'\{"bytes":"([^"]{0,%d})"(?:,"p":"[A-Za-z0-9]*")?\})(.{4})' % max_base64,
        re.DOTALL,
    )


def event_type(text: str) -> str:
    """The ``type`` of one event's JSON text: read where the API writes it, else parsed; "" if it has none."""
    if text.startswith('{"type":"'):
        end = text.find('"', 9)
        if end > 9:
            return text[9:end]
    try:
        obj = json.loads(text)
    except ValueError:
        return ""
    kind = obj.get("type") if type(obj) is dict else None
    return kind if type(kind) is str else ""


def _exception(error_type: str, payload: bytes) -> BedrockStreamError:
    try:
        document = json.loads(payload) if payload else {}
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return BedrockStreamError(error_type, payload.decode("utf-8", "replace"))
    text = document.get("message", document.get("Message"))
    status = document.get("originalStatusCode")
    original = document.get("originalMessage")
    return BedrockStreamError(
        error_type,
        text if isinstance(text, str) else "",
        status if isinstance(status, int) and not isinstance(status, bool) else None,
        original if isinstance(original, str) else None,
    )
