"""The life of one call, the same for both RPCs: admission, upstream reading, delivery, status, log.

Every call runs inside one time budget: the client's deadline, capped by max_stream_seconds, kept
with the first-event and idle bounds by a ``Watchdog``. Before the first event reaches the client
the gateway may retry the upstream call (``UpstreamReader.open``); after it, never. Any failure ends
the call with a status from ``server.errors``. A cancel, from the client or from the gateway itself
(watchdog, drain), unwinds through ``async with``, which closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from server.admission import Admission, Request, Undecodable
from server.config import Settings
from server.errors import Failure, GatewayError, Reason, fail, to_status
from server.events import Event
from server.reader import UpstreamReader
from server.redaction import Redactor
from server.upstream import Upstream
from server.watchdog import Watchdog

log = logging.getLogger("server.call")

REQUEST_ID_KEY = "anthropic-request-id"  # initial metadata: the upstream request id of the call

Sink = Callable[[list[Event]], Awaitable[None]]  # takes each batch of events, in order


@dataclass(frozen=True)
class Calls:
    """What every call runs with: the settings, admission, and the upstream."""

    settings: Settings
    admission: Admission
    upstream: Upstream
    redactor: Redactor = field(default_factory=lambda: Redactor(()))  # the secrets upstream text must not carry

    async def run(
        self, method: str, context: grpc.aio.ServicerContext, request: Request | Undecodable, deliver: Sink
    ) -> None:
        """Run one call: every batch of upstream events goes to ``deliver``; any failure aborts the call."""
        started = time.monotonic()
        delivered = 0
        failure: Failure | None = None
        outcome = "CANCELLED"  # unless the call ends otherwise: the client left
        request_id: str | None = None
        try:
            async with self.admission.admit(context, request) as call:
                watchdog = Watchdog(call.task, call.deadline, call.expired, self.settings)
                try:
                    async with UpstreamReader(self.settings, self.upstream, watchdog, call.deadline) as reader:
                        batch: list[Event] | None = await reader.open(call.body, call.betas)
                        request_id = self.redactor.request_id(reader.request_id)
                        if request_id:  # for Anthropic support, and to match the gateway's log line
                            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                        while batch is not None:
                            await deliver(batch)
                            delivered += len(batch)
                            batch = await reader.next()
                        outcome = "OK"
                except asyncio.CancelledError:
                    cut = watchdog.fired or call.cut
                    if cut is None:
                        raise  # the client left: unwinding closed the upstream request
                    call.task.uncancel()
                    raise GatewayError(cut) from None
                finally:
                    watchdog.close()
        except GatewayError as exc:
            failure = self.redactor.failure(exc.failure)
            outcome = f"{failure.code.name} {failure.reason}"
            request_id = request_id or failure.request_id
        except Exception as exc:  # a bug: the caller still gets a status, and the log the traceback
            log.exception("%s failed inside the gateway", method)
            failure = fail(Reason.GATEWAY_ERROR, f"gateway error: {type(exc).__name__}")
            outcome = f"{failure.code.name} {failure.reason}"
        finally:
            elapsed_ms = (time.monotonic() - started) * 1e3
            log.info("%s %s events=%d %.0fms request_id=%s", method, outcome, delivered, elapsed_ms, request_id or "-")
        if failure is not None:
            await context.abort_with_status(to_status(failure, delivered))
