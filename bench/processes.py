"""The benchmark's child processes: the upstream simulator, the gateway and the load clients.

``Processes`` is an async context manager that starts each child (pinned to CPUs with ``taskset``
when asked), waits for its ready line, and on exit stops every child it started: SIGTERM, then
SIGKILL after a timeout. Each child's stderr goes to ``<logs>/<name>.log``; stdout is the line
protocol it speaks (see ``upstream`` and ``loadgen``; the gateway prints one ready line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.jobs import Job

ROOT = Path(__file__).resolve().parents[1]
_LINE_LIMIT = 256 * 1024 * 1024  # a result line carries every latency sample of a client
_READY_TIMEOUT = 30.0


class ChildError(RuntimeError):
    """A child died, said something unexpected, or took too long; the message ends with its log's tail."""


@dataclass
class Child:
    """One running child process and its line protocol."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def _fail(self, what: str) -> ChildError:
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return ChildError(f"{self.name}: {what}\n--- {self.log} (tail) ---\n{tail}")

    async def readline(self, timeout: float) -> str:
        """The next stdout line, without its newline."""
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise self._fail(f"no output within {timeout:g}s") from None
        if not raw:
            code = await self.process.wait()
            raise self._fail(f"exited with {code}")
        return raw.decode().rstrip("\n")

    async def expect(self, prefix: str, timeout: float = _READY_TIMEOUT) -> str:
        """The next line, which must start with ``prefix``; returns what follows it."""
        line = await self.readline(timeout)
        if not line.startswith(prefix):
            raise self._fail(f"expected {prefix!r}, got {line[:200]!r}")
        return line[len(prefix) :]

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code."""
        if self.process.returncode is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without GATEWAY_* and ANTHROPIC_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    return {**env, **extra}


@dataclass
class Processes:
    """Starts children and stops every one of them on exit."""

    logs: Path
    pin: bool = True
    gateway_cpus: tuple[int, ...] = (0,)
    load_cpus: tuple[int, ...] = (1,)
    _children: list[Child] = field(default_factory=list)
    _serial: int = 0

    async def __aenter__(self) -> Processes:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(child.stop() for child in self._children), return_exceptions=True)
        self._children.clear()

    async def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: tuple[int, ...],
        env: dict[str, str] | None = None,
        stdin: bool = False,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` from ``cwd`` (default the project root); stderr to ``<logs>/<name>.log``."""
        self._serial += 1
        log = self.logs / f"{self._serial:03d}-{name}.log"
        if self.pin and cpus:
            argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd or ROOT,
                env=_clean_env(env or {}),
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=_LINE_LIMIT,
            )
        child = Child(name, process, log)
        self._children.append(child)
        return child

    async def stop(self, child: Child) -> int:
        """Stop one child now."""
        code = await child.stop()
        with contextlib.suppress(ValueError):
            self._children.remove(child)
        return code

    async def upstream(self, record: Path) -> tuple[Child, str]:
        """The stamping simulator (``bench.upstream``); returns it and its base URL."""
        child = await self.spawn(
            "upstream", [sys.executable, "-m", "bench.upstream", "--record", str(record)], cpus=self.load_cpus
        )
        return child, await child.expect("simulator listening on ")

    async def gateway(
        self,
        base_url: str,
        env: dict[str, str] | None = None,
        name: str = "gateway",
        cpus: tuple[int, ...] | None = None,
    ) -> tuple[Child, str]:
        """``python -m server`` against ``base_url`` (on ``cpus``, default ``gateway_cpus``); returns it
        and its host:port once it serves."""
        settings = {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "bench",
            "GATEWAY_LISTEN": "127.0.0.1:0",
            **(env or {}),
        }
        child = await self.spawn(
            name, [sys.executable, "-m", "server"], cpus=self.gateway_cpus if cpus is None else cpus, env=settings
        )
        # The line may go on, e.g. "gateway listening on 127.0.0.1:PORT (2 workers)".
        return child, (await child.expect("gateway listening on ")).split()[0]

    async def redis(self) -> tuple[Child, int]:
        """Debian's ``redis-server`` on a free loopback port, on the load CPUs, persisting nothing; returns it and its
        port once it accepts connections."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--logfile", ""]  # fmt: skip
        child = await self.spawn("redis", argv, cpus=self.load_cpus)
        while "Ready to accept connections" not in await child.readline(_READY_TIMEOUT):
            pass
        return child, port

    async def floor(self) -> tuple[Child, str]:
        """``python -m bench.floor`` on the gateway's CPUs; returns it and its host:port once it serves."""
        child = await self.spawn("floor", [sys.executable, "-m", "bench.floor"], cpus=self.gateway_cpus)
        return child, await child.expect("floor listening on ")

    async def client(self, job: Job, name: str = "loadgen", cpus: tuple[int, ...] | None = None) -> Child:
        """A load client for ``job`` (on ``cpus``, default ``load_cpus``), set up and waiting for ``go``."""
        child = await self.spawn(
            f"{name}-{job.kind}",
            [sys.executable, "-m", "bench.loadgen", job.to_json()],
            cpus=self.load_cpus if cpus is None else cpus,
            stdin=True,
        )
        await child.expect("ready")
        return child

    async def clients(self, jobs: list[Job], cpus: tuple[int, ...] | None = None) -> list[Child]:
        """Several load clients (on ``cpus``, default ``load_cpus``), all set up and waiting for ``go``."""
        return list(await asyncio.gather(*(self.client(job, cpus=cpus) for job in jobs)))


async def go(children: list[Child]) -> None:
    """Start every waiting client at once."""
    await asyncio.gather(*(child.send("go") for child in children))


async def result(child: Child, timeout: float) -> dict[str, Any]:
    """The client's result line, parsed; the client is then left to exit."""
    loaded: dict[str, Any] = json.loads(await child.expect("result ", timeout))
    await asyncio.wait_for(child.process.wait(), 30)
    return loaded
