"""The pool: every way the gateway can reach Claude (backends, and their keys), their health, and the choice.

    pool = Pool(backends, state, managed=True)
    choice = pool.choose(model, caller, cost, remaining, tried)   # the best member now, or None
    pool.failed(member, verdict, failure) / pool.served(member, ...)

A ``Backend`` is one entry of the backends file (``server.upstream.backends``); its ``Member``s are the
ways in: one per key of a key pool, or the one the platform's credentials give. What is known of
them (cool-downs, dead keys, circuits, headroom) is kept by a ``PoolState`` (``server.upstream.state``:
this process's memory, or Redis shared by every replica). Without a backends file the pool holds the
one ``anthropic`` backend of ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL and is not ``managed``: the call
reads it as it always did (retries, no failover, no state).

How a member is chosen (``choose``), from the backends that serve the model, in priority order:

1. a backend whose observed time to first token (p50) is longer than the call's remaining deadline
   is not tried (``tried.too_slow`` names it);
2. a member that is dead is never tried; one that failed in this call, whose backend or platform
   failed in this call, or that is cooling for the model family, only as a last resort (4);
3. of the rest, those of the best priority whose headroom fits the call, else those whose backend's
   or platform's circuit is closed (the roomiest), else those behind an open circuit: among the
   backends of that priority one by weight, then the caller's key of its last call if it is among
   them (a prompt cache lives with an organisation), else the better of two at random by headroom;
4. last resort: the member that is ready first (its cool-down over), which the call waits for.

When one member serves the model (a one-key, one-backend file) and it may be tried, it is chosen at
once: step 3 could pick no other, so its headroom is neither weighed nor reserved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from server.errors import Failure
from server.upstream.backends import BackendSpec, SecretRef
from server.upstream.client import Upstream
from server.upstream.headroom import Cost
from server.upstream.state import PoolState
from server.upstream.verdicts import Verdict

log = logging.getLogger(__name__)

FAMILIES = ("opus", "sonnet", "haiku")
TTFT_SAMPLES = 64  # recent times to first token kept per backend
TTFT_MIN_SAMPLES = 3  # below this, a backend's p50 is not known
RELOAD_SECONDS = 5.0  # how often a credential file is looked at for a change
DEAD_PROBE_SECONDS = 600.0  # a dead key whose credentials cannot change is tried again after this
DEFAULT_COOL_SECONDS = 5.0  # a 429 that names no retry-after cools its key this long
STICKY_CALLERS = 10_000  # callers whose last key is remembered


@lru_cache(maxsize=1024)
def family_of(model: str) -> str:
    """The model family rate limits are kept per: opus, sonnet, haiku, or the model id itself. Cached: a
    gateway's calls name a few models."""
    lowered = model.lower()
    for family in FAMILIES:
        if family in lowered:
            return family
    return model


def key_id(secret: str) -> str:
    """A key's short id: the first 12 hex digits of its SHA-256 (never the key)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


class Credential:
    """One secret, read from its reference; a file is read again when it changes (looked at every few seconds)."""

    def __init__(self, ref: SecretRef, value: str) -> None:
        self.ref = ref
        self.value = value
        self._stamp = self._stat()
        self._next_look = time.monotonic() + RELOAD_SECONDS

    def _stat(self) -> tuple[int, int, int] | None:
        if self.ref.file is None:
            return None
        try:
            st = os.stat(self.ref.file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        """Whether the secret is different now (files only; an environment variable cannot change)."""
        if self.ref.file is None:
            return False
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + RELOAD_SECONDS
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            value = self.ref.read()
        except ValueError:
            return False  # half-written or emptied: keep the one we have until a good one is there
        if value == self.value:
            return False
        self.value = value
        return True


@dataclass(eq=False)
class Member:
    """One way into a backend: one key of its pool, or its platform credentials."""

    backend: Backend
    key_id: str  # the short id of its key; "" when it has none of its own (the AWS chain, Google ADC)
    upstream: Upstream
    credential: Credential | None = None  # the secret this member is made with, when it can change
    # The member's name in the pool's state, "<backend>:<key id>": a new key is a new member, alive whatever
    # the old one was (``Pool`` renames it with its key).
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"{self.backend.name}:{self.key_id}"


@dataclass(eq=False)
class Backend:
    """One backend of the file, its members, and its recent times to first token."""

    spec: BackendSpec
    members: list[Member] = field(default_factory=list)
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))
    # The longest of ``ttfts``, once worked out (None: to be worked out when next needed).
    _slowest: float | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def platform(self) -> str:
        """What an overload is shared by: the kind and the host it is reached at."""
        url = self.spec.base_url or (self.members[0].upstream.base_url if self.members else "")
        return f"{self.spec.kind}:{urlsplit(url).netloc}"

    @cached_property
    def circuit(self) -> str:
        """The name of the backend's circuit in the pool's state."""
        return f"backend:{self.name}"

    @cached_property
    def platform_circuit(self) -> str:
        """The name of its platform's circuit in the pool's state."""
        return f"platform:{self.platform}"

    def p50(self) -> float | None:
        """The median of the recent times to first token, once there are enough of them."""
        if len(self.ttfts) < TTFT_MIN_SAMPLES:
            return None
        return statistics.median(self.ttfts)

    def slower_than(self, seconds: float) -> float | None:
        """The p50, when it is known and longer than ``seconds``; else None. A call's deadline is mostly far
        beyond every sample, and then no median is needed: none of them, so not their median, is longer."""
        ttfts = self.ttfts
        if len(ttfts) < TTFT_MIN_SAMPLES:
            return None
        slowest = self._slowest
        if slowest is None:
            slowest = self._slowest = max(ttfts)
        if seconds >= slowest:
            return None
        p50 = statistics.median(ttfts)
        return p50 if seconds < p50 else None

    def observe(self, ttft: float) -> None:
        """Keep a time to first token: the recent ``TTFT_SAMPLES``, the oldest making way."""
        ttfts, slowest = self.ttfts, self._slowest
        if slowest is not None:
            if len(ttfts) == ttfts.maxlen and ttfts[0] >= slowest:
                self._slowest = None  # the slowest makes way: worked out again when needed
            elif ttft > slowest:
                self._slowest = ttft
        ttfts.append(ttft)

    def body_for(self, body: dict[str, Any], model_id: str) -> dict[str, Any]:
        """The request body as this backend takes it: its model id, and (Bedrock, Vertex) its anthropic_version."""
        if self.spec.kind == "anthropic":
            return body if model_id == body["model"] else {**body, "model": model_id}
        return {**body, "model": model_id, "anthropic_version": self.spec.version}


@dataclass
class Tried:
    """What one call has learnt of the pool so far."""

    members: dict[str, Verdict] = field(default_factory=dict)  # member id -> why it failed
    backends: set[str] = field(default_factory=set)  # backends out for this call (unavailable, timeout)
    platforms: set[str] = field(default_factory=set)  # platforms out for this call (overloaded)
    too_slow: dict[str, float] = field(default_factory=dict)  # backend -> its p50, longer than the time left


class Choice(NamedTuple):
    """The member a call tries next, its id of the model, and when it may be tried (wall-clock)."""

    member: Member
    model_id: str
    ready_at: float
    last_resort: bool = False


@dataclass
class _Entry:
    member: Member
    model_id: str
    score: float
    ready_at: float = 0.0


class Pool:
    """The backends in priority order and what is known of them; see the module docstring."""

    def __init__(
        self,
        backends: list[Backend],
        state: PoolState,
        *,
        managed: bool,
        rebuild: Callable[[Backend, str], Upstream] | None = None,
        notify: Callable[[str, Member, Verdict], None] | None = None,
    ) -> None:
        self.backends = backends
        self.state = state
        self.managed = managed  # a backends file: failover, state; else the one upstream as it always was
        self._rebuild = rebuild  # a member's upstream for a new secret
        self._retired: list[Upstream] = []  # upstreams of secrets that changed, closed with the pool
        self._sticky: dict[str, str] = {}  # caller -> the member id of its last served call
        # Hears each key's change of state: ("cooled" | "dead", the member, the verdict); the metrics count them.
        self.notify = notify

    @property
    def members(self) -> list[Member]:
        return [m for b in self.backends for m in b.members]

    @property
    def default(self) -> Upstream:
        """The first member's upstream (without a backends file, the only one)."""
        return self.backends[0].members[0].upstream

    @property
    def lookup(self) -> Upstream:
        """The upstream that answers CountTokens and ListModels: the first ``anthropic`` backend's first member
        (the SDK's Bedrock client counts no tokens), else the first member."""
        for backend in self.backends:
            if backend.spec.kind == "anthropic" and backend.members:
                return backend.members[0].upstream
        return self.default

    def serves(self, model: str) -> bool:
        return any(b.spec.model_id(model) is not None for b in self.backends)

    def choose(self, model: str, caller: str, cost: Cost, remaining: float, tried: Tried) -> Choice | None:
        """The member the call should try now (see the module docstring); None when none may be tried."""
        now = time.time()
        family = family_of(model)
        state = self.state
        last: list[_Entry] = []
        ready: list[tuple[Member, str]] = []  # (member, its model id)
        serving = 0  # members of the backends that serve the model, whatever their state
        for backend in self.backends:
            model_id = backend.spec.model_id(model)
            if model_id is None:
                continue
            serving += len(backend.members)
            p50 = backend.slower_than(remaining)
            if p50 is not None:
                tried.too_slow[backend.name] = p50
                continue
            out = backend.name in tried.backends or backend.platform in tried.platforms
            for member in backend.members:
                self._refresh(member)
                member_id = member.id
                if state.dead_until(member_id) > now:
                    continue
                cooled = state.cooled_until(member_id, family)
                if out or member_id in tried.members or cooled > now:
                    last.append(_Entry(member, model_id, 0.0, max(cooled, now)))
                    continue
                ready.append((member, model_id))
        if serving == 1 and ready:
            # The model's only member: whatever its headroom or circuit, the tiers below would pick it. Its
            # headroom is weighed against no other and its reservation would steer no choice, so neither is
            # computed (the headroom gauge still shows what its headers last said).
            member, model_id = ready[0]
            return Choice(member, model_id, now)
        tiers: tuple[list[_Entry], list[_Entry], list[_Entry]] = ([], [], [])  # fits, tight, behind a circuit
        circuits: dict[Backend, float] = {}  # backend -> its circuit (or its platform's) open until
        for member, model_id in ready:
            backend = member.backend
            circuit = circuits.get(backend)
            if circuit is None:
                circuit = max(state.circuit_until(backend.circuit), state.circuit_until(backend.platform_circuit))
                circuits[backend] = circuit
            headroom = state.headroom(member.id, family)
            if circuit > now:
                tiers[2].append(_Entry(member, model_id, 0.0))
            elif headroom is None or headroom.fits(cost, now):
                tiers[0].append(_Entry(member, model_id, 1.0 if headroom is None else headroom.score(cost, now)))
            else:
                tiers[1].append(_Entry(member, model_id, headroom.score(cost, now)))
        for tier, entries in enumerate(tiers):
            if entries:
                chosen = self._pick(entries, caller, roomiest=tier == 1)
                state.reserve(chosen.member.id, family, cost, now)
                return Choice(chosen.member, chosen.model_id, now)
        if last:
            first = min(last, key=lambda e: e.ready_at)  # min keeps the earlier (better priority) on a tie
            return Choice(first.member, first.model_id, first.ready_at, last_resort=True)
        return None

    def _pick(self, entries: list[_Entry], caller: str, *, roomiest: bool) -> _Entry:
        top = min(e.member.backend.spec.priority for e in entries)
        group = [e for e in entries if e.member.backend.spec.priority == top]
        backends = list(dict.fromkeys(e.member.backend for e in group))
        if len(backends) > 1:
            backend = random.choices(backends, weights=[b.spec.weight for b in backends])[0]
            group = [e for e in group if e.member.backend is backend]
        if roomiest:
            return max(group, key=lambda e: e.score)
        sticky = self._sticky.get(caller)
        for entry in group:
            if entry.member.id == sticky:
                return entry
        if len(group) == 1:
            return group[0]
        a, b = random.sample(group, 2)
        return a if a.score >= b.score else b

    def _refresh(self, member: Member) -> None:
        """A member whose credential file changed gets a new upstream (and so a new id, and a clean state)."""
        credential = member.credential
        if credential is None or self._rebuild is None or not credential.changed():
            return
        self._retired.append(member.upstream)
        member.upstream = self._rebuild(member.backend, credential.value)
        old, member.key_id = member.id, key_id(credential.value)
        member.id = f"{member.backend.name}:{member.key_id}"
        log.warning(
            "backend %s: the credential in %s changed; %s replaces %s",
            member.backend.name,
            credential.ref,
            member.id,
            old,
        )

    def failed(self, member: Member, verdict: Verdict, failure: Failure, model: str) -> None:
        """Learn from a failed attempt (the table in ``server.upstream.verdicts``)."""
        now = time.time()
        backend = member.backend
        if verdict is Verdict.RATE_LIMITED:
            seconds = failure.retry_after if failure.retry_after is not None else DEFAULT_COOL_SECONDS
            self.state.cool(member.id, family_of(model), now + seconds)
            if failure.ratelimits:
                self.state.report(member.id, family_of(model), failure.ratelimits, now)
            if self.notify is not None:
                self.notify("cooled", member, verdict)
        elif verdict.kills_key:
            self.state.kill(member.id, now + DEAD_PROBE_SECONDS)
            # The upstream's own words are not logged here: they are not the gateway's to vouch for.
            log.warning(
                "backend %s key %s is dead (%s: %s%s); not tried again until %s",
                backend.name,
                member.key_id or "-",
                verdict.value,
                failure.reason,
                f", HTTP {failure.http_status}" if failure.http_status else "",
                f"its credential file changes or {DEAD_PROBE_SECONDS / 60:g} minutes pass"
                if member.credential and member.credential.ref.file
                else f"{DEAD_PROBE_SECONDS / 60:g} minutes pass",
            )
            if self.notify is not None:
                self.notify("dead", member, verdict)
        elif verdict is Verdict.OVERLOADED:
            self.state.trip(backend.platform_circuit, now)
        elif verdict is Verdict.UNAVAILABLE or verdict is Verdict.TIMEOUT:
            self.state.trip(backend.circuit, now)

    def served(self, member: Member, caller: str, model: str, headers: Mapping[str, str] | None, ttft: float) -> None:
        """Learn from an attempt that reached its first content delta: the time it took, its rate limits."""
        backend = member.backend
        backend.observe(ttft)
        self.state.reset(backend.circuit)
        self.state.reset(backend.platform_circuit)
        if headers is not None and backend.spec.kind == "anthropic":
            self.state.served(member.id, family_of(model), headers, time.time())
        if len(self._sticky) >= STICKY_CALLERS and caller not in self._sticky:
            self._sticky.clear()
        self._sticky[caller] = member.id

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """The pool's state now, for the metrics: each member's (dead, cooling families, headroom by family
        and bucket) and each backend's (circuit open, time to first token p50)."""
        now = time.time()
        state = self.state
        members = [
            {
                "backend": member.backend.name,
                "key_id": member.key_id or "-",
                "dead": state.dead_until(member.id) > now,
                "cooling": state.cooling(member.id, now),
                "headroom": state.headrooms(member.id, now),
            }
            for member in self.members
        ]
        backends = [
            {
                "backend": backend.name,
                "open": max(state.circuit_until(backend.circuit), state.circuit_until(backend.platform_circuit)) > now,
                "ttft_p50": backend.p50(),
            }
            for backend in self.backends
        ]
        return {"members": members, "backends": backends}

    async def aclose(self) -> None:
        """Close every upstream (the state is closed by whoever made it)."""
        for upstream in [*self._retired, *(m.upstream for m in self.members)]:
            await upstream.aclose()
