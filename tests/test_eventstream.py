"""The gateway's AWS event-stream decoder (server/upstream/eventstream.py): tables of good and bad bytes, botocore's
decoder as an oracle on generated streams, every split and every one-byte corruption, and Bedrock's messages
read as Messages events."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import struct
import uuid
from datetime import UTC, datetime
from zlib import crc32

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from server.upstream.eventstream import (
    MAX_MESSAGE_BYTES,
    BedrockDecoder,
    BedrockMessageError,
    BedrockStreamError,
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
    EventTooLargeError,
    Frame,
    bedrock_event,
    chunk_json,
    event_type,
)
from simulator import eventstream as written

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


def header(name: bytes, kind: int, value: bytes) -> bytes:
    """One header as raw bytes: name length, name, type byte, value (already encoded)."""
    return bytes([len(name)]) + name + bytes([kind]) + value


def message(headers: bytes, payload: bytes, *, total: int | None = None, headers_length: int | None = None) -> bytes:
    """A message with correct CRCs around these raw headers and payload (lengths overridable)."""
    length = 16 + len(headers) + len(payload) if total is None else total
    prelude = struct.pack(">II", length, len(headers) if headers_length is None else headers_length)
    body = prelude + struct.pack(">I", crc32(prelude)) + headers + payload
    return body + struct.pack(">I", crc32(body))


def string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">H", len(raw)) + raw


def decode(data: bytes, pieces: int = 1, max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[EventStreamMessage]:
    """Every message of ``data``, fed in ``pieces`` nearly equal chunks; the stream then ends."""
    decoder = EventStreamDecoder(max_message_bytes)
    size = -(-len(data) // pieces) if data else 1
    out = [m for at in range(0, len(data), size) for m in decoder.feed(data[at : at + size])]
    decoder.end()
    return out


STAMP = datetime(2026, 10, 21, 12, 30, 15, 250000, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
HEADER_CASES = [
    ("bool true", header(b"t", 0, b""), True),
    ("bool false", header(b"f", 1, b""), False),
    ("byte", header(b"b", 2, struct.pack(">b", -7)), -7),
    ("short", header(b"s", 3, struct.pack(">h", -300)), -300),
    ("integer", header(b"i", 4, struct.pack(">i", 2**31 - 1)), 2**31 - 1),
    ("long", header(b"l", 5, struct.pack(">q", -(2**63))), -(2**63)),
    ("byte array", header(b"a", 6, struct.pack(">H", 3) + b"\x00\xff\x10"), b"\x00\xff\x10"),
    ("string", header(b"x", 7, string("héllo")), "héllo"),
    ("timestamp", header(b"ts", 8, struct.pack(">q", int(STAMP.timestamp() * 1000))), STAMP),
    ("uuid", header(b"u", 9, ID.bytes), ID),
]


@pytest.mark.parametrize(("kind", "raw", "value"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_each_header_type_decodes(kind: str, raw: bytes, value: object) -> None:
    """Every header value type of the format decodes to its value, here and in botocore."""
    data = message(raw, b"{}")
    [decoded] = decode(data)
    [name] = decoded.headers
    assert decoded.headers[name] == value
    assert type(decoded.headers[name]) is type(value)
    assert decoded.payload == b"{}"
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    [oracle] = list(buffer)
    expected = oracle.headers[name]
    if isinstance(value, datetime):  # botocore keeps a timestamp as its milliseconds
        expected = datetime.fromtimestamp(expected / 1000, UTC)
    if isinstance(value, uuid.UUID):  # and a uuid as its bytes
        expected = uuid.UUID(bytes=expected)
    assert expected == value


def test_all_header_types_in_one_message_and_empty_parts() -> None:
    """Headers of every type side by side; a message with no headers and no payload is 16 bytes."""
    data = message(b"".join(raw for _, raw, _ in HEADER_CASES), b"payload") + message(b"", b"")
    first, empty = decode(data)
    assert list(first.headers.values()) == [value for _, _, value in HEADER_CASES]
    assert (empty.headers, empty.payload) == ({}, b"")
    assert len(message(b"", b"")) == 16


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


GOOD = message(header(b":message-type", 7, string("event")), b'{"a":1}')
BAD_CASES = [
    ("prelude CRC", _flip(GOOD, 9), "prelude CRC mismatch"),
    ("message CRC", _flip(GOOD, len(GOOD) - 1), "message CRC mismatch"),
    ("payload byte", _flip(GOOD, len(GOOD) - 6), "message CRC mismatch"),
    ("too short", message(b"", b"", total=15), "below the minimum"),
    ("headers overrun the message", message(b"", b"xyz", headers_length=4), "headers length 4 does not fit"),
    ("empty header name", message(header(b"", 0, b""), b""), "empty name"),
    ("unknown header type", message(header(b"n", 10, b""), b""), "unknown value type 10"),
    ("string overruns", message(header(b"n", 7, struct.pack(">H", 9) + b"abc"), b""), "overruns"),
    ("uuid overruns", message(header(b"n", 9, b"\x00" * 15), b""), "overruns"),
    ("long overruns", message(header(b"n", 5, b"\x00" * 7), b""), "overruns"),
    ("name without type", message(b"\x03abc", b""), "has no value"),
    ("name overruns", message(b"\x09abc", b""), "has no value"),
    ("repeated name", message(header(b"n", 0, b"") + header(b"n", 1, b""), b""), "repeated"),
    ("name not UTF-8", message(header(b"\xff", 0, b""), b""), "not UTF-8"),
    ("string not UTF-8", message(header(b"n", 7, struct.pack(">H", 1) + b"\xc3"), b""), "not UTF-8"),
    ("timestamp out of range", message(header(b"n", 8, struct.pack(">q", 2**62)), b""), "out of range"),
]


@pytest.mark.parametrize(("case", "data", "says"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_bytes_raise_one_error(case: str, data: bytes, says: str) -> None:
    """Each kind of bad message raises EventStreamError saying what is wrong, whole or byte by byte,
    after returning the good message before it; the decoder then refuses everything."""
    for pieces in (1, len(GOOD + data)):
        decoder = EventStreamDecoder()
        seen: list[EventStreamMessage] = []
        with pytest.raises(EventStreamError, match=says):
            whole = GOOD + data
            size = -(-len(whole) // pieces)
            for at in range(0, len(whole), size):
                seen.extend(decoder.feed(whole[at : at + size]))
            decoder.end()
        assert [m.payload for m in seen] == [b'{"a":1}']
        with pytest.raises(EventStreamError, match=says):
            decoder.feed(GOOD)
        with pytest.raises(EventStreamError, match=says):
            decoder.end()


def test_a_stream_that_stops_inside_a_message_fails_at_its_end() -> None:
    """A body cut inside a message (even inside the prelude) is an error once the body ends."""
    for cut in (1, 11, 12, len(GOOD) - 1):
        decoder = EventStreamDecoder()
        assert decoder.feed(GOOD[:cut]) == []
        assert decoder.pending == cut
        with pytest.raises(EventStreamError, match=f"ended inside a message \\({cut} bytes"):
            decoder.end()


def test_an_oversized_message_is_refused_at_its_prelude() -> None:
    """A prelude announcing more than the bound is refused on its 12 bytes, before anything is held for it."""
    decoder = EventStreamDecoder(max_message_bytes=1024)
    prelude = struct.pack(">II", 1025, 0)
    with pytest.raises(EventStreamError, match="message length 1025 exceeds the limit 1024"):
        decoder.feed(prelude + struct.pack(">I", crc32(prelude)))
    assert decoder.pending == 0
    huge = struct.pack(">II", 2**32 - 1, 0)
    with pytest.raises(EventStreamError, match="exceeds the limit"):
        EventStreamDecoder().feed(huge + struct.pack(">I", crc32(huge)))
    fits = message(b"", b"x" * (1024 - 16))
    assert [m.payload for m in decode(fits, max_message_bytes=1024)] == [b"x" * 1008]
    with pytest.raises(ValueError, match="max_message_bytes"):
        EventStreamDecoder(max_message_bytes=MAX_MESSAGE_BYTES + 1)


def test_bytes_held_never_exceed_one_message() -> None:
    """Fed one byte at a time, the decoder holds at most the message it is completing, and hands each
    message out on its last byte."""
    data = b"".join(message(header(b"n", 7, string("v" * (size % 999))), b"p" * size) for size in (0, 5, 300, 70000))
    sizes = [16 + 5 + s % 999 + s for s in (0, 5, 300, 70000)]
    decoder = EventStreamDecoder()
    most, completed = 0, []
    for at in range(len(data)):
        for done in decoder.feed(data[at : at + 1]):
            completed.append((at, len(done.payload)))
        most = max(most, decoder.pending)
    decoder.end()
    assert most == max(sizes) - 1
    ends = [sum(sizes[: i + 1]) - 1 for i in range(len(sizes))]
    assert completed == list(zip(ends, (0, 5, 300, 70000), strict=True))


# ---- generated streams ----------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=12).filter(lambda b: _utf8(b))
values = st.one_of(
    st.booleans().map(lambda v: (0 if v else 1, b"")),
    st.integers(-(2**7), 2**7 - 1).map(lambda v: (2, struct.pack(">b", v))),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: (3, struct.pack(">h", v))),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: (4, struct.pack(">i", v))),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: (5, struct.pack(">q", v))),
    st.binary(max_size=40).map(lambda v: (6, struct.pack(">H", len(v)) + v)),
    st.text(max_size=40).map(lambda v: (7, string(v))),
    st.integers(0, 2**41).map(lambda v: (8, struct.pack(">q", v))),
    st.binary(min_size=16, max_size=16).map(lambda v: (9, v)),
)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """One to five messages with distinct-named headers of every type and binary payloads."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        headers = draw(st.dictionaries(names, values, max_size=5))
        raw = b"".join(header(name, kind, value) for name, (kind, value) in headers.items())
        out.append(message(raw, draw(st.binary(max_size=200))))
    return b"".join(out)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _feed_all(pieces: list[bytes]) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder()
    out = [m for piece in pieces for m in decoder.feed(piece)]
    decoder.end()
    return out


@FUZZ
@given(st.data())
def test_any_split_decodes_as_botocore_does(data: st.DataObject) -> None:
    """However a generated stream is split (empty pieces included), it decodes to the same messages,
    and to what botocore's EventStreamBuffer decodes."""
    stream = data.draw(streams())
    pieces = data.draw(splits(stream))
    ours = _feed_all(pieces)
    buffer = EventStreamBuffer()
    buffer.add_data(stream)
    oracle = list(buffer)
    assert [m.payload for m in ours] == [m.payload for m in oracle]
    for mine, theirs in zip(ours, oracle, strict=True):
        assert list(mine.headers) == list(theirs.headers)
        for name, value in mine.headers.items():
            if isinstance(value, datetime):
                assert round(value.timestamp() * 1000) == theirs.headers[name]
            elif isinstance(value, uuid.UUID):
                assert value.bytes == theirs.headers[name]
            else:
                assert value == theirs.headers[name]
    assert ours == _feed_all([stream])


@FUZZ
@given(st.data())
def test_any_one_byte_corruption_is_refused(data: st.DataObject) -> None:
    """Changing any one byte of a stream, however it is then split, raises EventStreamError by the
    stream's end at the latest (CRC32 catches every burst of up to 32 bits), never anything else."""
    stream = data.draw(streams())
    at = data.draw(st.integers(0, len(stream) - 1))
    xor = data.draw(st.integers(1, 255))
    corrupt = stream[:at] + bytes([stream[at] ^ xor]) + stream[at + 1 :]
    with pytest.raises(EventStreamError):
        _feed_all(data.draw(splits(corrupt)))


@FUZZ
@given(st.binary(max_size=300), st.data())
def test_arbitrary_bytes_raise_only_event_stream_errors(garbage: bytes, data: st.DataObject) -> None:
    """Random bytes, alone or with valid CRCs around random headers, decode or raise EventStreamError."""
    framed = (message(garbage[:100], garbage[100:]), message(garbage, b"", headers_length=len(garbage)))
    for candidate in (garbage, *framed):
        with contextlib.suppress(EventStreamError):
            _feed_all(data.draw(splits(candidate)))


# ---- Bedrock's messages ---------------------------------------------------------------------------

EVENT = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 'héllo "q" /'}}
EVENT_JSON = json.dumps(EVENT).encode()
B64 = base64.b64encode(EVENT_JSON).decode()
CHUNK_HEADERS = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}


def _bedrock(headers: dict[str, str], payload: bytes) -> EventStreamMessage:
    [decoded] = decode(written.message(headers, payload))
    return decoded


@pytest.mark.parametrize(
    "payload",
    [
        f'{{"bytes":"{B64}"}}'.encode(),
        f'{{"bytes":"{B64}","p":"abcdefghijklmnopqrstuvwxyzABCDEF0123"}}'.encode(),
        f'{{ "bytes" : "{B64}", "p": "ab" }}'.encode(),  # not Bedrock's layout: read as JSON
        json.dumps({"p": "x", "bytes": B64}).encode(),
        f'{{"bytes":"{B64.replace("/", chr(92) + "/")}","p":"a"}}'.encode(),  # JSON's escaped solidus
        f'{{"bytes":"{B64}","p":"a-b"}}'.encode(),  # padding of other characters
        f'{{"bytes":"AAAA","p":"a","bytes":"{B64}"}}'.encode(),  # a repeated key: read as JSON reads it
    ],
    ids=["bare", "padded", "spaced", "reordered", "escaped-solidus", "odd-padding", "repeated-key"],
)
def test_a_chunk_is_the_event_it_carries(payload: bytes) -> None:
    """A chunk's base64 is decoded to the Messages event's exact JSON bytes, whatever the payload's layout."""
    assert bedrock_event(_bedrock(CHUNK_HEADERS, payload)) == EVENT_JSON


def test_the_simulators_chunks_are_the_events() -> None:
    """What the simulator writes for Bedrock reads back as the events' JSON, padded at every length."""
    frames = b"".join(written.chunk(EVENT_JSON, position) for position in range(70))
    assert [bedrock_event(m) for m in decode(frames, pieces=97)] == [EVENT_JSON] * 70


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b'{"bytes":"not base64!"}', "not base64"),
        (b'{"bytes":"eyJ"}', "not base64"),  # bad padding
        (b'{"bytes":12}', 'no "bytes" string'),
        (b'{"other":"x"}', 'no "bytes" string'),
        (b"[1]", 'no "bytes" string'),
        (b'{"bytes":"', "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_a_bad_chunk_payload_is_an_event_stream_error(payload: bytes, says: str) -> None:
    with pytest.raises(EventStreamError, match=says):
        bedrock_event(_bedrock(CHUNK_HEADERS, payload))


def _as_json_reads_it(payload: bytes) -> bytes | None:
    """The oracle: a chunk's event as a JSON parser reads its payload; None where that is an error."""
    try:
        document = json.loads(payload)
        return base64.b64decode(document["bytes"].encode("ascii"), validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
        return None


def _read(payload: bytes) -> bytes | None:
    try:
        return chunk_json(payload)
    except EventStreamError:
        return None


_PADDED = f'{{"bytes":"{B64}","p":"abcXYZ019"}}'.encode()


@pytest.mark.parametrize("layout", [f'{{"bytes":"{B64}"}}'.encode(), _PADDED], ids=["bare", "padded"])
def test_the_layout_read_without_a_parser_ends_as_json_says(layout: bytes) -> None:
    """Bedrock's layout is read by positions, not parsed: every byte of it replaced by each character that
    could fool a reader by positions (a quote, an escape, a brace, a space, a control, a non-ASCII byte),
    every cut and every insertion of those still gives exactly what a JSON parser gives, the event or an
    error (EventStreamError)."""
    tricky = b'"\\} ,:p\x00\x7f\xff='
    variants = [layout[:cut] for cut in range(len(layout))]
    for at in range(len(layout)):
        for byte in tricky:
            variants.append(layout[:at] + bytes([byte]) + layout[at + 1 :])
            variants.append(layout[:at] + bytes([byte]) + layout[at:])
    variants += [layout.replace(b'"p":"abcXYZ019"', b'"p":"' + p + b'"') for p in (b"", b"a\\", b'a\\"', b"\xc3\xa9")]
    for variant in variants:
        assert _read(variant) == _as_json_reads_it(variant), variant
    assert _read(layout) == EVENT_JSON


def _frames(data: bytes, pieces: int = 1, max_event_bytes: int = 1 << 20) -> tuple[list[Frame], Exception | None]:
    """What a BedrockDecoder makes of ``data`` fed in ``pieces``: its frames, and what it raised (or None)."""
    decoder = BedrockDecoder(MAX_MESSAGE_BYTES, max_event_bytes, lambda exc: ("error", exc.error_type))
    size = -(-len(data) // pieces)
    out: list[Frame] = []
    try:
        for at in range(0, len(data), size):
            out += decoder.feed(data[at : at + size])
        decoder.end()
    except (EventStreamError, EventTooLargeError, UnicodeDecodeError) as exc:
        return out, exc
    return out, None


def test_the_bedrock_decoder_reads_every_chunk_as_bedrock_event_does() -> None:
    """The decoder reads a recurring chunk to its event where it lies (Bedrock's layout by positions): a chunk
    between two good ones, its payload any layout variant of the test above, gives exactly the frame of
    ``bedrock_event``'s event, or, where that is an error, the frames before it and ("", ""), then
    BedrockMessageError; the same at any split."""
    good = written.chunk(EVENT_JSON, 3)
    good_frame = ("content_block_delta", EVENT_JSON.decode())
    tricky = b'"\\} ,:p\x00\x7f\xff='
    variants = [_PADDED[:cut] for cut in range(len(_PADDED))]
    for at in range(len(_PADDED)):
        variants += [_PADDED[:at] + bytes([byte]) + _PADDED[at + 1 :] for byte in tricky]
    variants += [f'{{"bytes":"{B64}"}}'.encode(), f'{{ "bytes" : "{B64}" }}'.encode(), _PADDED]
    for variant in variants:
        data = good + written.message(CHUNK_HEADERS, variant) + good
        event = _read(variant)
        frames, raised = _frames(data)
        if event is None:
            assert (frames, type(raised)) == ([good_frame, ("", "")], BedrockMessageError), variant
            continue
        try:
            text = event.decode()
        except UnicodeDecodeError:
            assert (frames, type(raised)) == ([], UnicodeDecodeError), variant
            continue
        assert (frames, raised) == ([good_frame, (event_type(text), text), good_frame], None), variant
        assert _frames(data, pieces=7) == (frames, None)
    simulated = b"".join(written.chunk(json.dumps(e).encode(), i) for i, e in enumerate([{"type": "ping"}, EVENT] * 9))
    expected = [("ping", '{"type": "ping"}'), good_frame] * 9
    assert all(_frames(simulated, pieces) == (expected, None) for pieces in (1, 2, 5, 64, len(simulated)))


def test_the_bedrock_decoder_ends_at_an_exception_a_bad_message_or_a_large_event() -> None:
    """An exception message is the last frame (its error frame), the decoder failed after it; a message that is
    not Bedrock's first in a feed raises BedrockMessageError; an event over max_event_bytes raises
    EventTooLargeError, whether its chunk is the first (headers parsed) or a recurring one."""
    good = written.chunk(EVENT_JSON, 0)
    good_frame = ("content_block_delta", EVENT_JSON.decode())
    failed = written.exception("throttlingException", {"message": "slow"})
    frames, raised = _frames(good + good + failed + good)
    assert frames == [good_frame, good_frame, ("error", "throttlingException")]
    assert isinstance(raised, EventStreamError)
    assert type(_frames(written.message({":message-type": "weird"}, b"{}") + good)[1]) is BedrockMessageError
    small = written.chunk(b'{"type":"ping"}', 0)
    assert _frames(good + good, max_event_bytes=len(EVENT_JSON)) == ([good_frame, good_frame], None)
    for data in (good, small + good):
        frames, raised = _frames(data, max_event_bytes=len(EVENT_JSON) - 1)
        assert isinstance(raised, EventTooLargeError)
        assert raised.size == len(EVENT_JSON)


_REPLY = [{"type": "ping"}, *({**EVENT, "delta": {"type": "text_delta", "text": "x" * n}} for n in range(12))]


@FUZZ
@given(st.data())
def test_the_bedrock_decoder_refuses_any_one_byte_corruption_of_a_reply(data: st.DataObject) -> None:
    """Changing any one byte of a reply of recurring chunks (read by the chunk pattern), however it is then
    split, gives the frames of the chunks before the changed one and then an EventStreamError, never a frame
    the reply does not hold: both CRCs are checked before a chunk's base64 is read."""
    chunks = [written.chunk(json.dumps(event).encode(), i) for i, event in enumerate(_REPLY)]
    reply = b"".join(chunks)
    expected, raised = _frames(reply)
    assert raised is None
    assert len(expected) == len(_REPLY)
    at = data.draw(st.integers(0, len(reply) - 1))
    corrupt = reply[:at] + bytes([reply[at] ^ data.draw(st.integers(1, 255))]) + reply[at + 1 :]
    whole = sum(1 for end in itertools.accumulate(map(len, chunks)) if end <= at)  # chunks before the change
    decoder = BedrockDecoder(MAX_MESSAGE_BYTES, 1 << 20, lambda exc: ("error", exc.error_type))
    frames: list[Frame] = []
    with pytest.raises(EventStreamError):
        for piece in data.draw(splits(corrupt)):
            frames += decoder.feed(piece)
        decoder.end()
    if frames[-1:] == [("", "")]:
        frames.pop()  # a message that is not Bedrock's, in its place
    assert frames == expected[:whole]


def test_a_chunk_whose_prelude_disagrees_with_its_layout_is_refused() -> None:
    """A recurring chunk that matches Bedrock's layout but whose prelude gives a longer message is read as the
    whole message its prelude gives, and refused: here the four bytes after its payload's closing brace are
    the CRC of what is before them, so only the prelude tells that they are not the message's end."""
    good = written.chunk(EVENT_JSON, 0)
    good_frame = ("content_block_delta", EVENT_JSON.decode())
    shape = written.message(CHUNK_HEADERS, _PADDED + b"abcd")
    trailing = written.message(CHUNK_HEADERS, _PADDED + struct.pack(">I", crc32(shape[:-8])))
    frames, raised = _frames(good + good + trailing + good)
    assert (frames, type(raised)) == ([good_frame, good_frame, ("", "")], BedrockMessageError)


EXCEPTIONS = [
    ("throttlingException", {"message": "Too many tokens"}, ("Too many tokens", None, None)),
    ("internalServerException", {"message": "boom"}, ("boom", None, None)),
    ("serviceUnavailableException", {}, ("", None, None)),
    (
        "modelStreamErrorException",
        {"message": "Received error", "originalStatusCode": 529, "originalMessage": "Overloaded"},
        ("Received error", 529, "Overloaded"),
    ),
    ("validationException", {"Message": "capitalised"}, ("capitalised", None, None)),
]


@pytest.mark.parametrize(("kind", "body", "expected"), EXCEPTIONS, ids=[e[0] for e in EXCEPTIONS])
def test_an_exception_message_is_a_typed_error(
    kind: str, body: dict[str, object], expected: tuple[str, int | None, str | None]
) -> None:
    """An exception message raises BedrockStreamError with its :exception-type and its payload's message."""
    with pytest.raises(BedrockStreamError) as caught:
        bedrock_event(decode(written.exception(kind, body))[0])
    error = caught.value
    assert (error.error_type, error.message, error.original_status, error.original_message) == (kind, *expected)


def test_other_messages() -> None:
    """An `error` message is a typed error from its headers; an exception whose payload is not JSON keeps its
    text; an event of another type is skipped; a message of no known kind is an event stream error."""
    with pytest.raises(BedrockStreamError) as caught:
        error = {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "x"}
        bedrock_event(_bedrock(error, b""))
    assert (caught.value.error_type, caught.value.message) == ("InternalFailure", "x")
    with pytest.raises(BedrockStreamError) as caught:
        bedrock_event(_bedrock({":message-type": "exception", ":exception-type": "throttlingException"}, b"slow"))
    assert (caught.value.error_type, caught.value.message) == ("throttlingException", "slow")
    assert bedrock_event(_bedrock({":message-type": "event", ":event-type": "metadata"}, b"{}")) is None
    for headers in ({}, {":message-type": "weird"}, {":message-type": "exception"}):
        with pytest.raises(EventStreamError):
            bedrock_event(_bedrock(headers, b"{}"))
    typed = message(header(b":message-type", 6, struct.pack(">H", 5) + b"event"), b"{}")
    with pytest.raises(EventStreamError, match="unknown :message-type"):
        bedrock_event(decode(typed)[0])
