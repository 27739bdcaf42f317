"""What the gateway knows of its backends and keys: cool-downs, dead keys, circuits, headroom.

``PoolState`` keeps it in this process's memory; ``server.upstream.redis_state.RedisPoolState`` keeps it
in Redis, shared by every replica (``GATEWAY_REDIS_URL``), behind the same methods. Times are
wall-clock seconds (``time.time()``), the one clock replicas share. Names:

    member id   "<backend>:<key id>"        dead until, cooling per model family, headroom per family
    circuit     "backend:<name>"            open until, and how many times in a row it opened
                "platform:<kind>:<host>"    (a backend that failed; a platform that said it is overloaded)

A circuit opens for 1 s, then 2, 4... up to 30 s each time it trips again after it closed, and
closes (its count back to 0) when the backend or platform serves a call. Tripping it while open
changes nothing: a burst of failures at one moment is one failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from server.upstream.headroom import Cost, Headroom, rate_limits

CIRCUIT_BASE = 1.0
CIRCUIT_MAX = 30.0


def circuit_seconds(level: int) -> float:
    """How long a circuit opens for the ``level``-th time in a row (from 1)."""
    return min(CIRCUIT_MAX, CIRCUIT_BASE * 2.0 ** (level - 1))


class PoolState:
    """The pool's state in this process's memory."""

    def __init__(self) -> None:
        self._dead: dict[str, float] = {}
        self._cooled: dict[tuple[str, str], float] = {}
        self._circuits: dict[str, tuple[float, int]] = {}  # circuit -> (open until, times opened in a row)
        self._headroom: dict[tuple[str, str], Headroom] = {}

    # ---- reads (every call) ----

    def dead_until(self, member: str) -> float:
        return self._dead.get(member, 0.0)

    def cooled_until(self, member: str, family: str) -> float:
        return self._cooled.get((member, family), 0.0)

    def circuit_until(self, circuit: str) -> float:
        found = self._circuits.get(circuit)
        return found[0] if found else 0.0

    def headroom(self, member: str, family: str) -> Headroom | None:
        return self._headroom.get((member, family))

    # ---- writes ----

    def kill(self, member: str, until: float) -> None:
        self._dead[member] = until

    def cool(self, member: str, family: str, until: float) -> None:
        self._cooled[(member, family)] = max(until, self._cooled.get((member, family), 0.0))

    def trip(self, circuit: str, now: float) -> float:
        """Open ``circuit`` (unless it is open); returns until when it is open."""
        until, level = self._circuits.get(circuit, (0.0, 0))
        if until > now:
            return until
        level += 1
        until = now + circuit_seconds(level)
        self._circuits[circuit] = (until, level)
        return until

    def reset(self, circuit: str) -> None:
        self._circuits.pop(circuit, None)

    def report(self, member: str, family: str, headers: Iterable[tuple[str, str]], now: float) -> None:
        """Take rate-limit headers (``headroom.rate_limits``) as the key's headroom for the family."""
        headroom = self._headroom.get((member, family))
        if headroom is None:
            headroom = Headroom()
            if not headroom.report(headers, now):
                return
            self._headroom[(member, family)] = headroom
        else:
            headroom.report(headers, now)

    def served(self, member: str, family: str, headers: Mapping[str, str], now: float) -> None:
        """Take a served response's headers as the key's headroom for the family: read when it is next needed
        (``Headroom.defer``), once the key has a headroom."""
        headroom = self._headroom.get((member, family))
        if headroom is not None:
            headroom.defer(headers, now)
        elif limits := rate_limits(headers):
            self.report(member, family, limits, now)

    def reserve(self, member: str, family: str, cost: Cost, now: float) -> None:
        headroom = self._headroom.get((member, family))
        if headroom is not None:
            headroom.reserve(cost, now)

    # ---- for the metrics ----

    def cooling(self, member: str, now: float) -> list[str]:
        """The model families ``member`` is cooling for now."""
        return sorted(family for (m, family), until in self._cooled.items() if m == member and until > now)

    def headrooms(self, member: str, now: float) -> dict[str, dict[str, float]]:
        """``member``'s headroom now, by model family and bucket."""
        return {family: h.values(now) for (m, family), h in self._headroom.items() if m == member}

    async def refresh(self, wait: float | None = None) -> None:
        """Bring what is known up to date before a call chooses, waiting at most ``wait`` seconds for it
        (memory: it always is)."""

    async def close(self) -> None:
        """Release what the state holds (memory: nothing)."""
