"""Gateway settings: one frozen dataclass, read from the environment once and passed in.

The anthropic SDK itself reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL; they are not copied here,
so the key lives in one place and never in a settings dump or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast


@dataclass(frozen=True)
class Settings:
    """Every knob of the gateway. Field docs are the README's settings table."""

    listen: str = "127.0.0.1:50051"
    """GATEWAY_LISTEN: host:port to serve gRPC on (port 0 picks a free one)."""
    upstream: str = "anthropic"
    """GATEWAY_UPSTREAM: "anthropic" (the SDK's base URL) or "simulator" (start one in-process)."""
    http_client: str = "aiohttp"
    """GATEWAY_HTTP_CLIENT: the SDK's HTTP transport, "aiohttp" (faster) or "httpx" (the SDK's default)."""
    max_stream_seconds: float = 600.0
    """GATEWAY_MAX_STREAM_SECONDS: longest life of a call, whatever the client's deadline."""
    first_event_timeout: float = 60.0
    """GATEWAY_FIRST_EVENT_TIMEOUT: longest wait for the first upstream event, retries included."""
    idle_timeout: float = 60.0
    """GATEWAY_IDLE_TIMEOUT: longest silence between upstream events (pings count as life)."""
    connect_timeout: float = 5.0
    """GATEWAY_CONNECT_TIMEOUT: longest wait to connect to the upstream."""
    max_attempts: int = 3
    """GATEWAY_MAX_ATTEMPTS: upstream attempts per call before its first event (1 = no retries)."""
    max_concurrent_streams: int = 1000
    """GATEWAY_MAX_CONCURRENT_STREAMS: calls in flight; past it RESOURCE_EXHAUSTED at once."""
    max_message_bytes: int = 32 * 1024 * 1024
    """GATEWAY_MAX_MESSAGE_BYTES: largest gRPC message in either direction."""
    drain_delay: float = 0.0
    """GATEWAY_DRAIN_DELAY: on SIGTERM, seconds NOT_SERVING before refusing new calls."""
    drain_grace: float = 30.0
    """GATEWAY_DRAIN_GRACE: on SIGTERM, seconds in-flight calls get to finish."""
    keepalive_seconds: float = 30.0
    """GATEWAY_KEEPALIVE_SECONDS: interval of server keepalive pings on idle connections."""
    max_connection_age: float = 0.0
    """GATEWAY_MAX_CONNECTION_AGE: seconds before a client connection is asked to reconnect (0 = never),
    so clients find new replicas; streams on it still get max_stream_seconds to finish."""
    sim_ttft: float = 0.3
    """GATEWAY_SIM_TTFT: simulator only, seconds to the first token."""
    sim_tokens_per_second: float = 25.0
    """GATEWAY_SIM_TPS: simulator only, tokens per second (0 = as fast as possible)."""
    tls_cert: str = ""
    """GATEWAY_TLS_CERT: PEM certificate chain file; with GATEWAY_TLS_KEY the port serves TLS."""
    tls_key: str = ""
    """GATEWAY_TLS_KEY: PEM private key file of GATEWAY_TLS_CERT."""
    auth_token: str = field(default="", repr=False)
    """GATEWAY_AUTH_TOKEN: if set, ChatService calls must send `authorization: Bearer <token>`."""
    workers: int = 1
    """GATEWAY_WORKERS: gateway processes sharing the port (about one per core)."""
    log_level: str = "INFO"
    """GATEWAY_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
        """Settings from GATEWAY_* variables, then ``overrides`` (e.g. from command-line flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is not None and raw != "":
                kind = cast(Callable[[str], Any], type(f.default))
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {type(f.default).__name__}") from None
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        settings = cls(**values)
        if settings.http_client not in ("aiohttp", "httpx"):
            raise ValueError(f"GATEWAY_HTTP_CLIENT must be 'aiohttp' or 'httpx', not {settings.http_client!r}")
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ValueError("GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together")
        if settings.upstream not in ("anthropic", "simulator"):
            raise ValueError(f"GATEWAY_UPSTREAM must be 'anthropic' or 'simulator', not {settings.upstream!r}")
        return settings


_ENV_NAMES = {"sim_tokens_per_second": "GATEWAY_SIM_TPS"}


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return _ENV_NAMES.get(field_name, "GATEWAY_" + field_name.upper())
