"""How fast a simulated reply streams.

`ttft` is the wait before the first content delta (message_start, the first content_block_start
and its ping go out at once, as from the real API); `tokens_per_second` spaces the later deltas.
`ping_interval` > 0 sends keep-alive `ping` events during any such wait longer than it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    ttft: float = 0.0  # seconds before the first content token
    tokens_per_second: float = 0.0  # 0 = as fast as possible
    ping_interval: float = 0.0  # >0: also send `ping` events during any wait longer than this

    def delay(self, first: bool) -> float:
        """Seconds to wait before a content delta (the first one waits `ttft`)."""
        if first:
            return self.ttft
        return 1 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
