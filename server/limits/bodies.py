"""The budget of request-body bytes in flight, across every call of both ports.

A request body costs the gateway several times its size while the call starts (the bytes, the parsed
message, the JSON body sent upstream), so the bodies it holds at once are bounded, and a call that
would pass the bound is refused RESOURCE_EXHAUSTED (BODY_BUDGET_EXHAUSTED) before its body is read.

A body's size is known before it is read on the HTTP port (``content-length``); on gRPC it is not
(the length prefix is read by grpc's core along with the message), so a call about to read reserves
the largest body a message may hold (``max_message_bytes``) and, once read, keeps only its body's
size. A reading call that does not fit now but would once the calls reading beside it are done waits
for them (at most ``WAIT_SECONDS``, never past its deadline); one that cannot fit even then is
refused at once. Each reservation is given back when its call ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from pathlib import Path

WAIT_SECONDS = 1.0  # longest wait for the reads in progress to finish, before a refusal
TRIM_AFTER = 16 * 1024 * 1024  # bodies of this many bytes, all given back: hand free memory back to the system
# Seconds after the last of them: soon, so that their calls have freed the rest, and once more later for what
# calls let go of late (on a busy machine the ends of calls, grpc's buffers among them, come after the first).
TRIM_DELAYS = (0.25, 1.0)
# The default budget is the memory each worker may use over this: a worker holds up to about nine bytes
# of resident memory per byte of its budget while the calls start (docs/deploy.md, "Memory"), so a full
# budget then takes a little over half of it, beside an idle worker and its open streams.
SHARE = 16


def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    """glibc's malloc_trim, None under another C library."""
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None) if library is not None else None


_TRIM = _malloc_trim()


def memory_limit() -> int:
    """The bytes of memory this process may use: its cgroup's limit (v2, then v1), else the machine's RAM."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit", v2 "max"
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget(max_message_bytes: int, workers: int = 1, memory: int | None = None) -> int:
    """The budget when none is set: a sixteenth of the memory each of the ``workers`` processes sharing the
    limit may use, never less than one message."""
    return max((memory_limit() if memory is None else memory) // workers // SHARE, max_message_bytes)


class BodyBudget:
    """Bytes of request bodies held by calls, and reservations for the bodies being read."""

    def __init__(self, limit: int, max_message_bytes: int) -> None:
        self.limit = limit
        self._largest = min(max_message_bytes, limit)
        self.held = 0  # reserved bytes: bodies held, and the largest body for each body being read
        self.reading = 0  # the part of ``held`` reserved for bodies being read, which shrinks as they are
        self._freed = asyncio.Event()  # set (and replaced) when bytes are given back while calls wait
        self._waiting = 0
        self._since_trim = 0  # bytes reserved since the allocator was last trimmed
        self._trimming: asyncio.TimerHandle | None = None  # a trim to come, or under way

    def reserve_now(self, size: int) -> Reservation | None:
        """A reservation of ``size`` bytes for a body about to be read, if they fit now, else None."""
        if self.held + size > self.limit:
            return None
        self.held += size
        self.reading += size
        self._since_trim += size
        return Reservation(self, size)

    async def reserve(self, size: int | None, wait: float) -> Reservation | None:
        """A reservation for a body of ``size`` bytes (None: not known before it is read, so the largest
        a message may be), waiting at most ``wait`` seconds for room; None when there is none."""
        size = self._largest if size is None else size
        reservation = self.reserve_now(size)
        if reservation is not None or self.held - self.reading + size > self.limit or wait <= 0:
            return reservation  # fits now, or would not fit even once every read in progress is done
        self._waiting += 1
        try:
            async with asyncio.timeout(wait):
                while (reservation := self.reserve_now(size)) is None:
                    await self._freed.wait()
        except TimeoutError:
            return None
        finally:
            self._waiting -= 1
        return reservation

    def _give_back(self, size: int) -> None:
        self.held -= size
        if self._waiting:
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()  # every waiter looks again
        if self.held == 0 and self._since_trim >= TRIM_AFTER and _TRIM is not None and self._trimming is None:
            # Large bodies came and went: glibc keeps what they freed (in the middle of its heaps, where its
            # own trim threshold never reaches); malloc_trim hands whole free pages back. A moment later, when
            # the calls have let go of the rest (replies, buffers), and off the event loop.
            self._since_trim = 0
            self._trimming = asyncio.get_running_loop().call_later(TRIM_DELAYS[0], self._trim, 1)

    def _trim(self, passes: int) -> None:
        assert _TRIM is not None
        try:
            done = asyncio.get_running_loop().run_in_executor(None, _TRIM, 0)
        except RuntimeError:  # the loop's executor is shut down: the process is stopping, nothing to trim for
            self._trimming = None
            return
        done.add_done_callback(lambda _: self._trimmed(passes))

    def _trimmed(self, passes: int) -> None:
        if passes < len(TRIM_DELAYS):
            delay = TRIM_DELAYS[passes] - TRIM_DELAYS[passes - 1]
            self._trimming = asyncio.get_running_loop().call_later(delay, self._trim, passes + 1)
        else:
            self._trimming = None


class Reservation:
    """One call's share of the budget: resized once its body is read, given back when the call ends."""

    __slots__ = ("_budget", "_reading", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self._reading = True
        self.size = size

    def resize(self, size: int) -> None:
        """The body is read: hold its ``size`` bytes from now on (no more than was reserved for it)."""
        self._done_reading()
        if size < self.size:
            self._budget._give_back(self.size - size)
            self.size = size

    def release(self) -> None:
        """Give the reservation back (once; later calls do nothing)."""
        self._done_reading()
        size, self.size = self.size, 0
        if size:
            self._budget._give_back(size)

    def _done_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._budget.reading -= self.size
