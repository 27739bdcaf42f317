"""What the gateway tells about each call: its usage and cost trailer, its log line, metrics and spans.

``CallRecord`` gathers one call's facts as it runs: its usage (``server.reporting.usage``), time to the first
content delta, events, retries, outcome. Its ``see(batch)`` is the only per-batch work; everything
else happens once, when the call ends, in ``Telemetry.finish``:

- the trailer ``claude-gateway-usage`` (``USAGE_KEY``): JSON ``{"model", "usage", "cost_usd", "partial"}``,
  where ``usage`` is the merged usage object in the API's shape, ``cost_usd`` is null when the
  model has no price, and ``partial`` is true when the call did not end OK;
- one JSON log line (logger ``server.call``) with the call's caller, model, method, status and
  reason, upstream request id, TTFT, duration, events, usage and cost: never prompt or completion
  text, never a credential;
- the Prometheus metrics (``server.reporting.metrics``), when they are on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from claude_gateway.wire import USAGE_KEY

from server.reporting.logs import Fields
from server.reporting.metrics import Metrics
from server.reporting.prices import Prices, call_cost
from server.reporting.record import CallRecord

log = logging.getLogger("server.call")

_JSON = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call


class Telemetry:
    """Ends each call's record: cost, trailer, log line, metrics."""

    def __init__(
        self, prices: Prices, metrics: Metrics | None, backend_prices: Mapping[str, Prices] | None = None
    ) -> None:
        self.prices = prices
        self.metrics = metrics
        self.backend_prices = backend_prices or {}  # a backends file's own price tables, by backend

    def finish(self, call: CallRecord) -> None:
        """Price the call, log it and count it (once, at its end)."""
        call.ended = time.monotonic()
        # A priced model with no usage yet (refused, failed before message_start) cost nothing; an
        # unpriced model's cost is unknown (None), whatever its tokens.
        # By the model that served (message_start's), which may not be the one asked for: on the serving
        # backend's own prices where the backends file gives them; an unpriced platform id as the model asked for.
        call.cost = call_cost(
            self.prices, call.usage, call.served_by, call.model, self.backend_prices.get(call.backend or "")
        )
        log.info("%s", Fields(call.log_line()))  # JSON in either format; its fields at the top level in json
        if self.metrics is not None:
            self.metrics.record(call)

    @staticmethod
    def trailer(call: CallRecord) -> tuple[tuple[str, str], ...]:
        """The trailing metadata that reports the call's usage and cost to the caller."""
        return ((USAGE_KEY, _JSON.encode(call.summary())),)
