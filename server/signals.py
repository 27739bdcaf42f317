"""Waiting for the process to be told to stop, shared by every long-running entry point."""

from __future__ import annotations

import asyncio
import signal


def termination() -> asyncio.Event:
    """An event set once the process gets SIGTERM or SIGINT; the handlers are in place on return, so a
    process can announce that it is ready knowing that a stop from then on is a drain, not a kill."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
