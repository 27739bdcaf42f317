"""What the simulator saw of each request, for tests to inspect.

Times are `loop.time()` of the simulator's event loop. `closed_at` is when the connection that
carried the request closed, from either side (client gone, reset, `Cut`, or `Simulator.stop`);
for a keep-alive connection that is later than the end of the response.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None if absent or not JSON
    received_at: float
    closed_at: float | None = None
    events_sent: int = 0  # SSE frames written, keep-alive pings and injected frames included
    bytes_sent: int = 0  # bytes of the response handed to the socket: head, body and chunk framing
    status: int | None = None  # the HTTP status answered, None if no response head went out
    request_id: str | None = None  # the request-id header the simulator answers with
    platform: str | None = None  # anthropic, bedrock or vertex, once the path is known
    key: str | None = None  # the key the request was made with, once its credentials were read
    model: str | None = None  # the body's model (anthropic) or the path's (bedrock, vertex)
    anthropic_version: str | None = None  # the header's (anthropic) or the body's (bedrock, vertex)
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def mark_closed(self, at: float) -> None:
        if self.closed_at is None:
            self.closed_at = at
            self._closed.set()

    async def wait_closed(self, timeout: float) -> float:
        """Wait until the connection serving this request closes and return `closed_at`."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return cast(float, self.closed_at)
