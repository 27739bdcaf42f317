"""``GATEWAY_WORKERS=N``: N gateway processes sharing one port, so the gateway uses N cores.

The supervisor starts the workers (``python -m server`` with the same flags and ``WORKER_ENV`` set,
which tells a process it is a worker), all listening on the same host:port through SO_REUSEPORT,
where the kernel spreads new connections across them. It prints the usual ready line once every
worker serves, forwards SIGTERM and SIGINT so that each worker drains, and exits with the worst
exit code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from types import FrameType

from server.reporting.logs import line as log_line

READY = "gateway listening on "
WORKER_ENV = "GATEWAY_WORKER_OF_SUPERVISOR"  # each worker's number (1..N), set in its environment by the supervisor


def metrics_listen_of_worker(listen: str, number: int) -> str:
    """Worker ``number``'s metrics address: each worker serves its own metrics, on the port plus number - 1
    (port 0 stays 0: each picks a free one)."""
    host, _, port = listen.rpartition(":")
    return listen if int(port) == 0 else f"{host}:{int(port) + number - 1}"


def run_workers(count: int, listen: str, argv: list[str], log_format: str = "text") -> int:
    """Run ``count`` workers on ``listen`` (port 0: one free port for all); returns the exit code. The
    supervisor's own lines are in ``log_format`` (``server.reporting.logs``), as the workers' are."""
    host, _, port = listen.rpartition(":")
    reservation = None
    if int(port) == 0:
        # Hold the port for the workers: bound with SO_REUSEPORT, never listening, so it accepts nothing.
        reservation = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((host.strip("[]") or "0.0.0.0", 0))
        port = str(reservation.getsockname()[1])
    args = [sys.executable, "-m", "server", *argv, "--listen", f"{host}:{port}"]
    workers: list[subprocess.Popen[str]] = []
    stopping: list[int] = []  # the signal forwarded to the workers, once there was one

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    # Before the first worker exists: a stop that arrives while they start is forwarded, never lost.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    workers += [
        subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, WORKER_ENV: str(number)})
        for number in range(1, count + 1)
    ]
    if stopping:
        # The stop came while workers were being spawned: forward it to all of them now that all exist (a
        # signal that reached a worker between fork and exec was lost with the exec).
        forward(stopping[0], None)
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if READY not in line:  # the ready line, as text or inside a JSON line
                if stopping:
                    # Told to stop while this worker was still starting (the signal may end a worker before
                    # its own handler is in place): a stop, not a failure.
                    return exit_code([w.wait() for w in workers], stopped_by=stopping[0])
                forward(signal.SIGTERM, None)
                print(log_line(log_format, f"a worker failed to start: {line!r}", "ERROR"), file=sys.stderr)
                return max(1, exit_code([w.wait() for w in workers]))
        print(log_line(log_format, f"{READY}{host}:{port} ({count} workers)", listen=f"{host}:{port}"), flush=True)
        return exit_code([worker.wait() for worker in workers])
    finally:
        if reservation is not None:
            reservation.close()


def exit_code(codes: list[int], stopped_by: int = 0) -> int:
    """The worst of the workers' exit codes, a death by signal N counting as 128 + N (as a shell reports it),
    except by ``stopped_by``, the signal the supervisor forwarded itself."""
    return max(0 if code == -stopped_by else 128 - code if code < 0 else code for code in codes)
