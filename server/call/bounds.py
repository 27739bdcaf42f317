"""``Bounds``: the few settings that bound one call's upstream reading, taken from ``Settings`` once."""

from __future__ import annotations

from dataclasses import dataclass

from server.config import Settings


@dataclass(frozen=True, slots=True)
class Bounds:
    """How long to wait for the first event and between events, how many attempts, how large an event."""

    first_event_timeout: float
    idle_timeout: float
    max_attempts: int
    max_event_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(settings.first_event_timeout, settings.idle_timeout, settings.max_attempts, settings.max_event_bytes)
