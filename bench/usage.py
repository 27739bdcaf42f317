"""CPU seconds and resident memory of a process (Linux only).

CPU is the process's CPU-time clock (what ``clock_getcpuclockid`` gives for a pid), read with
``clock_gettime``: the scheduler's run time of every thread of the process, those that have ended
and grpc's own included, in nanoseconds. /proc/PID/stat's ``utime + stime`` gives about the same
time in clock ticks (10 ms), which made the difference of two runs of a fraction of a second
uncertain by several percent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Self

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_clock(pid: int) -> int:
    """The clock id of ``pid``'s CPU time, all threads: the kernel's ``MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)``, which glibc's ``clock_getcpuclockid`` returns and Python does not wrap."""
    return ((~pid) << 3) | 2


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid``, all threads (OSError once it has gone)."""
    return time.clock_gettime(process_clock(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent in user and system mode since boot (/proc/stat).

    Interrupt and softirq time is left out: much of it is this benchmark's own loopback traffic,
    which the kernel does not charge to any process.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, steal = int(fields[1]), int(fields[2]), int(fields[3]), int(fields[8])
    return (user + nice + system + steal) / _TICK


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (e.g. a supervisor's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@dataclass
class CpuMeter:
    """CPU seconds of a set of processes between ``start`` and ``stop``."""

    pids: dict[str, int]
    _start: dict[str, float] | None = None
    _start_wall: float = 0.0

    def start(self, wall: float) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start_wall = wall

    def stop(self, wall: float) -> dict[str, dict[str, float]]:
        """Per process: ``cpu_s`` used since ``start`` and ``util``, that over the wall time (1.0 = a core)."""
        assert self._start is not None, "start() first"
        span = max(wall - self._start_wall, 1e-9)
        out = {}
        for name, pid in self.pids.items():
            used = cpu_seconds(pid) - self._start[name]
            out[name] = {"cpu_s": used, "util": used / span}
        return out


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds while its ``async with`` block runs, and once at the end."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()


class CpuSampler(Sampler):
    """Samples one process's CPU seconds every ``interval`` while running, for its peak utilisation.

    Use as ``async with CpuSampler(pid) as sampler: ...``; afterwards ``peak(window)`` is the highest
    CPU use over any ``window`` seconds of the run, as a fraction of one core.
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(interval)
        self._pid = pid
        self._samples: list[tuple[float, float]] = []

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self._samples.append((asyncio.get_running_loop().time(), cpu_seconds(self._pid)))

    def peak(self, window: float = 1.0) -> float:
        """The highest utilisation over any span of at least ``window`` seconds (NaN if the run was shorter)."""
        best = math.nan
        j = 0
        for i, (t, cpu) in enumerate(self._samples):
            while j < i and t - self._samples[j + 1][0] >= window:
                j += 1
            t0, cpu0 = self._samples[j]
            if t - t0 >= window:
                util = (cpu - cpu0) / (t - t0)
                best = util if math.isnan(best) else max(best, util)
        return best
