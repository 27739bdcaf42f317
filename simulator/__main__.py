"""`python -m simulator`: run a simulator until SIGINT or SIGTERM.

Prints `simulator listening on BASE_URL` once it accepts connections. By default it serves all
three platforms on one port; `--platform` (repeatable) limits it to some, so that several
processes, one per port, can each play one backend.
"""

import argparse
import asyncio
from pathlib import Path

from server.signals import termination

from . import catalog
from .pace import Pace
from .platforms import Platform
from .ratelimits import Limits
from .server import Simulator
from .validation import VERSIONS

_SIZED = ("requests", "input-tokens", "output-tokens")  # the `tokens` bucket is their sum


def _limit(text: str) -> tuple[str, int]:
    kind, _, value = text.partition("=")
    if kind not in _SIZED or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected requests=N, input-tokens=N or output-tokens=N, not {text!r}")
    return kind, int(value)


async def _run(args: argparse.Namespace) -> None:
    pace = Pace(ttft=args.ttft, tokens_per_second=args.tps, ping_interval=args.ping_interval)
    sizes = {kind.replace("-", "_"): value for kind, value in args.rate_limit}
    limits = Limits(**sizes, window=args.rate_limit_window, enforce=args.enforce_rate_limits)
    async with Simulator(
        pace,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        keys=args.key,
        platforms=args.platform or tuple(Platform),
        name=args.name,
        limits=limits,
        models=catalog.read(args.models),
    ) as simulator:
        stop = termination()
        print(f"simulator listening on {simulator.base_url}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s 0.1.0 (API versions {', '.join(VERSIONS)})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--tps", type=float, default=0.0, help="tokens per second (0: unpaced)")
    parser.add_argument("--ping-interval", type=float, default=0.0, help="ping during longer waits (0: never)")
    parser.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    parser.add_argument("--key", action="append", help="a key accepted (repeatable; default: any non-empty key)")
    parser.add_argument(
        "--platform", action="append", choices=[p.value for p in Platform], help="serve only this platform (repeatable)"
    )
    parser.add_argument("--name", help="the name a directive's name= scope matches")
    parser.add_argument(
        "--rate-limit",
        action="append",
        type=_limit,
        default=[],
        metavar="KIND=N",
        help="each key's bucket size: requests=N, input-tokens=N or output-tokens=N (repeatable)",
    )
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="seconds for an empty bucket to fill")
    parser.add_argument(
        "--enforce-rate-limits", action="store_true", help="answer 429 with retry-after to a request that does not fit"
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=catalog.MODELS_FILE,
        metavar="FILE",
        help="the model names served on the Messages API, one a line; others get a 404 not_found_error "
        "(default: simulator/models.txt)",
    )
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
