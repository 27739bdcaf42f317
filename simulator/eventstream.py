"""AWS event-stream messages as Amazon Bedrock writes them, for the simulator's Bedrock replies.

A message is its prelude (total length, headers length, CRC32 of those 8 bytes), its headers,
its payload and the CRC32 of all that, big-endian. The simulator writes string headers only
(type 7), as Bedrock does:

- a reply event: ``:event-type chunk``, ``:content-type application/json``, ``:message-type event``,
  payload ``{"bytes":"<base64 of the event's JSON>","p":"<padding>"}``; Bedrock pads each chunk
  with a run of letters and digits of varying length so that sizes do not give the text away;
- a failure: ``:exception-type NAME``, ``:content-type application/json``, ``:message-type
  exception``, payload ``{"message": ...}`` (plus ``originalStatusCode`` and ``originalMessage``
  for a ``modelStreamErrorException``).

The gateway's decoder is ``server.upstream.eventstream``; the tests check these bytes against botocore's.
"""

import base64
import json
import struct
from collections.abc import Mapping
from typing import Any
from zlib import crc32

_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with these string headers and this payload."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    body = prelude + struct.pack(">I", crc32(prelude)) + encoded + payload
    return body + struct.pack(">I", crc32(body))


def chunk(event_json: bytes, position: int) -> bytes:
    """The ``chunk`` message carrying one Messages stream event; ``position`` varies the padding."""
    padding = _PAD[: 1 + (position * 7) % len(_PAD)]
    payload = b'{"bytes":"%s","p":"%s"}' % (base64.b64encode(event_json), padding.encode())
    return message({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}, payload)


def exception(exception_type: str, body: Mapping[str, Any]) -> bytes:
    """An ``exception`` message: the stream failed with ``exception_type`` (e.g. ``throttlingException``)."""
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return message(headers, json.dumps(body, separators=(",", ":")).encode())


def corrupted(frame: bytes) -> bytes:
    """``frame`` with its message CRC wrong, which a reader must refuse."""
    return frame[:-4] + struct.pack(">I", (crc32(frame[:-4]) + 1) & 0xFFFFFFFF)


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", 7, len(raw_value)) + raw_value
