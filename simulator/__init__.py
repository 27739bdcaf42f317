"""A stand-in for the Claude Messages API on loopback, for tests, demos and benchmarks.

    async with Simulator(Pace(ttft=0.2, tokens_per_second=50)) as sim:
        client = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="any")
        sim.enqueue(Cut(after_events=5))  # the next request's stream breaks after 5 events

Replies are deterministic (see `model`); faults come from `enqueue` or from `[[sim:...]]`
directives in the prompt (grammar in `directives`); `sim.requests` records what was asked and
when each connection closed. `python -m simulator` runs one as a process.
"""

from .faults import Cut, EndWithoutStop, ErrorEvent, Fault, HttpError, Malformed, Replay, Stall
from .pace import Pace
from .recording import RecordedRequest
from .server import Simulator

__all__ = [
    "Cut",
    "EndWithoutStop",
    "ErrorEvent",
    "Fault",
    "HttpError",
    "Malformed",
    "Pace",
    "RecordedRequest",
    "Replay",
    "Simulator",
    "Stall",
]
