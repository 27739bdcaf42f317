"""Admission: whether a call may start now, what it will send upstream, and the calls in flight.

Every check here runs before anything is sent upstream, in two steps. On the call's metadata alone,
before its body is read (``entry``): who the caller is (``server.limits.identity``: UNAUTHENTICATED),
drain, whether the policy lets the caller in (``server.limits.policy``: PERMISSION_DENIED), the
gateway's concurrency limit, and room in the body budget (``server.limits.bodies``:
RESOURCE_EXHAUSTED); a call refused there never costs its body. Then, on the body read: the
request's shape, the model (aliases, the default, the caller's allowlist) and the caller's
``max_tokens`` cap, judged on the body as it goes upstream, and last the caller's quotas
(``server.limits.quota``: RESOURCE_EXHAUSTED), which count the call only once every other check has
passed. A call is counted from its entry until it ends, which is what the drain waits on and what
``cut_all`` ends; its end gives back its quota lease with the tokens it used, and its share of the
body budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from claude_gateway.v1 import chat_pb2 as pb
from google.protobuf.message import Message

from server.call.context import CallContext, CallMetadata
from server.call.validation import beta_violations, body_of, version_violations, violations
from server.config import Settings
from server.errors import Failure, GatewayError, QuotaViolation, Reason, Violation, fail
from server.limits.bodies import WAIT_SECONDS, BodyBudget, Reservation, default_budget
from server.limits.identity import Identity
from server.limits.policy import MICRO, OPEN, Limits, Policy, Rules
from server.limits.quota import Lease, MemoryQuotas, Quotas, estimate_tokens
from server.redaction import model_id
from server.reporting.prices import Prices, PriceTable, call_cost
from server.reporting.record import CallRecord
from server.reporting.usage import Usage

Request = pb.StreamMessageRequest | pb.CreateMessageRequest


_DEADLINE_PASSED = fail(Reason.DEADLINE_EXCEEDED, "the call's deadline passed")


class Undecodable:
    """A request that did not parse. grpc would answer UNKNOWN; admission answers INVALID_ARGUMENT
    naming ``field`` (the whole request unless the port knows better) and saying ``what`` it is not."""

    def __init__(self, error: str, field: str = "request", what: str = "not a valid protobuf message") -> None:
        self.error = error
        self.field = field
        self.what = what


Body = Callable[[], Awaitable[tuple["Request | Undecodable", int]]]
"""How a port reads a call's request once its metadata is admitted: the request (or why it does not
parse) and its size in bytes."""


class Pending:
    """A request a port decoded before admission (the HTTP port's protocols): a ``Body`` taken once, after
    which it is no longer held here. The port's frames hold this object while the call runs, and an error
    raised through them keeps them alive in a reference cycle until the next full collection: the request
    itself must not be in them."""

    __slots__ = ("_request", "_size")

    def __init__(self, request: Message | Undecodable, size: int) -> None:
        self._request: Message | Undecodable | None = request
        self._size = size

    async def __call__(self) -> tuple[Any, int]:
        request, self._request = self._request, None
        assert request is not None, "a request is taken once"
        return request, self._size

    @property
    def betas(self) -> tuple[str, ...]:
        """The request's betas, while it is held."""
        request = self._request
        return tuple(request.betas) if isinstance(request, pb.CreateMessageRequest | pb.StreamMessageRequest) else ()

    @property
    def resumable(self) -> bool:
        """Whether the request, while it is held, asks for a resumable stream."""
        request = self._request
        return isinstance(request, pb.StreamMessageRequest) and request.detach_grace_seconds > 0

    def detach_grace(self, seconds: int) -> None:
        """Ask for a resumable stream with this grace (the Messages API's header), while the request is held."""
        if isinstance(self._request, pb.StreamMessageRequest):
            self._request.detach_grace_seconds = seconds


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
    record: CallRecord | None = None  # says which model served, which the call's spend is charged by
    version: str | None = None  # the `anthropic-version` to ask the upstream for; None: the SDK's own
    estimate: int = 0  # the request's input tokens, estimated from its size, when limits or the pool need it

    def end(self, failure: Failure) -> None:
        """End the call from the gateway's side with ``failure`` as its status (drain, CancelStream, a detach
        grace that passed); the first such end wins."""
        if self.cut is None:
            self.cut = failure
            self.task.cancel()


@dataclass(frozen=True)
class Counted:
    """A CountTokens call that passed admission: what to send upstream, for whom."""

    body: dict[str, Any]
    betas: Sequence[str]
    version: str | None
    caller: str


# What only generation uses: not part of a count_tokens body (the API refuses these keys there).
NOT_COUNTED = ("max_tokens", "stop_sequences", "metadata", "service_tier", "container", "inference_geo")


class Admission:
    """Admits calls and keeps count of those in flight."""

    def __init__(
        self,
        settings: Settings,
        identity: Identity | None = None,
        policy: Policy = OPEN,
        quotas: Quotas | None = None,
        prices: Prices | None = None,
    ) -> None:
        self._settings = settings
        self.identity = identity or Identity(settings)
        self.policy = policy
        self.quotas: Quotas = quotas or MemoryQuotas()
        self.prices: Prices = prices if prices is not None else PriceTable({})  # what spend budgets count
        self._calls: set[Admitted] = set()
        limit = settings.max_body_bytes_in_flight or default_budget(settings.max_message_bytes, settings.workers)
        self.bodies = BodyBudget(limit, settings.max_message_bytes)
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        # Whether every call's input tokens are estimated (a backends file's pool chooses keys by them).
        self.estimates = False
        self.backend_prices: Mapping[str, Prices] = {}  # a backends file's own price tables, by backend
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
            call.end(fail(Reason.SHUTTING_DOWN, "gateway shut down before the reply was complete"))

    def entry(self, context: CallMetadata, record: CallRecord | None = None) -> tuple[str, Rules]:
        """What the call's metadata alone decides, before its body is read: who the caller is, drain, whether
        the policy admits the caller, the gateway's concurrency limit. The caller and its rules; GatewayError
        if refused. The HTTP port asks this of the headers before it reads a body; ``admit`` asks it again."""
        settings = self._settings
        caller, rules = self.caller(context, record)
        if self.active >= settings.max_concurrent_streams:
            raise GatewayError(
                fail(
                    Reason.TOO_MANY_STREAMS,
                    f"gateway is at max_concurrent_streams ({settings.max_concurrent_streams})",
                    retry_after=1.0,
                )
            )
        return caller, rules

    def caller(self, context: CallMetadata, record: CallRecord | None = None) -> tuple[str, Rules]:
        """Who calls, and their rules: GatewayError when the call names no known caller (UNAUTHENTICATED),
        when the gateway drains, or when the policy does not let the caller in (PERMISSION_DENIED)."""
        caller = self.identity.caller(context)
        if record is not None:
            record.caller = caller  # a refused call is logged and counted with its caller too
        if self.draining:
            raise GatewayError(fail(Reason.SHUTTING_DOWN, "gateway is shutting down"))
        rules = self.policy.rules(caller)
        if rules is None:
            raise GatewayError(
                fail(Reason.CALLER_NOT_ALLOWED, f"the gateway's policy does not admit caller {caller!r}")
            )
        return caller, rules

    async def reserve(self, size: int | None, wait: float) -> Reservation:
        """Room in the body budget for a body of ``size`` bytes (None: not known yet), waiting at most ``wait``
        seconds for the reads in progress; GatewayError RESOURCE_EXHAUSTED (BODY_BUDGET_EXHAUSTED) if none."""
        reservation = await self.bodies.reserve(size, min(wait, WAIT_SECONDS))
        if reservation is None:
            raise GatewayError(
                fail(
                    Reason.BODY_BUDGET_EXHAUSTED,
                    f"the request bodies in flight fill max_body_bytes_in_flight ({self.bodies.limit} bytes)",
                    retry_after=1.0,
                )
            )
        return reservation

    @contextlib.asynccontextmanager
    async def admit(
        self,
        context: CallContext,
        request: Request | Undecodable | Body,
        reserved: Reservation | None = None,
        record: CallRecord | None = None,
    ) -> AsyncIterator[Admitted]:
        """Checks the call, then yields it, counted as in flight while it runs; GatewayError if refused.

        ``request`` is the request, or (gRPC) how to read it: then it is read only once the metadata
        admits the call and the body budget has room for it. ``reserved`` is the budget a port took
        before it read the body itself (the HTTP port); it is given back when the call ends. ``record``
        hears the caller and the model (aliases resolved) as soon as each is known, so that a refused
        call is logged and counted with them too."""
        settings = self._settings
        caller, rules = self.entry(context, record)  # refused here, a call names no model on any port
        if record is not None and not callable(request) and not isinstance(request, Undecodable):
            record.model = self._noted(request.params.model)
        budget, expired = settings.max_stream_seconds, self._too_long
        remaining = context.time_remaining()
        if remaining is not None and remaining < budget:
            budget, expired = remaining, _DEADLINE_PASSED
        task = asyncio.current_task()
        assert task is not None
        call = Admitted({}, (), caller, asyncio.get_running_loop().time() + budget, expired, task)
        call.record = record
        self._calls.add(call)  # counted from here, so the gateway's own limit holds while bodies are read
        self._idle.clear()
        reservation = reserved
        try:
            if callable(request):
                if reservation is None:
                    reservation = await self.reserve(None, budget)
                try:
                    request, size = await request()
                except asyncio.CancelledError:
                    if call.cut is None:
                        raise
                    task.uncancel()
                    raise GatewayError(call.cut) from None
                reservation.resize(size)
                if record is not None and not isinstance(request, Undecodable):
                    record.model = self._noted(request.params.model)
            call.body, call.betas, estimate = self._checked(caller, rules, request, record)
            assert not isinstance(request, Undecodable)  # _checked refused it
            call.version = request.anthropic_version if request.HasField("anthropic_version") else None
            call.estimate = estimate
            del request  # the request message is not kept while the call runs: its body is
            limits = rules.limits
            # A spend budget reserves the estimated input at the input price of the model asked for.
            model = call.body["model"]
            spend = micro(self.prices.cost(model, Usage({"input_tokens": estimate}))) if limits.spend else 0
            call.lease = await self.quotas.acquire(caller, limits, estimate, spend)  # last: it counts the call
            yield call
        finally:
            self._calls.discard(call)
            if not self._calls:
                self._idle.set()
            if call.lease is not None:
                spent = micro(self.cost(call)) if rules.limits.spend else 0
                self.quotas.release(call.lease, charged(call.usage), spent)
            if reservation is not None:
                reservation.release()

    def _noted(self, model: str) -> str:
        """The model a call's record notes for ``model`` as the caller wrote it (aliases and the default
        resolved), before the checks: "" for a name they will refuse, which is never repeated."""
        return self.policy.model(model_id(model or self.policy.default_model) or "")

    def cost(self, call: Admitted) -> float | None:
        """What ``call`` cost, by the model that served it (what the call's record heard from the upstream)."""
        record = call.record
        if record is None:
            return self.prices.cost(call.body["model"], call.usage)
        own = self.backend_prices.get(record.backend or "")
        return call_cost(self.prices, call.usage, record.served_by, record.model, own)

    def _checked(
        self,
        caller: str,
        rules: Rules,
        request: Request | pb.CountTokensRequest | Undecodable,
        record: CallRecord | None = None,
        *,
        count: bool = False,
    ) -> tuple[dict[str, Any], Sequence[str], int]:
        """The request's body as it goes upstream, its betas and its token estimate, once its shape, the
        model, its betas and version and (not for a ``count``) the caller's max_tokens cap pass;
        GatewayError if not."""
        if isinstance(request, Undecodable):
            raise GatewayError(invalid([Violation(request.field, f"{request.what}: {request.error}")]))
        params = request.params
        if not params.model and self.policy.default_model:
            params.model = self.policy.default_model
        bad = violations(params) + list(beta_violations(request.betas)) + list(version_violations(request))
        if count:  # a count needs no max_tokens
            bad = [v for v in bad if v.field != "params.max_tokens"]
        body, bad = body_of(params) if not bad else ({}, bad)
        if bad:
            raise GatewayError(invalid(bad))
        # The policy judges the body that goes upstream, as built (``extra`` merged in), not the fields.
        model = self.policy.model(body["model"])
        if record is not None:
            record.model = model
        if rules.models is not None and model not in rules.models:
            allowed = ", ".join(self.policy.names(rules.models)) or "none"
            raise GatewayError(
                fail(Reason.MODEL_NOT_ALLOWED, f"model {model!r} is not allowed for {caller!r} (allowed: {allowed})")
            )
        max_tokens = body["max_tokens"]
        if not count and rules.max_tokens is not None and max_tokens > rules.max_tokens:
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
        limits = rules.limits
        needed = limits.tokens_per_minute or limits.spend or self.estimates
        estimate = estimate_tokens(params.ByteSize()) if needed else 0
        body["model"] = model
        return body, tuple(request.betas), estimate

    async def admit_count(
        self, context: CallMetadata, request: pb.CountTokensRequest | Undecodable, record: CallRecord | None = None
    ) -> Counted:
        """Checks a CountTokens call as ``admit`` checks a message (caller, drain, policy, shape, model,
        betas, version), then counts it against the caller's requests_per_minute only: a count generates
        nothing, holds no stream and is charged no tokens and no spend. GatewayError if refused."""
        caller, rules = self.caller(context, record)
        body, betas, _ = self._checked(caller, rules, request, record, count=True)
        assert not isinstance(request, Undecodable)
        for key in NOT_COUNTED:
            body.pop(key, None)
        rate = rules.limits.requests_per_minute
        if rate is not None:
            lease = await self.quotas.acquire(caller, Limits(requests_per_minute=rate), 0)
            if lease is not None:
                self.quotas.release(lease, 0)
        version = request.anthropic_version if request.HasField("anthropic_version") else None
        return Counted(body, betas, version, caller)


def charged(usage: Usage) -> int:
    """The tokens a call's token quota is charged: input, cache writes and output (cache reads are not
    counted, as the API's own input-tokens-per-minute limits do not count them); 0 if no usage came."""
    return usage.input_tokens + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens + usage.output_tokens


def micro(usd: float | None) -> int:
    """``usd`` in millionths of a dollar, rounded up (a spend is never under-counted); 0 when unknown: a
    model without a price is not charged to spend budgets."""
    return math.ceil(usd * MICRO - 1e-6) if usd else 0


def invalid(bad: list[Violation]) -> Failure:
    """INVALID_ARGUMENT naming every bad field."""
    message = "; ".join(f"{v.field}: {v.description}" for v in bad)
    return fail(Reason.INVALID_REQUEST, message, violations=tuple(bad))
