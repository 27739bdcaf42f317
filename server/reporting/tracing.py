"""OpenTelemetry tracing, when an OTLP endpoint is configured (``GATEWAY_OTLP_ENDPOINT`` or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``); off otherwise, and then this module is never imported.

Each call gets a SERVER span continuing the caller's W3C ``traceparent`` (gRPC metadata) and a CLIENT
child span for the upstream Messages API request, both named ``chat {model}`` with the GenAI
semantic conventions' attributes (``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.id``, ``gen_ai.usage.*``...). Spans carry no prompt or
completion text and no credential. They leave in batches from the SDK's exporter thread over OTLP/gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from claude_gateway.wire import SERVICE
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.reporting.metrics import OPERATION, PROVIDER
from server.reporting.record import OK, CallRecord

SERVICE_NAME = "claude-grpc-gateway"
RPC_SERVICE = SERVICE


class Tracing:
    """Makes the spans of each call and exports them to ``endpoint`` ("" = the exporter's OTEL_* env)."""

    def __init__(self, endpoint: str) -> None:
        self._provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("server.reporting.tracing")
        self._propagator = TraceContextTextMapPropagator()

    def call_span(self, call: CallRecord, metadata: Sequence[tuple[str, Any]] | None) -> Span:
        """The call's SERVER span, a child of the caller's ``traceparent`` when it sent one."""
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        parent = self._propagator.extract(carrier)
        return self._tracer.start_span(
            f"chat {call.model}".rstrip(),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": RPC_SERVICE,
                "rpc.method": call.method,
                **_request(call),
            },
        )

    @staticmethod
    def admitted(span: Span, call: CallRecord) -> None:
        """Name the call's SERVER span by its model, known once its request is read and admitted."""
        span.update_name(f"chat {call.model}".rstrip())
        span.set_attributes(_request(call))

    def upstream_span(self, parent: Span, call: CallRecord, max_tokens: int | None) -> Span:
        """The CLIENT span of the upstream Messages API request, a child of the call's span."""
        attributes: dict[str, Any] = _request(call)
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        return self._tracer.start_span(
            f"chat {call.model}".rstrip(),
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )

    @staticmethod
    def end(span: Span, call: CallRecord) -> None:
        """Set what the call came to, and end the span."""
        usage = call.usage
        attributes: dict[str, Any] = {"rpc.grpc.status_code": call.status, "gateway.caller": call.caller}
        if call.response_id:
            attributes["gen_ai.response.id"] = call.response_id
        if call.response_model:
            attributes["gen_ai.response.model"] = call.response_model
        if call.stop_reason:
            attributes["gen_ai.response.finish_reasons"] = (call.stop_reason,)
        if call.request_id:
            attributes["anthropic.request_id"] = call.request_id
        if call.backend is not None:  # a backends file: who served (or failed last), and on what platform
            attributes["gen_ai.provider.name"] = call.provider
            attributes["gateway.backend"] = call.backend
            attributes["gateway.key_id"] = call.key_id or "-"
            attributes["gateway.failovers"] = len(call.failovers or ())
        if usage.seen:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
            attributes["gen_ai.usage.cache_creation.input_tokens"] = (
                usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
            )
            if usage.thinking_tokens is not None:
                attributes["gen_ai.usage.reasoning.output_tokens"] = usage.thinking_tokens
        if call.cost is not None:
            attributes["gateway.cost_usd"] = call.cost
        if call.ttft is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = call.ttft
        if call.status != OK:
            attributes["error.type"] = call.error_type or call.status
            span.set_status(Status(StatusCode.ERROR, call.reason or call.status))
        span.set_attributes(attributes)
        span.end()

    def flush(self) -> None:
        """Export every ended span now (blocks; call from a thread)."""
        self._provider.force_flush()

    def shutdown(self) -> None:
        """Export what is left and stop the exporter."""
        self._provider.shutdown()


def _request(call: CallRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.operation.name": OPERATION, "gen_ai.provider.name": PROVIDER}
    if call.model:
        attributes["gen_ai.request.model"] = call.model
    return attributes
