"""The time bounds of one call: first event, upstream silence, and the call's deadline.

One ``Watchdog`` per call cancels the call's task when a bound passes, and ``fired`` names the
bound; the call turns that cancel into its status. A per-read timeout scope would cost a timer per
event; the watchdog keeps one timer per quiet period, re-armed lazily.
"""

from __future__ import annotations

import asyncio
from typing import Any

from server.call.bounds import Bounds
from server.errors import Failure, Reason, fail


class Watchdog:
    """Cancels ``task`` when the upstream stays silent too long while being read, or at ``deadline``.

    Silence is counted from the start of the call until the first event (connect, retries and all),
    then from the start of each read: time spent writing to a slow client is not upstream silence.
    """

    def __init__(self, task: asyncio.Task[Any], deadline: float, expired: Failure, bounds: Bounds) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._deadline = deadline
        self._expired = expired
        self._bounds = bounds
        self._limit = bounds.first_event_timeout
        self._first = True
        self.last = self._loop.time()
        self.reading = True  # waiting on the upstream (connect, headers, body), as opposed to writing
        self.fired: Failure | None = None
        self._handle = self._loop.call_at(self._due(), self._check)

    def waiting(self) -> None:
        """A read from the upstream begins."""
        self.reading = True
        if not self._first:
            self.last = self._loop.time()

    def _due(self) -> float:
        return min(self.last + self._limit, self._deadline)

    def first_event_seen(self) -> None:
        """From now on the idle bound applies."""
        self._first = False
        self._limit = self._bounds.idle_timeout
        self.last = self._loop.time()
        self._handle.cancel()
        self._handle = self._loop.call_at(self._due(), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self.fired = self._expired
        elif self.reading and now >= self.last + self._limit:
            self.fired = self._silence()
        else:
            # Not due yet, or writing to the client (the next read restarts the count): look again later.
            due = self._due() if self.reading else now + self._limit
            self._handle = self._loop.call_at(min(due, self._deadline), self._check)
            return
        self._task.cancel()

    def _silence(self) -> Failure:
        if self._first:
            return fail(
                Reason.FIRST_EVENT_TIMEOUT,
                f"no upstream event within first_event_timeout ({self._bounds.first_event_timeout:g}s)",
            )
        return fail(Reason.UPSTREAM_IDLE_TIMEOUT, f"upstream silent for idle_timeout ({self._bounds.idle_timeout:g}s)")

    def close(self) -> None:
        self._handle.cancel()
