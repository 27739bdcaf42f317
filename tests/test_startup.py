"""A start-up that fails releases everything it had opened: no thread, socket or Redis connection is left."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from server.app import BindError, StartupError, build_server, sdk_client
from server.config import Settings
from tests.harness import API_KEY, run
from tests.store import RedisServer, free_port, redis_server


def open_fds() -> set[str]:
    """What this process's file descriptors point at (sockets by inode), so a leak shows by name."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
    return {entry.split("->", 1)[1] for entry in out}


def redis_clients(store: RedisServer) -> int:
    """Connections the Redis server holds, not counting the one asking."""
    with redis.Redis(port=store.port) as probe:
        return len(probe.client_list()) - 1


def every_part(store: RedisServer, **extra: Any) -> Settings:
    """Settings that open every resource build_server knows: Redis, metrics, health port, HTTP port."""
    parts: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "redis_url": store.url,
        "metrics_listen": "127.0.0.1:0",
        "health_listen": "127.0.0.1:0",
        "http_listen": f"127.0.0.1:{free_port()}",
    }
    return Settings(**(parts | extra))


def leaves_nothing(store: RedisServer, fail: Callable[[], Awaitable[None]]) -> None:
    """Build and close one whole gateway first (grpc's process-wide poller and threads start once, and
    stay), then check that ``fail`` leaves the threads, descriptors and Redis connections as they were."""

    async def go() -> None:
        warm = await build_server(
            every_part(store), sdk_client(Settings(), base_url="http://127.0.0.1:9", api_key=API_KEY)
        )
        await warm.close()
        threads, fds, clients = set(threading.enumerate()), open_fds(), redis_clients(store)
        await fail()
        assert set(threading.enumerate()) - threads == set()
        assert open_fds() - fds == set()
        assert redis_clients(store) == clients

    run(go)


def test_a_failed_bind_leaves_no_thread_socket_or_redis_connection() -> None:
    """The HTTP port's bind fails last, after Redis, metrics, the health port and the gRPC port were opened."""
    with redis_server() as store, socket.create_server(("127.0.0.1", 0)) as taken:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"

        async def fail() -> None:
            with pytest.raises(BindError, match=busy):
                client = sdk_client(Settings(), base_url="http://127.0.0.1:9", api_key=API_KEY)
                await build_server(every_part(store, http_listen=busy), client)

        leaves_nothing(store, fail)


def test_a_bad_policy_file_stops_start_up_and_leaves_nothing(tmp_path: Path) -> None:
    """A policy file that does not parse is a StartupError naming the file, and nothing stays open."""
    bad = tmp_path / "policy.yaml"
    bad.write_text("callers: [unclosed\n")
    with redis_server() as store:

        async def fail() -> None:
            with pytest.raises(StartupError, match=r"policy\.yaml"):
                client = sdk_client(Settings(), base_url="http://127.0.0.1:9", api_key=API_KEY)
                await build_server(every_part(store, policy_file=str(bad)), client)

        leaves_nothing(store, fail)
