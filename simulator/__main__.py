"""`python -m simulator`: run a simulator until SIGINT or SIGTERM.

Prints `simulator listening on BASE_URL` once it accepts connections.
"""

import argparse
import asyncio

from server.signals import termination

from .pace import Pace
from .server import Simulator
from .validation import VERSIONS


async def _run(args: argparse.Namespace) -> None:
    pace = Pace(ttft=args.ttft, tokens_per_second=args.tps, ping_interval=args.ping_interval)
    async with Simulator(pace, api_key=args.api_key, host=args.host, port=args.port) as simulator:
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
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
