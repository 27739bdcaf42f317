"""A stand-in for the Claude API on loopback (the Messages API, Bedrock, Vertex), for tests, demos and benchmarks.

    async with Simulator(Pace(ttft=0.2, tokens_per_second=50)) as sim:
        client = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="any")
        sim.enqueue(Cut(after_events=5))  # the next request's stream breaks after 5 events

Replies are deterministic (see `model`); faults come from `enqueue` or from `[[sim:...]]`
directives in the prompt (grammar in `directives`), either scoped to a platform or a key;
`sim.requests` records what was asked (platform, key, model) and when each connection closed, and
`sim.count(...)` counts it. The same reply is served to `AsyncAnthropicBedrock` and
`AsyncAnthropicVertex` (paths and wire in `platforms`, `wire`, `eventstream`), with rate-limit
headers on the Messages API (`ratelimits`). `python -m simulator` runs one as a process.
"""

from .faults import Cut, EndWithoutStop, ErrorEvent, Fault, HttpError, Malformed, Replay, SpendLimit, Stall
from .pace import Pace
from .platforms import Platform
from .ratelimits import Limits
from .recording import RecordedRequest
from .server import Simulator, key_id

__all__ = [
    "Cut",
    "EndWithoutStop",
    "ErrorEvent",
    "Fault",
    "HttpError",
    "Limits",
    "Malformed",
    "Pace",
    "Platform",
    "RecordedRequest",
    "Replay",
    "Simulator",
    "SpendLimit",
    "Stall",
    "key_id",
]
