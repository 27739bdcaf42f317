"""CPU seconds and resident memory of a process, from /proc (Linux only).

CPU is ``utime + stime`` of /proc/PID/stat, which covers every thread of the process (grpc's own
threads included), in clock ticks of 1/SC_CLK_TCK s (10 ms on usual kernels): measure windows of
seconds, not milliseconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by ``pid``, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    after = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(after[11]), int(after[12])
    return (utime + stime) / _TICK


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
