"""Which upstream one call tries next, before its first content delta: ``Retry`` or ``Failover``.

    step = await route.next(body, failure, now, first_deadline, attempts)   # GatewayError: no more attempts
    route.served(step, response_body, ttft)

``Retry`` is the gateway without a backends file: one upstream, tried again after the SDK's backoff
for what is safe to retry (HTTP 408/409/429/5xx, connection failures, failures before any event),
within ``GATEWAY_MAX_ATTEMPTS``, the first-event bound and the deadline. Events are passed on as
they come.

``Failover`` is the gateway with a backends file: each failed attempt is read by
``server.upstream.verdicts`` (the pool learns from it: a cooled or dead key, an open circuit), and
the pool chooses the next member (``server.upstream.pool``); the reader holds ``message_start``,
``ping`` and ``content_block_start`` until the first content delta, so a failed attempt is never
seen by the caller. A failure of the caller's request ends the call as it is; so does running out
of attempts, of the first-event bound or of members. When the only members left are on backends
whose time to first token (p50) is longer than the call has left, the call ends at once with
DEADLINE_EXCEEDED, without an attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.call.bounds import Bounds
from server.call.retry import backoff
from server.errors import Failure, GatewayError, Reason, fail
from server.upstream.client import Body, Upstream
from server.upstream.headroom import Cost
from server.upstream.pool import Member, Pool, Tried
from server.upstream.verdicts import Verdict, verdict

log = logging.getLogger("server.call.reader")


@dataclass(frozen=True, slots=True)
class Step:
    """One attempt: where, with what body, after how long a wait, within what first-event bound of its own."""

    upstream: Upstream
    body: dict[str, Any]
    wait: float = 0.0
    member: Member | None = None
    first_event_timeout: float | None = None
    versioned: bool = True  # whether the caller's `anthropic-version` goes too (the Messages API's own header)


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One failed-over attempt, as the trailer and the log line name it."""

    backend: str
    key_id: str
    reason: str  # the verdict (``server.upstream.verdicts``)
    error: str  # the failure's error type or reason


# gen_ai.provider.name of each backend kind (the OpenTelemetry GenAI conventions' values).
PROVIDERS = {"anthropic": "anthropic", "bedrock": "aws.bedrock", "vertex": "gcp.vertex_ai"}


def _plain(attempt: FailedAttempt) -> dict[str, str]:
    return {"backend": attempt.backend, "key_id": attempt.key_id, "reason": attempt.reason, "error": attempt.error}


class Route(Protocol):
    hold: bool  # whether events are held until the first content delta

    async def next(
        self, body: dict[str, Any], failure: Failure | None, now: float, first_deadline: float, attempts: int
    ) -> Step:
        """The next attempt after ``failure`` (None: the first); raises GatewayError when there is none."""

    def served(self, step: Step, response: Body, ttft: float) -> None:
        """The attempt of ``step`` reached its first content delta (or, not holding, its first event)."""


class Retry:
    """One upstream, tried again for what is safe to retry. Stateless: one serves every call."""

    hold = False

    def __init__(self, upstream: Upstream, bounds: Bounds) -> None:
        self._upstream = upstream
        self._max_attempts = bounds.max_attempts

    async def next(
        self, body: dict[str, Any], failure: Failure | None, now: float, first_deadline: float, attempts: int
    ) -> Step:
        if failure is None:
            return Step(self._upstream, body)
        delay = backoff(attempts, failure.retry_after)
        if not failure.retryable or attempts >= self._max_attempts or now + delay >= first_deadline:
            raise GatewayError(failure)
        # The failure's own message names the upstream host and the cause (DNS, refused, TLS, timeout...).
        log.info(
            "upstream attempt %d failed (%s: %s); retrying in %.2fs", attempts, failure.reason, failure.message, delay
        )
        return Step(self._upstream, body, delay)

    def served(self, step: Step, response: Body, ttft: float) -> None:
        pass


@dataclass(eq=False)
class Failover:
    """One call's way through the pool; see the module docstring."""

    pool: Pool
    bounds: Bounds
    model: str
    caller: str
    cost: Cost
    deadline: float  # the call's, loop time
    hold = True
    tried: Tried = field(default_factory=Tried)
    failovers: list[FailedAttempt] = field(default_factory=list)  # attempts after which the call moved on
    final: FailedAttempt | None = None  # the failed attempt that ended the call, if one did
    serving: Member | None = None  # the member whose attempt reached its first content delta
    _last: Step | None = None

    async def next(
        self, body: dict[str, Any], failure: Failure | None, now: float, first_deadline: float, attempts: int
    ) -> Step:
        if failure is None:
            await self.pool.state.refresh()
            return self._next(body, None, now, first_deadline, attempts)
        judged = self._judge(failure)
        failed = self._attempt(failure, judged)
        try:
            if not judged.fails_over or attempts >= self.bounds.max_attempts:
                raise GatewayError(failure)
            step = self._next(body, failure, now, first_deadline, attempts)
        except GatewayError:
            self.final = failed
            raise
        self.failovers.append(failed)
        return step

    def _attempt(self, failure: Failure, judged: Verdict) -> FailedAttempt:
        assert self._last is not None
        assert self._last.member is not None
        member = self._last.member
        return FailedAttempt(
            member.backend.name, member.key_id or "-", judged.value, failure.error_type or failure.reason
        )

    def _next(
        self, body: dict[str, Any], failure: Failure | None, now: float, first_deadline: float, attempts: int
    ) -> Step:
        choice = self.pool.choose(self.model, self.caller, self.cost, self.deadline - now, self.tried)
        if choice is None:
            raise GatewayError(self._nothing_left(failure, now))
        if choice.last_resort and self.tried.too_slow and choice.member.id in self.tried.members:
            # The way ahead is too slow for the time left; going back to what just failed is no way.
            raise GatewayError(self._too_slow(now))
        wait = max(0.0, choice.ready_at - time.time())
        if choice.last_resort and failure is not None:
            wait = max(wait, backoff(attempts, None))
        if now + wait >= first_deadline:
            if self.tried.too_slow:
                raise GatewayError(self._too_slow(now))
            raise GatewayError(failure or self._all_cooling(wait))
        member = choice.member
        backend = member.backend
        step = Step(
            member.upstream,
            backend.body_for(body, choice.model_id),
            wait,
            member,
            backend.spec.first_event_timeout,
            backend.spec.kind == "anthropic",
        )
        if failure is not None:
            log.info(
                "upstream attempt %d failed (%s: %s); trying backend %s key %s%s",
                attempts,
                failure.reason,
                failure.message,
                backend.name,
                member.key_id or "-",
                f" in {wait:.2f}s" if wait else "",
            )
        self._last = step
        return step

    def _judge(self, failure: Failure) -> Verdict:
        step = self._last
        assert step is not None
        assert step.member is not None
        member = step.member
        judged = verdict(failure)
        self.pool.failed(member, judged, failure, self.model)
        self.tried.members[member.id] = judged
        if judged is Verdict.OVERLOADED:
            self.tried.platforms.add(member.backend.platform)
        elif judged is Verdict.UNAVAILABLE or judged is Verdict.TIMEOUT:
            self.tried.backends.add(member.backend.name)
        return judged

    def served(self, step: Step, response: Body, ttft: float) -> None:
        assert step.member is not None
        self.serving = step.member
        self.pool.served(step.member, self.caller, self.model, response.headers, ttft)

    def report(self) -> dict[str, Any]:
        """What the call's record keeps of its way: who served (else who failed last), and every failed attempt."""
        member = self.serving or (self._last.member if self._last is not None else None)
        return {
            "backend": member.backend.name if member else None,
            "key_id": (member.key_id or "-") if member else None,
            "provider": PROVIDERS[member.backend.spec.kind] if member else None,
            "failovers": [_plain(f) for f in self.failovers],
            "final": _plain(self.final) if self.final else None,
        }

    def _nothing_left(self, failure: Failure | None, now: float) -> Failure:
        if self.tried.too_slow:
            return self._too_slow(now)
        if failure is not None:
            return failure
        if not self.pool.serves(self.model):
            return fail(Reason.MODEL_NOT_SERVED, f"no backend of the gateway serves model {self.model!r}")
        return fail(
            Reason.NO_BACKEND_AVAILABLE,
            f"every key of every backend that serves model {self.model!r} is dead (spend limit or credentials)",
        )

    def _too_slow(self, now: float) -> Failure:
        left = max(0.0, self.deadline - now)
        slow = ", ".join(f"{name} (p50 {p50:.3g}s)" for name, p50 in self.tried.too_slow.items())
        return fail(
            Reason.DEADLINE_EXCEEDED,
            f"the call's deadline leaves {left:.3g}s, less than the time to first token of {slow}; not attempted",
        )

    def _all_cooling(self, wait: float) -> Failure:
        return fail(
            Reason.NO_BACKEND_AVAILABLE,
            f"every key that serves model {self.model!r} is cooling down for {wait:.3g}s more, past the call's "
            "first-event bound",
            retry_after=wait,
        )
