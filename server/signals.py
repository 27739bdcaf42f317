"""Waiting for the process to be told to stop, shared by every long-running entry point."""

from __future__ import annotations

import asyncio
import signal


async def terminated() -> None:
    """Return once the process gets SIGTERM or SIGINT (the handlers stay installed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
