"""Prometheus metrics, served on their own HTTP port (``GATEWAY_METRICS_LISTEN``; off when unset).

Names follow the OpenTelemetry GenAI semantic conventions where one exists, converted the way
OpenTelemetry's Prometheus exporter converts them (dots to underscores, the unit ``s`` as
``_seconds``, ``{token}`` dropped), with the conventions' recommended bucket boundaries; the
gateway's own metrics are prefixed ``gateway_``. Every value is recorded once per call, at its end
(``record``), except ``gateway_active_streams``, which is read from admission at scrape time:
nothing here runs per event.

Labels stay bounded: ``caller`` keeps the first ``max_callers`` distinct callers and files the rest
under ``other``; ``model`` keeps the priced models and a few dozen others, then ``other``; a failure's
``reason``, ``error_type`` and ``type`` are the gateway's own reasons, the API's known error types
(``known_errors``) and their HTTP statuses, or ``other`` (the upstream's own word stays in the log line
and in ErrorInfo).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.reasons import Reason

if TYPE_CHECKING:
    from server.reporting.record import CallRecord

OTHER = "other"
OPERATION = "chat"  # gen_ai.operation.name of a Messages API call
PROVIDER = "anthropic"  # gen_ai.provider.name
EXTRA_MODELS = 32  # distinct unpriced model names kept as labels before "other"

# The semantic conventions' recommended ExplicitBucketBoundaries.
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

ALWAYS_OBSERVED = frozenset({"input", "output"})
GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model")
POOL = ("backend", "key_id")  # a backends file's member: the backend's name and the key's short id


# Besides the gateway's reasons and the API's error types: how a cancelled call and a failure named by its
# HTTP status alone (an error body without a known type) are reported.
_OWN_WORDS = ("", "CLIENT_CANCELLED", "cancelled")
_HTTP_STATUS = re.compile(r"(?:HTTP|http)_[1-5][0-9][0-9]")


class Reasons:
    """The failure label: one of a known, bounded set of values, else ``other``."""

    def __init__(self, known_errors: Iterable[str]) -> None:
        types = frozenset(known_errors)
        self._known = frozenset(r.name for r in Reason) | types | {t.upper() for t in types} | frozenset(_OWN_WORDS)

    def __call__(self, value: str) -> str:
        return value if value in self._known or _HTTP_STATUS.fullmatch(value) else OTHER


class LabelCap:
    """A bounded label: the first ``limit`` distinct values (besides ``always``) as they are, then ``other``."""

    def __init__(self, limit: int, always: frozenset[str] = frozenset()) -> None:
        self._limit = limit
        self._always = always
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._always or value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER


@dataclass
class Endpoint:
    """The metrics HTTP server: its port, and how to stop it."""

    port: int
    stop: Callable[[], None]


class Metrics:
    """The gateway's instruments, in a registry of its own (one per built gateway)."""

    def __init__(
        self,
        max_callers: int,
        priced_models: frozenset[str],
        active: Callable[[], int],
        known_errors: Iterable[str] = (),
        pool: Callable[[], dict[str, list[dict[str, Any]]]] | None = None,
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self._children: dict[tuple[Any, ...], Any] = {}
        self.caller = LabelCap(max_callers)
        self.reason = Reasons(known_errors)
        self.model = LabelCap(EXTRA_MODELS, priced_models)
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per call (gen_ai.client.token.usage), by token type",
            [*GENAI, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Seconds from arrival to the first content delta from upstream (gen_ai.server.time_to_first_token)",
            GENAI,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Seconds per output token after the first, for calls that completed (gen_ai.server.time_per_output_token)",
            GENAI,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Seconds from the call's arrival to its end, whatever the outcome (gen_ai.server.request.duration)",
            [*GENAI, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.active = Gauge("gateway_active_streams", "Calls in flight", registry=registry)
        self.quota_store = Gauge(
            "gateway_quota_store_up",
            "1 while the Redis quota store answers, 0 while it cannot be reached (0 as well without Redis)",
            registry=registry,
        )
        self.active.set_function(lambda: float(active()))
        self.calls = Counter(
            "gateway_calls",
            "Calls by RPC, model, caller, final gRPC status and reason (OK, CANCELLED, or the ErrorInfo reason)",
            ["method", "model", "caller", "status", "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "gateway_retries", "Upstream attempts retried, by the failure retried", ["reason"], registry=registry
        )
        self.cancellations = Counter(
            "gateway_cancellations",
            "Calls the client cancelled, by phase: before_first_event or streaming",
            ["method", "phase"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures (retried or final), by API error type or gateway reason",
            ["type"],
            registry=registry,
        )
        self.resumes = Counter(
            "gateway_resumes",
            "ResumeStream calls by how they began: OK, or the reason they were refused (STREAM_EXPIRED...)",
            ["outcome"],
            registry=registry,
        )
        self.unresumable = Counter(
            "gateway_streams_unresumable",
            "Resumable streams whose events could not all be stored (Redis failed mid-stream): they went on, "
            "but cannot be resumed",
            registry=registry,
        )
        self.events = Counter("gateway_relayed_events", "Events relayed to callers", ["method"], registry=registry)
        self.bytes = Counter("gateway_upstream_bytes", "Bytes of upstream event stream read", registry=registry)
        self.caller_tokens = Counter(
            "gateway_tokens",
            "Tokens by the model that served, caller and type",
            ["model", "caller", "type"],
            registry=registry,
        )
        self.cost = Counter(
            "gateway_cost_usd", "USD spent by the model that served and caller", ["model", "caller"], registry=registry
        )
        self.unpriced = Counter(
            "gateway_unpriced_calls",
            "Calls whose serving model has no price: tokens counted, cost unknown",
            ["model"],
            registry=registry,
        )
        # A backends file's pool (GATEWAY_BACKENDS_FILE): nothing is counted here without one.
        self.attempts = Counter(
            "gateway_upstream_attempts",
            "Upstream attempts by backend, key id and outcome: served, or the verdict of a failed one",
            [*POOL, "outcome"],
            registry=registry,
        )
        self.failovers = Counter(
            "gateway_failovers",
            "Attempts after which a call moved to another key or backend, by the verdict on the failed one",
            [*POOL, "reason"],
            registry=registry,
        )
        self.cooldowns = Counter(
            "gateway_key_cooldowns", "Keys cooled by a 429, by backend and key id", POOL, registry=registry
        )
        self.dead = Counter(
            "gateway_keys_marked_dead",
            "Keys found dead (spend_limit or unauthorized): the alert, by backend, key id and reason",
            [*POOL, "reason"],
            registry=registry,
        )
        if pool is not None:
            registry.register(_PoolCollector(pool))

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (prometheus-client's lookup costs a few us)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, call: CallRecord) -> None:
        """Count one finished call."""
        child = self._child
        model = self.model(call.model or "unknown")
        served = self.model(call.served_by or "unknown")
        # gen_ai_response_model is empty until the upstream said which model serves (refused, failed before it);
        # gen_ai_provider_name is the platform that served (with a backends file: anthropic, aws.bedrock...).
        genai = (OPERATION, call.provider, model, served if call.response_model else "")
        caller = self.caller(call.caller)
        reason = self.reason
        child(self.calls, call.method, model, caller, call.status, reason(call.reason)).inc()
        child(self.duration, *genai, reason(call.error_type or "")).observe(call.duration)
        if call.events:
            child(self.events, call.method).inc(call.events)
        if call.bytes_read:
            self.bytes.inc(call.bytes_read)
        for retried in call.retried:
            child(self.retries, reason(retried)).inc()
            child(self.upstream_errors, reason(retried)).inc()
        if call.upstream_error:
            child(self.upstream_errors, reason(call.upstream_error)).inc()
        if call.cancelled_phase:
            child(self.cancellations, call.method, call.cancelled_phase).inc()
        if call.ttft is not None:
            child(self.ttft, *genai).observe(call.ttft)
            tpot = call.time_per_output_token
            if tpot is not None:
                child(self.tpot, *genai).observe(tpot)
        if call.usage.seen:
            for kind, count in call.usage.tokens().items():
                # Input and output for every call that reported usage, as the conventions say; the cache
                # kinds only when used, so their histograms describe the calls that use the cache.
                if count or kind in ALWAYS_OBSERVED:
                    child(self.tokens, *genai, kind).observe(count)
                if count:
                    child(self.caller_tokens, served, caller, kind).inc(count)
            if call.cost is None:
                child(self.unpriced, served).inc()
            else:
                child(self.cost, served, caller).inc(call.cost)

        if call.failovers is not None:
            for attempt in call.failovers:
                child(self.attempts, attempt["backend"], attempt["key_id"], attempt["reason"]).inc()
                child(self.failovers, attempt["backend"], attempt["key_id"], attempt["reason"]).inc()
            if call.final is not None:
                child(self.attempts, call.final["backend"], call.final["key_id"], call.final["reason"]).inc()
            elif call.backend is not None and call.key_id is not None:
                child(self.attempts, call.backend, call.key_id, "served").inc()

    def pool_event(self, event: str, backend: str, key_id: str, reason: str) -> None:
        """Count a key's change of state: ``cooled`` (a 429) or ``dead`` (spend limit, credentials)."""
        if event == "cooled":
            self._child(self.cooldowns, backend, key_id).inc()
        else:
            self._child(self.dead, backend, key_id, reason).inc()

    def serve(self, listen: str) -> Endpoint:
        """Serve /metrics on ``listen`` (host:port; port 0 picks one) from a thread of its own."""
        host, _, port = listen.rpartition(":")
        server, thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return Endpoint(server.server_address[1], stop)


class _PoolCollector(Collector):
    """The pool's state, read at scrape time: dead and cooling keys, headroom, open circuits, TTFT p50."""

    def __init__(self, snapshot: Callable[[], dict[str, list[dict[str, Any]]]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Any:
        state = self._snapshot()
        dead = GaugeMetricFamily(
            "gateway_key_dead", "1 while a key is dead (not tried until probed again)", labels=POOL
        )
        cooling = GaugeMetricFamily(
            "gateway_key_cooling", "1 while a key is cooling for some model family", labels=POOL
        )
        headroom = GaugeMetricFamily(
            "gateway_key_headroom",
            "A key's headroom now under its rate limits, by model family and bucket (as its headers last said)",
            labels=[*POOL, "family", "bucket"],
        )
        for member in state.get("members", []):
            labels = [member["backend"], member["key_id"]]
            dead.add_metric(labels, float(member["dead"]))
            cooling.add_metric(labels, float(bool(member["cooling"])))
            for family, buckets in member["headroom"].items():
                for bucket, room in buckets.items():
                    headroom.add_metric([*labels, family, bucket], room)
        circuit = GaugeMetricFamily(
            "gateway_backend_circuit_open",
            "1 while a backend (or its platform) is backed off after failing or saying it is overloaded",
            labels=["backend"],
        )
        ttft = GaugeMetricFamily(
            "gateway_backend_ttft_p50_seconds",
            "Median of a backend's recent times to first token (absent until it has a few)",
            labels=["backend"],
        )
        for backend in state.get("backends", []):
            circuit.add_metric([backend["backend"]], float(backend["open"]))
            if backend["ttft_p50"] is not None:
                ttft.add_metric([backend["backend"]], backend["ttft_p50"])
        yield from (dead, cooling, headroom, circuit, ttft)
