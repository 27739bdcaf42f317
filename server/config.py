"""Gateway settings: one frozen dataclass, read from the environment once and passed in.

Every field is a ``GATEWAY_*`` variable and a ``python -m server`` flag of the same name; its help
text (``help_of``) is the settings table of docs/settings.md. The anthropic SDK itself reads
ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL; they are not copied here, so the key lives in one place
and never in a settings dump or a log line. The one setting named otherwise,
``ANTHROPIC_API_KEY_FILE``, holds a path: the key is read from it at start-up (``server.app``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, cast

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
IDENTITIES = ("none", "token", "mtls")
STORE_DOWN = ("open", "closed")
HTTP_CLIENTS = ("aiohttp", "httpx")
LISTEN_ADDRESSES = ("listen", "http_listen", "health_listen", "metrics_listen")  # host:port settings


def setting(default: Any, help: str, *, choices: tuple[str, ...] = (), secret: bool = False, env: str = "") -> Any:
    """A settings field: its default, what it does, the values it allows, and its variable if not GATEWAY_*."""
    return field(default=default, repr=not secret, metadata={"help": help, "choices": choices, "env": env})


@dataclass(frozen=True)
class Settings:
    """Every knob of the gateway."""

    listen: str = setting("127.0.0.1:50051", "host:port to serve gRPC on (port 0 picks a free one)")
    http_client: str = setting(
        "aiohttp",
        "the upstream HTTP client: aiohttp (the gateway's own session with the SDK's headers, URL and errors;"
        " the least CPU) or httpx (every request through the SDK on its default transport)",
        choices=HTTP_CLIENTS,
    )
    max_stream_seconds: float = setting(600.0, "longest life of a call in seconds, whatever the client's deadline")
    first_event_timeout: float = setting(
        60.0,
        "longest wait in seconds for the first upstream event (with a backends file, the first content delta), "
        "retries and failovers included",
    )
    idle_timeout: float = setting(60.0, "longest silence in seconds between upstream events (pings count as life)")
    connect_timeout: float = setting(5.0, "longest wait in seconds to connect to the upstream")
    max_attempts: int = setting(
        3, "upstream attempts per call before its first event, retries and failovers alike (1 = no retries)"
    )
    max_concurrent_streams: int = setting(1000, "calls in flight; past it RESOURCE_EXHAUSTED at once")
    max_message_bytes: int = setting(
        32 * 1024 * 1024, "largest gRPC message in either direction, in bytes (32 MiB, the API's request limit)"
    )
    max_body_bytes_in_flight: int = setting(
        0,
        "request-body bytes the gateway holds at once, across calls; a call past it is refused RESOURCE_EXHAUSTED "
        "before its body is read (0 = a sixteenth of the memory each worker may use: the cgroup limit, else RAM, over "
        "GATEWAY_WORKERS)",
    )
    max_event_bytes: int = setting(
        4 * 1024 * 1024,
        "largest upstream SSE event (or line) in bytes; one larger ends the call with RESOURCE_EXHAUSTED",
    )
    max_error_body_bytes: int = setting(
        64 * 1024, "most bytes of an upstream HTTP error body read; the rest is dropped unread"
    )
    drain_delay: float = setting(0.0, "on SIGTERM, seconds NOT_SERVING before new calls are refused")
    drain_grace: float = setting(30.0, "on SIGTERM, seconds calls in flight get to finish")
    keepalive_seconds: float = setting(30.0, "interval in seconds of server keepalive pings on idle connections")
    max_connection_age: float = setting(
        0.0,
        "seconds before a client connection is asked to reconnect (0 = never), so clients find new replicas; "
        "streams on it keep max_stream_seconds to finish",
    )
    tls_cert: str = setting("", "PEM certificate chain file; with tls_key the port serves TLS (plaintext otherwise)")
    tls_key: str = setting("", "PEM private key file of tls_cert")
    auth_token: str = setting(
        "",
        "one shared token: ChatService calls must carry metadata `authorization: Bearer <token>` (health and "
        "reflection stay open); its holder is the caller `default`; never logged",
        secret=True,
    )
    caller_identity: str = setting(
        "none",
        "how callers are named: none (one caller, `anonymous`: a sidecar), token (bearer tokens whose sha256 "
        "`GATEWAY_CALLERS_FILE` maps to caller names) or mtls (the client certificate's common name)",
        choices=IDENTITIES,
    )
    callers_file: str = setting(
        "", "token mode: file of `<sha256 hex of a token> <caller name>` lines; re-read when it changes"
    )
    callers_reload_seconds: float = setting(
        5.0, "token mode: how often in seconds the callers file is checked for changes"
    )
    tls_client_ca: str = setting("", "mtls mode: PEM file of the CAs that sign client certificates (required there)")
    backends_file: str = setting(
        "",
        "YAML file of the upstreams calls may go to, in priority order: Anthropic key pools, Amazon Bedrock, "
        "Google Vertex AI, with failover before the first content delta (unset: one Anthropic backend from "
        "ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL); checked at start-up",
    )
    policy_file: str = setting(
        "",
        "YAML file of model aliases, the default model and per-caller allowlists and limits "
        "(unset: any caller, any model, no limits); checked at start-up",
    )
    redis_url: str = setting(
        "",
        "redis://[:password@]host:port/db holding caller quotas, resumable streams' events, and a backends "
        "file's cool-downs, dead keys, circuits and headroom, shared by every replica (unset: kept in this "
        "process); never logged",
        secret=True,
    )
    redis_unreachable: str = setting(
        "open",
        "when Redis cannot be reached: open (admit calls without the shared quotas) or closed (refuse them "
        "with UNAVAILABLE); health keeps serving either way",
        choices=STORE_DOWN,
    )
    redis_timeout: float = setting(1.0, "longest wait in seconds for one Redis quota command")
    lease_seconds: float = setting(
        15.0,
        "life in seconds of a stream's slot in Redis unless its replica renews it (a crashed replica's slots "
        "free after it)",
    )
    resume_max_grace: float = setting(
        60.0,
        "longest detach grace in seconds a resumable stream may ask for (detach_grace_seconds is capped to it); "
        "0 turns resumable streams off (every stream is plain)",
    )
    resume_retention: float = setting(
        300.0, "seconds a resumable stream's events are kept after its end, for ResumeStream (in memory or Redis)"
    )
    resume_max_events: int = setting(
        100_000,
        "most events kept per resumable stream, oldest dropped first (in Redis: stream entries, one per upstream "
        "read); a resume from before the oldest kept is STREAM_EXPIRED",
    )
    resume_memory_bytes: int = setting(
        256 * 1024 * 1024,
        "without Redis: most bytes of events kept in this process over all resumable streams; past it the oldest "
        "ended streams are evicted first, then the oldest events of live ones",
    )
    http_listen: str = setting(
        "",
        "host:port to also serve ChatService over Connect and gRPC-Web, and the Messages API (/v1/messages) "
        "for the Anthropic SDKs (HTTP/1.1, for browsers and curl; TLS with tls_cert); off when empty (port 0 "
        "picks a free one)",
    )
    http_request_timeout: float = setting(
        30.0,
        "HTTP port: longest time in seconds from a connection's start (or its previous response) to a complete "
        "request head and body; past it the connection is closed (408 if nothing was answered)",
    )
    http_max_connections: int = setting(
        0,
        "HTTP port: most connections open at once; one past it is closed at once (0 = half the process's "
        "open-file limit, so the gRPC port, health and the upstream keep theirs)",
    )
    cors_origins: str = setting(
        "",
        "browser origins allowed to call the HTTP port, comma-separated (`*` = any); no CORS headers when empty",
    )
    chat_page: bool = setting(False, "serve the chat page at / of the HTTP port (needs http_listen)")
    health_listen: str = setting(
        "",
        "host:port of a second, plaintext port serving only grpc.health.v1, for probes that cannot speak TLS "
        "(Kubernetes' grpc probes) when the main port does; unset = none",
    )
    api_key_file: str = setting(
        "",
        "file holding the Anthropic API key (e.g. a mounted Secret), read once at start-up; "
        "wins over ANTHROPIC_API_KEY; the key is never logged",
        env="ANTHROPIC_API_KEY_FILE",
    )
    workers: int = setting(1, "gateway processes sharing the port through SO_REUSEPORT (about one per core)")
    log_level: str = setting("INFO", "log level; one JSON line per call at INFO", choices=LOG_LEVELS)
    log_format: str = setting(
        "text",
        "text (`<time> <pid> <level> <logger>: <message>`) or json (every line the gateway writes, stdout's ready "
        "line included, is one JSON object: time, level, logger, pid, and message or the call line's fields)",
        choices=LOG_FORMATS,
    )
    metrics_listen: str = setting(
        "", "host:port to serve Prometheus metrics on, over HTTP at /metrics (unset = no metrics; port 0 picks one)"
    )
    metrics_max_callers: int = setting(
        100, "distinct callers kept as a metrics label; later ones are counted as `other`"
    )
    prices_file: str = setting(
        "",
        "TOML price table (USD per million tokens of each kind, per model) replacing genai-prices' prices whole "
        "(unset: the genai-prices data of the pinned package)",
    )
    otlp_endpoint: str = setting(
        "",
        "OTLP/gRPC endpoint to export traces to, e.g. http://otel-collector:4317 "
        "(unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT if set, else no tracing)",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata["choices"]
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{env_name(f.name)} must be one of {', '.join(choices)}, not {value!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together")
        if self.caller_identity == "token" and not (self.callers_file or self.auth_token):
            raise ValueError("GATEWAY_CALLER_IDENTITY=token needs GATEWAY_CALLERS_FILE (or GATEWAY_AUTH_TOKEN)")
        if self.caller_identity == "mtls" and not (self.tls_cert and self.tls_client_ca):
            raise ValueError(
                "GATEWAY_CALLER_IDENTITY=mtls needs GATEWAY_TLS_CERT, GATEWAY_TLS_KEY and GATEWAY_TLS_CLIENT_CA"
            )
        if self.caller_identity == "mtls" and self.auth_token:
            raise ValueError(
                "GATEWAY_AUTH_TOKEN is a bearer token: it does not combine with GATEWAY_CALLER_IDENTITY=mtls"
            )
        if self.callers_file and self.caller_identity != "token":
            raise ValueError("GATEWAY_CALLERS_FILE is for GATEWAY_CALLER_IDENTITY=token")
        if self.tls_client_ca and self.caller_identity != "mtls":
            raise ValueError("GATEWAY_TLS_CLIENT_CA is for GATEWAY_CALLER_IDENTITY=mtls")
        if self.lease_seconds <= 0 or self.callers_reload_seconds <= 0 or self.redis_timeout <= 0:
            raise ValueError(
                "GATEWAY_LEASE_SECONDS, GATEWAY_CALLERS_RELOAD_SECONDS and GATEWAY_REDIS_TIMEOUT must be positive"
            )
        if self.resume_max_grace < 0 or self.resume_retention < 0:
            raise ValueError("GATEWAY_RESUME_MAX_GRACE and GATEWAY_RESUME_RETENTION must not be negative")
        if self.resume_max_events < 1 or self.resume_memory_bytes < 65536:
            raise ValueError(
                "GATEWAY_RESUME_MAX_EVENTS must be at least 1 and GATEWAY_RESUME_MEMORY_BYTES at least 65536"
            )
        for name in ("max_event_bytes", "max_error_body_bytes"):
            if getattr(self, name) < 1024:
                raise ValueError(f"{env_name(name)} must be at least 1024, not {getattr(self, name)}")
        if self.workers > 1 and self.http_listen.endswith(":0"):
            raise ValueError("GATEWAY_HTTP_LISTEN needs a fixed port with GATEWAY_WORKERS > 1 (the workers share it)")
        if self.chat_page and not self.http_listen:
            raise ValueError("GATEWAY_CHAT_PAGE needs GATEWAY_HTTP_LISTEN")
        if self.workers < 1:
            raise ValueError(f"GATEWAY_WORKERS must be at least 1, not {self.workers}")
        for name in LISTEN_ADDRESSES:
            problem = address_problem(getattr(self, name))
            if problem:
                raise ValueError(f"{env_name(name)}={getattr(self, name)!r} {problem}")
        if self.metrics_max_callers < 1:
            raise ValueError(f"GATEWAY_METRICS_MAX_CALLERS must be at least 1, not {self.metrics_max_callers}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
        """Settings from GATEWAY_* variables, with ``overrides`` (e.g. from command-line flags) in place of
        their variables: a variable a flag replaces is not read, so a bad one there stops nothing."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if v is not None}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if f.name not in values and raw is not None and raw != "":
                values[f.name] = parse(f, raw)
        if not values.get("otlp_endpoint"):
            # OpenTelemetry's standard variables turn tracing on too; the exporter reads them itself.
            standard = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if standard:
                values["otlp_endpoint"] = standard
        return cls(**values)


def parse(f: Field[Any], raw: str) -> Any:
    """``raw`` as the type of setting ``f``; ValueError naming the variable when it is not one."""
    kind = cast(Callable[[str], Any], type(f.default))
    if kind is bool:
        kind = boolean
    if f.name == "log_level":
        raw = raw.upper()  # logging's names; `info` is meant as INFO
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {type(f.default).__name__}") from None
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ValueError(f"{env_name(f.name)} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def address_problem(address: str) -> str:
    """What is wrong with a listen address (``host:port``, an IPv6 host in brackets); "" when nothing
    is, or when it is unset. grpc would take a bare host name for port 443, silently."""
    if not address:
        return ""
    host, colon, port = address.rpartition(":")
    if not colon or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        return "has no port: give host:port (port 0 picks a free one)"
    if not port.isdigit() or int(port) > 65535:
        return f"has no valid port ({port!r}): give host:port with a port of 0 to 65535"
    return ""


def boolean(raw: str) -> bool:
    """A yes/no setting: true/false, yes/no, on/off or 1/0, in any case."""
    word = raw.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``: GATEWAY_<NAME> unless the field names another."""
    named = {f.name: f.metadata["env"] for f in fields(Settings)}.get(field_name)
    return named or "GATEWAY_" + field_name.upper()


def flag_name(field_name: str) -> str:
    """The ``python -m server`` flag that sets ``field_name``."""
    return "--" + field_name.replace("_", "-")
