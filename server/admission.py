"""Admission: whether a call may start now, what it will send upstream, and the calls in flight.

Every check here runs before anything is sent upstream, in this order: the caller's token, drain,
the concurrency limit, the request's shape. An admitted call is counted until it ends, which is
what the drain waits on and what ``cut_all`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from claude_gateway.v1 import chat_pb2 as pb

from server.config import Settings
from server.errors import Failure, GatewayError, Reason, Violation, fail
from server.usage import Usage
from server.validation import beta_violations, body_of, violations

Request = pb.StreamMessageRequest | pb.CreateMessageRequest
ANONYMOUS = "anonymous"  # the caller of a gateway that does not identify callers


class Undecodable:
    """A request that did not parse. grpc would answer UNKNOWN; admission answers INVALID_ARGUMENT."""

    def __init__(self, error: str) -> None:
        self.error = error


@dataclass(eq=False)
class Admitted:
    """A call that passed admission: what to send upstream, and by when."""

    body: dict[str, Any]
    betas: Sequence[str]
    caller: str  # who is calling, for limits, metrics and the log ("anonymous" without caller identity)
    deadline: float  # loop time
    expired: Failure  # the status when the deadline passes
    task: asyncio.Task[Any]
    cut: Failure | None = None  # set by whoever cancels the call on the gateway's side
    # The call's merged upstream usage, kept up to date while it runs (server.call): complete when the
    # ``admit`` context exits, where token quotas can charge it.
    usage: Usage = field(default_factory=Usage)


class Admission:
    """Admits calls and keeps count of those in flight."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._calls: set[Admitted] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def active(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    async def wait_idle(self) -> None:
        """Return once no call is in flight."""
        await self._idle.wait()

    def cut_all(self) -> None:
        """End every call in flight with UNAVAILABLE (SHUTTING_DOWN): the drain grace is over."""
        for call in self._calls:
            call.cut = fail(Reason.SHUTTING_DOWN, "gateway shut down before the reply was complete")
            call.task.cancel()

    @contextlib.asynccontextmanager
    async def admit(self, context: grpc.aio.ServicerContext, request: Request | Undecodable) -> AsyncIterator[Admitted]:
        """Checks the call, then yields it, counted as in flight while it runs; GatewayError if refused."""
        settings = self._settings
        if settings.auth_token and not _bearer_matches(context, settings.auth_token):
            raise GatewayError(fail(Reason.CALLER_UNAUTHENTICATED, "send metadata `authorization: Bearer <token>`"))
        if self.draining:
            raise GatewayError(fail(Reason.SHUTTING_DOWN, "gateway is shutting down"))
        if self.active >= settings.max_concurrent_streams:
            raise GatewayError(
                fail(
                    Reason.TOO_MANY_STREAMS,
                    f"gateway is at max_concurrent_streams ({settings.max_concurrent_streams})",
                    retry_after=1.0,
                )
            )
        if isinstance(request, Undecodable):
            raise GatewayError(invalid([Violation("request", f"not a valid protobuf message: {request.error}")]))
        bad = violations(request.params) + list(beta_violations(request.betas))
        body, bad = body_of(request.params) if not bad else ({}, bad)
        if bad:
            raise GatewayError(invalid(bad))
        budget = settings.max_stream_seconds
        expired = fail(Reason.MAX_STREAM_DURATION, f"the call reached max_stream_seconds ({budget:g}s)")
        remaining = context.time_remaining()
        if remaining is not None and remaining < budget:
            budget = remaining
            expired = fail(Reason.DEADLINE_EXCEEDED, "the call's deadline passed")
        task = asyncio.current_task()
        assert task is not None
        call = Admitted(
            body,
            request.betas,
            ANONYMOUS,
            asyncio.get_running_loop().time() + budget,
            expired,
            task,
        )
        self._calls.add(call)
        self._idle.clear()
        try:
            yield call
        finally:
            self._calls.discard(call)
            if not self._calls:
                self._idle.set()


def invalid(bad: list[Violation]) -> Failure:
    """INVALID_ARGUMENT naming every bad field."""
    message = "; ".join(f"{v.field}: {v.description}" for v in bad)
    return fail(Reason.INVALID_REQUEST, message, violations=tuple(bad))


def _bearer_matches(context: grpc.aio.ServicerContext, token: str) -> bool:
    """Whether the call carries ``authorization: Bearer <token>`` (compared in constant time)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return hmac.compare_digest(value[7:].encode(), token.encode())
    return False
