"""``build_server``: the one way to assemble the gateway, used by ``__main__``, the demo and tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import grpc
from claude_gateway.v1 import chat_pb2
from claude_gateway.wire import SERVICE
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.call.accumulator import warm as warm_accumulation
from server.call.admission import Admission
from server.call.resumable import StreamCalls
from server.call.runner import Calls
from server.config import Settings
from server.limits.identity import Identity
from server.limits.policy import OPEN
from server.limits.policy import load as load_policy
from server.limits.quota import MemoryQuotas, Quotas
from server.ports.grpc.arrivals import QUIET_SECONDS, Arrivals
from server.ports.grpc.servicer import ChatServicer, lenient, serialized
from server.ports.http.web import WebApplication, WebServer, bind
from server.redaction import Redactor
from server.reporting import prices
from server.reporting.metrics import Endpoint, Metrics
from server.reporting.telemetry import Telemetry
from server.streams.memory import MemoryStore
from server.streams.store import EventStore
from server.upstream import backends
from server.upstream.client import Upstream, credentials_held, http_client
from server.upstream.failures import API_ERRORS
from server.upstream.platforms import file_pool, single_pool
from server.upstream.pool import Member, Pool
from server.upstream.state import PoolState
from server.upstream.verdicts import Verdict

if TYPE_CHECKING:
    from server.reporting.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """A built, started gateway: its server, port, and what shuts down with it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    admission: Admission
    pool: Pool
    settings: Settings
    resources: contextlib.AsyncExitStack  # everything build_server opened, closed in reverse by close()
    metrics: Endpoint | None = None  # the metrics HTTP server, when GATEWAY_METRICS_LISTEN is set
    tracing: Tracing | None = None
    web: WebServer | None = None  # the HTTP port (Connect, gRPC-Web, chat page), when http_listen is set
    store: EventStore | None = None  # where resumable streams live
    arrivals: Arrivals = dataclasses.field(default_factory=Arrivals)
    """When the gRPC port last took in a call (the drain stops grpc once calls stop arriving)."""
    health_port: int = 0
    """The plaintext health-only port on ``settings.health_listen``, 0 when there is none."""
    prices: prices.Prices = dataclasses.field(default_factory=lambda: prices.PriceTable({}))
    """What calls are priced by."""

    @property
    def upstream(self) -> Upstream:
        """The first backend's first upstream (without a backends file, the only one)."""
        return self.pool.default

    @property
    def http_port(self) -> int | None:
        """The HTTP port, None when it is off."""
        return self.web.port if self.web else None

    async def drain(self) -> None:
        """Graceful stop: NOT_SERVING at once; after drain_delay refuse new calls with UNAVAILABLE
        (SHUTTING_DOWN, logged); give calls in flight drain_grace to finish; end the rest with UNAVAILABLE
        (SHUTTING_DOWN); stop grpc once calls have stopped arriving."""
        await self.health.enter_graceful_shutdown()  # Watch streams hear NOT_SERVING now
        if self.settings.drain_delay > 0:
            await asyncio.sleep(self.settings.drain_delay)  # load balancers still route here meanwhile
        # From here admission refuses every new call, on every port, with a status and a log line. grpc keeps
        # taking calls in meanwhile: its own stop would cancel those not yet handed to a handler, unlogged.
        self.admission.draining = True
        loop = asyncio.get_running_loop()
        end = loop.time() + self.settings.drain_grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(end):
                await self.admission.wait_idle()
        self.admission.cut_all()  # the grace is over: what still runs ends with a status that says why
        await self.admission.wait_idle()
        with contextlib.suppress(TimeoutError):  # callers that keep coming hold the stop until the grace ends
            async with asyncio.timeout_at(max(end, loop.time() + QUIET_SECONDS)):
                await self.arrivals.quiet()
        log.info("drained: no call in flight, none arriving; stopping")
        await self.server.stop(0)  # what remains are health Watch streams, which never end by themselves
        if self.web:
            await self.web.stop()  # no call is left: close its port and idle keep-alive connections
        await self.close()

    async def close(self) -> None:
        """Stop at once and release everything build_server opened, newest first (idempotent)."""
        await self.resources.aclose()
        self.metrics = None
        self.tracing = None


def add_chat_service(servicer: ChatServicer, server: grpc.aio.Server) -> None:
    """Register ChatService with request-streaming handlers that take the request's bytes: grpc reads the
    one request message only when the servicer asks, after admission on the metadata (a refused caller
    never costs its body), and bytes that do not parse get INVALID_ARGUMENT instead of grpc's UNKNOWN.
    On the wire a unary request is one message either way; clients see the RPCs the proto declares."""
    handlers = {
        "StreamMessage": grpc.stream_stream_rpc_method_handler(
            servicer.StreamMessage,
            response_serializer=serialized,
        ),
        "ResumeStream": grpc.unary_stream_rpc_method_handler(
            servicer.ResumeStream,
            request_deserializer=lenient(chat_pb2.ResumeStreamRequest),
            response_serializer=serialized,
        ),
        "CancelStream": grpc.unary_unary_rpc_method_handler(
            servicer.CancelStream,
            request_deserializer=lenient(chat_pb2.CancelStreamRequest),
            response_serializer=chat_pb2.CancelStreamResponse.SerializeToString,
        ),
        "CreateMessage": grpc.stream_unary_rpc_method_handler(
            servicer.CreateMessage,
            response_serializer=chat_pb2.CreateMessageResponse.SerializeToString,
        ),
        "CountTokens": grpc.unary_unary_rpc_method_handler(
            servicer.CountTokens,
            request_deserializer=lenient(chat_pb2.CountTokensRequest),
            response_serializer=chat_pb2.CountTokensResponse.SerializeToString,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=lenient(chat_pb2.ListModelsRequest),
            response_serializer=chat_pb2.ListModelsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def tls_credentials(settings: Settings) -> grpc.ServerCredentials:
    """Server TLS from the PEM files the settings name (read once, at start-up); with a client CA
    (mtls callers) every client must present a certificate it signed."""
    key, chain = Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes()
    if settings.tls_client_ca:
        ca = Path(settings.tls_client_ca).read_bytes()
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, chain)])


class StartupError(Exception):
    """The gateway cannot start as configured; the message says why and never holds a secret."""


class BindError(StartupError):
    """The gateway could not listen on its address (in use, or not an address of this host)."""


def read_api_key(path: str) -> str:
    """The API key in the file ``path`` (surrounding whitespace and the final newline dropped)."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise StartupError(f"cannot read the API key from ANTHROPIC_API_KEY_FILE={path}: {reason}") from None
    if not key:
        raise StartupError(f"ANTHROPIC_API_KEY_FILE={path} is empty")
    return key


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments: explicit message limits, keepalive that lets long quiet streams live, and
    SO_REUSEPORT only for GATEWAY_WORKERS > 1 (grpc turns it on by default, which would let a second
    gateway start silently on a port in use and take half its calls)."""
    keepalive_ms = int(settings.keepalive_seconds * 1000)
    options = [
        ("grpc.so_reuseport", int(settings.workers > 1)),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if settings.max_connection_age > 0:
        # GOAWAY after the age, then a grace no shorter than the longest stream allowed: never a cut stream.
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int((settings.max_stream_seconds + 5) * 1000)))
    return options


def sdk_client(settings: Settings, **kwargs: Any) -> anthropic.AsyncAnthropic:
    """The SDK client the gateway uses, on the HTTP transport ``settings.http_client`` names.

    ``kwargs`` go to ``AsyncAnthropic`` (base_url, api_key); without them the SDK reads
    ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY itself.
    """
    return anthropic.AsyncAnthropic(http_client=http_client(settings), **kwargs)


def quota_store(
    settings: Settings, on_store_change: Callable[[bool], None] | None = None, clock: Callable[[], float] = time.time
) -> Quotas:
    """The quota store the settings name: Redis when ``redis_url`` is set, else this process's memory.
    ``on_store_change`` hears whether Redis answers: True at once, then at every change. ``clock`` (epoch
    seconds) is the calendar of the spend budgets' UTC days and months."""
    if settings.redis_url:
        from server.limits.redis_quotas import RedisQuotas  # redis-py loads OpenTelemetry's SDK: only when used

        if on_store_change is not None:
            on_store_change(True)
        return RedisQuotas(settings, on_store_change=on_store_change, clock=clock)
    return MemoryQuotas(clock)


def pool_state(settings: Settings) -> PoolState:
    """Where the pool's state lives: Redis, shared by every replica, when ``redis_url`` is set; else memory."""
    if settings.redis_url:
        from server.upstream.redis_state import RedisPoolState  # redis-py loads OpenTelemetry's SDK: only when used

        return RedisPoolState(settings)
    return PoolState()


def event_store(settings: Settings, metrics: Metrics | None) -> EventStore:
    """Where resumable streams' events live: Redis when ``redis_url`` is set (and resumable streams are on), else
    this process's memory."""
    if settings.redis_url and settings.resume_max_grace > 0:
        from server.streams.redis_store import RedisStore  # redis-py loads OpenTelemetry's SDK: only when used

        return RedisStore(settings, on_unresumable=metrics.unresumable.inc if metrics is not None else None)
    return MemoryStore(settings)


async def build_server(
    settings: Settings, client: anthropic.AsyncAnthropic | None = None, *, clock: Callable[[], float] = time.time
) -> Gateway:
    """Build and start the gateway on ``settings.listen``; BindError if it cannot listen there,
    StartupError if the key file, the policy file, the callers file or the price file is bad.

    ``client`` defaults to an SDK client configured from the environment (ANTHROPIC_API_KEY or the
    file ANTHROPIC_API_KEY_FILE names, ANTHROPIC_BASE_URL). Every resource opened here (the client,
    servers, sockets, threads, the Redis connection) joins one exit stack the moment it exists, so
    a failure at any step, and ``Gateway.close``, release all of them and nothing twice. ``clock`` is
    the calendar of the spend budgets (a test's, to end a day at once).
    """
    resources = contextlib.AsyncExitStack()
    try:
        return await _assemble(settings, client, resources, clock)
    except BaseException:
        await resources.aclose()
        raise


async def _assemble(
    settings: Settings,
    client: anthropic.AsyncAnthropic | None,
    resources: contextlib.AsyncExitStack,
    clock: Callable[[], float],
) -> Gateway:
    source = ""  # where the credentials came from, when the gateway read them itself
    secrets: list[str | None] = [settings.auth_token]
    if settings.backends_file:
        if client is not None:
            raise ValueError("build_server takes a client or GATEWAY_BACKENDS_FILE, not both")
        try:
            specs = backends.load(settings.backends_file)
            state = pool_state(settings)
            resources.push_async_callback(state.close)
            pool, read = await file_pool(specs, settings, state)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        secrets.extend(read)
        resources.push_async_callback(pool.aclose)
        await pool.state.refresh(settings.redis_timeout)  # a replica that starts learns the shared state
        held = f"the credentials of {settings.backends_file}"  # each checked above: a missing one stops start-up
    else:
        if client is None:
            # api_key=None: the SDK reads ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN, or its credentials) itself.
            key = read_api_key(settings.api_key_file) if settings.api_key_file else None
            client = sdk_client(settings, api_key=key)
            source = " from ANTHROPIC_API_KEY_FILE" if settings.api_key_file else ""
        resources.push_async_callback(client.close)
        held = credentials_held(client)
        secrets.extend((client.api_key, client.auth_token))
        pool = single_pool(client, settings)
        resources.push_async_callback(pool.aclose)
    try:  # before anything starts: a bad file stops start-up (never a gateway running without its limits)
        identity = Identity(settings)
        policy = load_policy(settings.policy_file) if settings.policy_file else OPEN
        price_table = prices.load(settings.prices_file)
        own_prices = {
            b.name: prices.read_table(b.spec.prices_file, f"prices_file of backend {b.name}")
            for b in pool.backends
            if b.spec.prices_file
        }
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    warm_accumulation()  # the SDK's validators, built now rather than in the first CreateMessage calls
    metrics = None
    if settings.metrics_listen:
        metrics = Metrics(
            settings.metrics_max_callers,
            price_table.known,
            lambda: admission.active,
            API_ERRORS,
            pool.snapshot if pool.managed else None,
        )
        pool.notify = _counted(metrics)
    store_up = metrics.quota_store.set if metrics is not None and settings.redis_url else None
    quotas = quota_store(settings, store_up, clock)
    resources.push_async_callback(quotas.close)
    admission = Admission(settings, identity, policy, quotas, price_table)
    # The pool chooses among its members by each call's estimated input; a pool of one has no choice to make.
    admission.estimates = pool.managed and len(pool.members) > 1
    admission.backend_prices = own_prices
    health_servicer = health.aio.HealthServicer()
    tracing = None
    if settings.otlp_endpoint:
        from server.reporting.tracing import Tracing  # imported only when on: no OpenTelemetry cost otherwise

        tracing = Tracing(settings.otlp_endpoint)
        resources.push_async_callback(asyncio.to_thread, tracing.shutdown)  # exports the spans still queued

    arrivals = Arrivals()
    server = grpc.aio.server(options=server_options(settings), interceptors=(arrivals,))
    resources.push_async_callback(_stop_grpc, server)
    redactor = Redactor(tuple(secrets))
    calls = Calls(settings, admission, pool, Telemetry(price_table, metrics, own_prices), tracing, redactor)
    store = event_store(settings, metrics)
    resources.push_async_callback(store.close)
    streams = StreamCalls(calls, store)
    resources.push_async_callback(streams.close)  # before the store closes: the last events are written
    add_chat_service(ChatServicer(calls, streams), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = tls_credentials(settings) if settings.tls_cert else None
    port = _bind_grpc(server, settings.listen, credentials)
    if port == 0:
        raise BindError(f"cannot listen on {settings.listen}: the port is in use or the address is not this host's")
    health_server, health_port = None, 0
    if settings.health_listen:
        # The same health servicer, so both ports report the same status; nothing else is served here.
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(settings.workers > 1))])
        resources.push_async_callback(_stop_grpc, health_server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind_grpc(health_server, settings.health_listen, None)
        if health_port == 0:
            raise BindError(f"cannot listen on {settings.health_listen} (GATEWAY_HEALTH_LISTEN)")
    endpoint = None
    if metrics is not None:
        try:
            endpoint = metrics.serve(settings.metrics_listen)
        except OSError as exc:
            raise BindError(f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}") from None
        resources.push_async_callback(asyncio.to_thread, endpoint.stop)
    web = None
    if settings.http_listen:
        try:
            sock = bind(settings.http_listen, reuse_port=settings.workers > 1)
        except (OSError, ValueError):
            raise BindError(
                f"cannot listen on {settings.http_listen}: the port is in use or the address is not this host's"
            ) from None
        resources.callback(sock.close)  # closed by WebServer.stop too; closing twice is harmless
        web = WebServer(WebApplication(calls, streams, settings), sock, settings)
        resources.push_async_callback(web.stop, force=True)
    if health_server is not None:
        await _start_grpc(health_server)
    await _start_grpc(server)
    identity.start()
    resources.push_async_callback(identity.close)
    quotas.start()
    store.start()
    if pool.managed:
        for backend in pool.backends:
            log.info(
                "backend %s (%s, priority %d): %s with %d member(s)",
                backend.name,
                backend.spec.kind,
                backend.spec.priority,
                backend.members[0].upstream.url,
                len(backend.members),
            )
    elif held:
        log.info("upstream %s with %s%s", pool.default.url, held, source)
    else:
        log.warning(
            "upstream %s with NO credentials: every call fails FAILED_PRECONDITION and health reports %s "
            "NOT_SERVING until ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY_FILE) is set",
            pool.default.url,
            SERVICE,
        )
    log.info(
        "callers: %s; policy: %s; quotas: %s; backends: %s",
        identity.mode,
        settings.policy_file or "none (any caller, any model, no limits)",
        "redis" if settings.redis_url else "in memory",
        settings.backends_file or "none (one, from ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL)",
    )
    if web:
        await web.start()
    # The process ("") serves whatever happens upstream: liveness. ChatService is NOT_SERVING without
    # credentials, since every call would fail: readiness keeps such a replica out of the Service.
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    chat = health_pb2.HealthCheckResponse.SERVING if held else health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set(SERVICE, chat)
    return Gateway(
        server,
        port,
        health_servicer,
        admission,
        pool,
        settings,
        resources,
        metrics=endpoint,
        tracing=tracing,
        web=web,
        health_port=health_port,
        prices=price_table,
        store=store,
        arrivals=arrivals,
    )


def _counted(metrics: Metrics) -> Callable[[str, Member, Verdict], None]:
    """The pool's hook that counts each key's change of state in ``metrics``."""

    def notify(event: str, member: Member, verdict: Verdict) -> None:
        metrics.pool_event(event, member.backend.name, member.key_id or "-", verdict.value)

    return notify


_STARTED = "_gateway_started"  # set on a grpc.aio server once started: see _stop_grpc


async def _start_grpc(server: grpc.aio.Server) -> None:
    await server.start()
    setattr(server, _STARTED, True)


async def _stop_grpc(server: grpc.aio.Server) -> None:
    """Stop ``server`` at once. grpc.aio releases a port it has bound only when a started server stops
    (a server bound and never started keeps its listening sockets), so one that never started is
    started first: on a failed start-up's way out, for a moment before it is stopped."""
    if not getattr(server, _STARTED, False):
        await _start_grpc(server)
    await server.stop(None)


def _bind_grpc(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """The port ``server`` now listens on at ``listen``; 0 when it cannot (grpc's own way to say so)."""
    try:
        if credentials is not None:
            return int(server.add_secure_port(listen, credentials))
        return int(server.add_insecure_port(listen))
    except RuntimeError:  # grpc's other way of saying the bind failed
        return 0
