"""Admission: whether a call may start now, what it will send upstream, and the calls in flight.

Every check here runs before anything is sent upstream, in this order: who the caller is
(``server.limits.identity``: UNAUTHENTICATED), drain, whether the policy lets the caller in
(``server.limits.policy``: PERMISSION_DENIED), the gateway's concurrency limit, the request's shape, the
model (aliases, the default, the caller's allowlist) and the caller's ``max_tokens`` cap, and last
the caller's quotas (``server.limits.quota``: RESOURCE_EXHAUSTED), which count the call only once every
other check has passed. An admitted call is counted until it ends, which is what the drain waits on
and what ``cut_all`` ends; its end gives back its quota lease with the tokens it used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from claude_gateway.v1 import chat_pb2 as pb

from server.call.context import CallContext
from server.call.validation import beta_violations, body_of, violations
from server.config import Settings
from server.errors import Failure, GatewayError, QuotaViolation, Reason, Violation, fail
from server.limits.identity import Identity
from server.limits.policy import OPEN, Policy
from server.limits.quota import Lease, MemoryQuotas, Quotas, estimate_tokens
from server.reporting.usage import Usage

Request = pb.StreamMessageRequest | pb.CreateMessageRequest


_DEADLINE_PASSED = fail(Reason.DEADLINE_EXCEEDED, "the call's deadline passed")


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
    # The call's merged upstream usage, kept up to date while it runs (server.call.runner): complete when the
    # ``admit`` context exits, where token quotas charge it.
    usage: Usage = field(default_factory=Usage)
    lease: Lease | None = None  # the call's claim on its caller's quotas, if the caller has limits


class Admission:
    """Admits calls and keeps count of those in flight."""

    def __init__(
        self,
        settings: Settings,
        identity: Identity | None = None,
        policy: Policy = OPEN,
        quotas: Quotas | None = None,
    ) -> None:
        self._settings = settings
        self.identity = identity or Identity(settings)
        self.policy = policy
        self.quotas: Quotas = quotas or MemoryQuotas()
        self._calls: set[Admitted] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self._too_long = fail(  # one for every call: a Failure is immutable
            Reason.MAX_STREAM_DURATION, f"the call reached max_stream_seconds ({settings.max_stream_seconds:g}s)"
        )

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
    async def admit(self, context: CallContext, request: Request | Undecodable) -> AsyncIterator[Admitted]:
        """Checks the call, then yields it, counted as in flight while it runs; GatewayError if refused."""
        settings = self._settings
        caller = self.identity.caller(context)
        if self.draining:
            raise GatewayError(fail(Reason.SHUTTING_DOWN, "gateway is shutting down"))
        rules = self.policy.rules(caller)
        if rules is None:
            raise GatewayError(
                fail(Reason.CALLER_NOT_ALLOWED, f"the gateway's policy does not admit caller {caller!r}")
            )
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
        params = request.params
        if not params.model and self.policy.default_model:
            params.model = self.policy.default_model
        bad = violations(params) + list(beta_violations(request.betas))
        body, bad = body_of(params) if not bad else ({}, bad)
        if bad:
            raise GatewayError(invalid(bad))
        # The policy judges the body that goes upstream, as built (``extra`` merged in), not the fields.
        model = self.policy.model(body["model"])
        if rules.models is not None and model not in rules.models:
            allowed = ", ".join(sorted(rules.models)) or "none"
            raise GatewayError(
                fail(Reason.MODEL_NOT_ALLOWED, f"model {model!r} is not allowed for {caller!r} (allowed: {allowed})")
            )
        max_tokens = body["max_tokens"]
        if rules.max_tokens is not None and max_tokens > rules.max_tokens:
            cap = QuotaViolation(
                caller, "max_tokens", rules.max_tokens, f"max_tokens: at most {rules.max_tokens} a request"
            )
            raise GatewayError(
                fail(
                    Reason.MAX_TOKENS_OVER_LIMIT,
                    f"max_tokens {max_tokens} is over the caller's cap of {rules.max_tokens}",
                    quota_violations=(cap,),
                )
            )
        budget, expired = settings.max_stream_seconds, self._too_long
        remaining = context.time_remaining()
        if remaining is not None and remaining < budget:
            budget, expired = remaining, _DEADLINE_PASSED
        task = asyncio.current_task()
        assert task is not None
        limits = rules.limits
        estimate = estimate_tokens(params.ByteSize()) if limits.tokens_per_minute else 0
        body["model"] = model
        call = Admitted(body, request.betas, caller, asyncio.get_running_loop().time() + budget, expired, task)
        self._calls.add(call)  # counted before the quota store's round trip, so the gateway's own limit holds
        self._idle.clear()
        try:
            call.lease = await self.quotas.acquire(caller, limits, estimate)  # last: it counts the call
            yield call
        finally:
            self._calls.discard(call)
            if not self._calls:
                self._idle.set()
            if call.lease is not None:
                self.quotas.release(call.lease, charged(call.usage))


def charged(usage: Usage) -> int:
    """The tokens a call's token quota is charged: input, cache writes and output (cache reads are not
    counted, as the API's own input-tokens-per-minute limits do not count them); 0 if no usage came."""
    return usage.input_tokens + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens + usage.output_tokens


def invalid(bad: list[Violation]) -> Failure:
    """INVALID_ARGUMENT naming every bad field."""
    message = "; ".join(f"{v.field}: {v.description}" for v in bad)
    return fail(Reason.INVALID_REQUEST, message, violations=tuple(bad))
