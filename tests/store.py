"""A real ``redis-server`` (Debian's) on a free loopback port, for the tests of shared quotas.

Outside CI a machine without the binary skips those tests, saying why; in CI (``CI`` set) its
absence fails them, since ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

READY = "Ready to accept connections"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def binary() -> str:
    """The redis-server binary; skips the test (fails it in CI) when there is none."""
    found = shutil.which("redis-server")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run installs it with apt-get")
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI requires it")
    return found


@dataclass
class RedisServer:
    """A running redis-server: its port and URL; ``stop`` and ``start`` it on the same port."""

    port: int
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it accepts connections (its log says so)."""
        self.proc = subprocess.Popen(
            [binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "notice", "--logfile", ""],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if READY in line:
                return
        raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.wait()} before it was ready")

    def stop(self) -> None:
        """Kill the server (as a crash would) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self.proc = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server on 127.0.0.1, stopped on the way out."""
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
