"""The life of one call, the same for both RPCs: admission, upstream reading, delivery, status, log.

Every call runs inside one time budget: the client's deadline, capped by max_stream_seconds, kept
with the first-event and idle bounds by a ``Watchdog``. Before the first event reaches the client
the gateway may retry the upstream call (``UpstreamReader.open``); after it, never. Any failure ends
the call with a status from ``server.errors``. A cancel, from the client or from the gateway itself
(watchdog, drain), unwinds through ``async with``, which closes the upstream connection. ``server.reporting.telemetry``
records the call as it goes and reports it once at its end (trailer, log line, metrics, spans).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from claude_gateway.wire import REQUEST_ID_KEY, STREAM_ID_KEY

from server.call.admission import Admission, Admitted, Body, Request, Undecodable
from server.call.bounds import Bounds
from server.call.context import CallContext, CallMetadata
from server.call.delivery import Sink
from server.call.events import Event
from server.call.reader import UpstreamReader
from server.call.route import Failover, Retry, Route
from server.call.watchdog import Watchdog
from server.config import Settings
from server.errors import Failure, GatewayError, Reason, fail, to_status
from server.limits.bodies import Reservation
from server.redaction import Redactor, model_id
from server.reporting.record import BEFORE_FIRST_EVENT, CANCELLED, OK, STREAMING, CallRecord
from server.reporting.telemetry import Telemetry
from server.upstream.client import Upstream
from server.upstream.headroom import Cost
from server.upstream.pool import Pool

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from server.reporting.tracing import Tracing

log = logging.getLogger("server.call")

CLIENT_CANCELLED = "CLIENT_CANCELLED"  # the reason of a call the client cancelled (log and metrics only)
GATEWAY_ERROR = Reason.GATEWAY_ERROR.name


@dataclass(frozen=True)
class Calls:
    """What every call runs with: the settings, admission, the upstream pool, and what reports on calls."""

    settings: Settings
    admission: Admission
    pool: Pool
    telemetry: Telemetry
    tracing: Tracing | None = None  # None when tracing is off: no span is made
    redactor: Redactor = field(default_factory=lambda: Redactor(()))  # the secrets upstream text must not carry
    bounds: Bounds = field(init=False)  # what each call's reader and watchdog take of the settings
    retry: Retry = field(init=False)  # the route of every call without a backends file

    @property
    def upstream(self) -> Upstream:
        """The upstream of the calls that generate nothing (CountTokens, ListModels: ``server.call.lookups``)."""
        return self.pool.lookup

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", Bounds.of(self.settings))
        object.__setattr__(self, "retry", Retry(self.pool.default, self.bounds))

    async def run(
        self,
        method: str,
        context: CallContext,
        request: Request | Undecodable | Body,
        deliver: Sink,
        reserved: Reservation | None = None,
        *,
        stream_id: str | None = None,
        on_admitted: Callable[[Admitted], Awaitable[None]] | None = None,
    ) -> bool:
        """Run one call: every batch of upstream events goes to ``deliver``; True if it ended OK. Whatever
        the outcome, the call is logged and counted once, and its usage and cost go to the caller in the
        trailing metadata (unless the caller left). A failure is set on ``context`` as its status (code,
        message, rich details), not raised: an exception would carry this frame, and the call's request
        with it, in a reference cycle until the next full collection.

        ``request`` may be how to read the request (``admission.Body``): it is read once the metadata
        admits the call. ``reserved`` is the body budget a port took before reading it itself. A stream's
        ``stream_id`` goes out in the initial metadata beside the upstream's request id, and in the log
        line; ``on_admitted`` hears the call once admission let it in, before anything is sent upstream
        (``server.call.resumable``)."""
        # The model is noted once admission has it (aliases resolved): a call refused on its metadata
        # names none, whichever port it came by.
        record = CallRecord(method, "")
        record.stream_id = stream_id
        if callable(request):
            request = _noting_model(request, record)
        tracing = self.tracing
        spans: list[Span] = []
        if tracing is not None:
            spans.append(tracing.call_span(record, context.invocation_metadata()))
        failure: Failure | None = None
        try:
            # Admission fills in the caller and the model id (aliases resolved), refused or not.
            async with self.admission.admit(context, request, reserved, record) as call:
                del request  # admission holds the body that goes upstream; the request itself is let go
                record.usage = call.usage  # one Usage: what admission (quotas) reads is what is reported
                if on_admitted is not None:
                    await on_admitted(call)
                watchdog = Watchdog(call.task, call.deadline, call.expired, self.bounds)
                if tracing is not None:
                    tracing.admitted(spans[0], record)
                    spans.append(tracing.upstream_span(spans[0], record, call.body["max_tokens"]))
                route: Route = self.retry
                if self.pool.managed:
                    cost = Cost(call.estimate, call.body["max_tokens"])
                    route = Failover(self.pool, self.bounds, call.body["model"], call.caller, cost, call.deadline)
                try:
                    async with UpstreamReader(self.bounds, route, watchdog, call.deadline, self.redactor) as reader:
                        try:
                            batch: list[Event] | None = await reader.open(call.body, call.betas, call.version)
                        finally:
                            record.attempts, record.retried = reader.attempts, reader.retried
                            if isinstance(route, Failover):
                                record.pool(**route.report())
                        call.body = {}  # sent: not held while the reply streams (nothing is retried from here)
                        record.request_id = self.redactor.request_id(reader.request_id)
                        if record.request_id:  # for Anthropic support, and to match the gateway's log line
                            if stream_id is None:
                                await context.send_initial_metadata(((REQUEST_ID_KEY, record.request_id),))
                            else:
                                await context.send_initial_metadata(
                                    ((REQUEST_ID_KEY, record.request_id), (STREAM_ID_KEY, stream_id))
                                )
                        elif stream_id is not None:
                            await context.send_initial_metadata(((STREAM_ID_KEY, stream_id),))
                        while batch is not None:
                            record.see(batch)
                            await deliver(batch)
                            record.events += len(batch)
                            batch = None  # not held while the next read waits (memory per open stream)
                            batch = await reader.next()
                        record.status = OK
                except asyncio.CancelledError:
                    cut = watchdog.fired or call.cut
                    if cut is None:
                        raise  # the client left: unwinding closed the upstream request
                    call.task.uncancel()
                    raise GatewayError(cut) from None
                finally:
                    record.bytes_read = reader.bytes_read
                    watchdog.close()
        except GatewayError as exc:
            failure = self.redactor.failure(exc.failure)
            _failed(record, failure)
        except Exception as exc:  # a bug: the caller still gets a status, and the log the traceback
            log.exception("%s failed inside the gateway", method)
            failure = fail(Reason.GATEWAY_ERROR, f"gateway error: {type(exc).__name__}")
            record.status, record.reason = failure.code.name, failure.reason
            record.error_type = GATEWAY_ERROR
        finally:
            if record.status == CANCELLED and failure is None:  # the client cancelled, or its deadline passed
                record.reason, record.error_type = CLIENT_CANCELLED, "cancelled"
                record.cancelled_phase = STREAMING if record.events else BEFORE_FIRST_EVENT
            self.telemetry.finish(record)
            if tracing is not None:
                for span in reversed(spans):
                    tracing.end(span, record)
        trailer = self.telemetry.trailer(record)
        if failure is None:
            context.set_trailing_metadata(trailer)
            return True
        status = to_status(failure, record.events)
        context.set_code(status.code)
        context.set_details(status.details)
        context.set_trailing_metadata((*status.trailing_metadata, *trailer))
        return False

    def refuse(self, method: str, context: CallMetadata, failure: Failure) -> grpc.Status:
        """A call refused on its metadata before its body was read (the HTTP port's headers): logged and
        counted as any call; its status, with the usage trailer, for the port to answer with."""
        record = CallRecord(method, "")
        with contextlib.suppress(GatewayError):  # the caller, when the refusal is not of who it is
            record.caller = self.admission.identity.caller(context)
        tracing = self.tracing
        span = None if tracing is None else tracing.call_span(record, context.invocation_metadata())
        _failed(record, failure)
        self.telemetry.finish(record)
        if tracing is not None and span is not None:
            tracing.end(span, record)
        status = to_status(failure, 0)
        return status._replace(trailing_metadata=(*status.trailing_metadata, *self.telemetry.trailer(record)))


def _failed(record: CallRecord, failure: Failure) -> None:
    """Note in ``record`` that the call ended with ``failure``."""
    record.status, record.reason = failure.code.name, failure.reason
    record.error_type = failure.error_type or failure.reason
    if failure.error_type or failure.reason.startswith("UPSTREAM_"):
        record.upstream_error = failure.error_type or failure.reason
    record.request_id = record.request_id or failure.request_id
    record.cause, record.upstream_host = failure.cause, failure.host


def _noting_model(read: Body, record: CallRecord) -> Body:
    """``read``, noting the model the request names in ``record`` (for the log line of a call refused after)."""

    async def reading() -> tuple[Request | Undecodable, int]:
        request, size = await read()
        if not isinstance(request, Undecodable):
            record.model = model_id(request.params.model) or ""  # a name checks will refuse is not repeated
        return request, size

    return reading
