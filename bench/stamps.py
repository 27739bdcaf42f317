"""The send-time stamp: the simulator writes it into each text delta, clients read it back.

The simulator replaces the text of every ``text_delta`` frame, just before writing the frame to
the socket, with `` ts`` and ``time.monotonic_ns()`` as 19 digits. On Linux CLOCK_MONOTONIC is one
clock for every process on the machine, so a client in another process subtracts the stamp from
its own ``time.monotonic_ns()`` at receipt: that difference is the relay latency, from the
simulator's write to the client's read, through the gateway (or straight from the SDK).

The stamp travels unchanged through the gateway's lossless codec, so clients can find it in the
raw bytes of a gRPC response as well as in an SDK event's text.
"""

from __future__ import annotations

import re
import time

_TEXT_FRAME = b"event: content_block_delta"
_TEXT_DELTA = b'"type":"text_delta"'
_TEXT_VALUE = re.compile(rb'"text":"(?:[^"\\]|\\.)*"')
_STAMP = re.compile(rb"ts(\d{19})")


def stamp_frame(frame: bytes, now_ns: int | None = None) -> bytes:
    """``frame`` with its delta text replaced by the stamp for ``now_ns`` (default: now).

    Frames other than text deltas come back unchanged.
    """
    if not frame.startswith(_TEXT_FRAME) or _TEXT_DELTA not in frame:
        return frame
    now = time.monotonic_ns() if now_ns is None else now_ns
    return _TEXT_VALUE.sub(b'"text":" ts%019d"' % now, frame, count=1)


def stamps_in(data: bytes) -> list[int]:
    """Every stamp in ``data`` (e.g. a serialized StreamMessageResponse), in order."""
    return [int(m) for m in _STAMP.findall(data)]


def stamp_of(text: str) -> int | None:
    """The stamp in one delta's text, or None if it carries none."""
    match = _STAMP.search(text.encode())
    return int(match.group(1)) if match else None


def upstream_closes(log: str) -> dict[str, int]:
    """Upstream request id -> CLOCK_MONOTONIC ns at which the gateway closed its response unread, from the DEBUG
    lines of a gateway's log."""
    out = {}
    for line in log.splitlines():
        head, sep, ns = line.partition(" closed unread at monotonic_ns ")
        if sep and " upstream " in head:
            out[head.rsplit(" ", 1)[-1]] = int(ns)
    return out
