"""``python -m server``: run the gateway until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from dataclasses import fields

from server.app import build_server
from server.config import Settings, env_name
from server.signals import terminated
from server.supervisor import run_workers


def parse_args(argv: list[str]) -> dict[str, object]:
    """Command-line flags mirror the GATEWAY_* variables and win over them."""
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="gRPC gateway to Claude's Messages API. Every flag also reads from its environment variable; "
        "the upstream key comes from ANTHROPIC_API_KEY and the upstream URL from ANTHROPIC_BASE_URL.",
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag, type=type(f.default), default=None, metavar=env_name(f.name), help=f"default {f.default!r}"
        )
    return vars(parser.parse_args(argv))


async def serve(settings: Settings) -> None:
    gateway = await build_server(settings)
    # Start-up objects live for the whole process: keep them out of the collector's young generations,
    # so that full collections stay short and do not stall the relay (p99 latency).
    gc.collect()
    gc.freeze()
    host = settings.listen.rsplit(":", 1)[0]
    # The demo and scripts wait for this line: it is printed once the port is bound and health is SERVING.
    print(f"gateway listening on {host}:{gateway.port}", flush=True)
    await terminated()
    logging.getLogger("server").info("draining: NOT_SERVING, grace %gs", settings.drain_grace)
    await gateway.drain()


def main(argv: list[str] | None = None) -> None:
    overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env(overrides=overrides)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if settings.workers > 1:
        sys.exit(run_workers(settings.workers, settings.listen, sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The SDK logs request details at DEBUG; keep it at WARNING so nothing sensitive reaches the log.
    logging.getLogger("anthropic").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
