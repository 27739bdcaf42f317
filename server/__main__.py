"""``python -m server``: run the gateway until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import os
import sys
from dataclasses import Field, fields, replace
from importlib import metadata
from typing import Any, NoReturn

from server.app import StartupError, build_server
from server.config import Settings, env_name, flag_name, parse
from server.redaction import LogRedaction, Redactor
from server.reporting import logs
from server.signals import termination
from server.supervisor import READY, WORKER_ENV, metrics_listen_of_worker, run_workers

DESCRIPTION = """\
gRPC gateway to Claude's Messages API. Every flag can also be set by its environment variable
(shown in capitals); a flag wins over its variable. The upstream key comes from ANTHROPIC_API_KEY
(or from the file ANTHROPIC_API_KEY_FILE names, read once at start-up) and the upstream URL from
ANTHROPIC_BASE_URL (default https://api.anthropic.com); neither the key nor the file's content is
ever logged."""


def version() -> str:
    try:
        return metadata.version("claude-grpc-gateway")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def flag_value(f: Field[Any], raw: str) -> Any:
    """A flag's value, with the setting's own error message when it is not one."""
    try:
        return parse(f, raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag or setting is one line on stderr and exit 2: no usage dump before it
    (``--help`` has the usage)."""

    def error(self, message: str) -> NoReturn:
        text = f"{self.prog}: error: {message}"
        self.exit(2, logs.line(asked_format(sys.argv[1:]), text, "ERROR") + "\n")


def asked_format(argv: list[str]) -> str:
    """The log format a command line or the environment asks for, read before the settings are (their
    errors are printed in it): json if --log-format or GATEWAY_LOG_FORMAT says json."""
    asked = os.environ.get("GATEWAY_LOG_FORMAT", "")
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            asked = argv[i + 1]
        elif arg.startswith("--log-format="):
            asked = arg.partition("=")[2]
    return "json" if asked.strip().lower() == "json" else "text"


def parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting, with its variable, default and allowed values."""
    cli = Parser(prog="python -m server", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    for f in fields(Settings):
        choices = f.metadata["choices"]
        allowed = f"; one of {', '.join(choices)}" if choices else ""
        default = "unset" if f.default == "" else repr(f.default)
        cli.add_argument(
            flag_name(f.name),
            type=functools.partial(flag_value, f),
            default=None,
            metavar=env_name(f.name),
            help=f"{f.metadata['help']} (default {default}{allowed})",
        )
    return cli


async def serve(settings: Settings) -> None:
    gateway = await build_server(settings)
    # Start-up objects live for the whole process: keep them out of the collector's young generations,
    # so that full collections stay short and do not stall the relay (p99 latency).
    gc.collect()
    gc.freeze()
    host = settings.listen.rsplit(":", 1)[0]
    stop = termination()
    # The demo, the supervisor and scripts wait for this line: the port is bound, health is SERVING,
    # and SIGTERM drains.
    # With the HTTP port on, its URL follows the gRPC address (what readers of the line split off first).
    scheme = "https" if settings.tls_cert else "http"
    http_host = settings.http_listen.rpartition(":")[0]
    http = f" {scheme}://{http_host}:{gateway.http_port}/" if gateway.http_port else ""
    address = f"{host}:{gateway.port}"
    print(logs.line(settings.log_format, f"{READY}{address}{http}", listen=address), flush=True)
    if gateway.metrics is not None:
        metrics_host = settings.metrics_listen.rpartition(":")[0]
        logging.getLogger("server").info("metrics on http://%s:%d/metrics", metrics_host, gateway.metrics.port)
    await stop.wait()
    logging.getLogger("server").info("draining: NOT_SERVING, grace %gs", settings.drain_grace)
    await gateway.drain()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cli = parser()
    overrides = vars(cli.parse_args(argv))
    try:
        settings = Settings.from_env(overrides=overrides)
    except ValueError as exc:
        cli.error(str(exc))  # one line and exit code 2, as for a bad flag
    worker = os.environ.get(WORKER_ENV)
    if settings.workers > 1 and not worker:
        sys.exit(run_workers(settings.workers, settings.listen, argv, settings.log_format))
    if worker and settings.metrics_listen:
        settings = replace(settings, metrics_listen=metrics_listen_of_worker(settings.metrics_listen, int(worker)))
    logs.lean_records()  # one line per call: nothing gathered for it that the format leaves unused
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logs.formatter(settings.log_format))
    logging.basicConfig(level=settings.log_level, handlers=[stderr])
    env = os.environ
    secrets = Redactor((env.get("ANTHROPIC_API_KEY"), env.get("ANTHROPIC_AUTH_TOKEN"), settings.auth_token))
    for handler in logging.getLogger().handlers:
        handler.addFilter(LogRedaction(secrets))
    # The SDK logs request details at DEBUG; keep it at WARNING so nothing sensitive reaches the log.
    logging.getLogger("anthropic").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(logs.line(settings.log_format, f"error: {exc}", "ERROR"), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
