"""``python -m bench.upstream --record PATH``: the simulator, as the benchmark's upstream process.

It is ``simulator.Simulator`` with two additions, both outside the code it measures:

- every text delta is stamped with its send time as it is written (see ``stamps``), by the
  ``Connection`` subclass it gives the simulator;
- on SIGUSR1 it writes the records of the tagged requests seen so far (``received_at``,
  ``closed_at``, ``events_sent``, in CLOCK_MONOTONIC seconds, the same clock as every other
  process) to the ``--record`` file as JSON, forgets all records, and prints ``recorded N``.

Prints ``simulator listening on BASE_URL`` once it accepts connections; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from bench.stamps import stamp_frame
from bench.workload import tag_of
from server.signals import termination
from simulator import Pace, Simulator
from simulator.connection import Connection
from simulator.model import prompt_of


class StampingConnection(Connection):
    """A simulator connection that stamps each text delta with the time it is written.

    Its ``idle`` is a plain sleep: the simulator's own (``wait_for`` on the close event) costs a
    task per paced event, which on a shared core would be taken from the load clients. The only
    difference is that a stream whose client left ends at its next write instead of at once; the
    close itself is still seen, and recorded, the moment it happens.
    """

    async def send_chunk(self, data: bytes) -> bool:
        return await super().send_chunk(stamp_frame(data))

    async def idle(self, seconds: float) -> bool:
        if seconds > 0 and not self.closed.is_set():
            await asyncio.sleep(seconds)
        return not self.closed.is_set()


def records(simulator: Simulator) -> list[dict[str, object]]:
    """The tagged requests the simulator has seen, as JSON-ready dicts."""
    out: list[dict[str, object]] = []
    for record in simulator.requests:
        body = record.body
        tag = tag_of(prompt_of(body)) if isinstance(body, dict) and isinstance(body.get("messages"), list) else None
        if tag is not None:
            out.append(
                {
                    "tag": tag,
                    "received_at": record.received_at,
                    "closed_at": record.closed_at,
                    "events_sent": record.events_sent,
                    "status": record.status,
                    "request_id": record.request_id,
                }
            )
    return out


def dump(simulator: Simulator, path: Path) -> None:
    """Write the tagged records to ``path``, forget every record, and say so on stdout."""
    found = records(simulator)
    path.write_text(json.dumps(found))
    simulator.requests.clear()
    print(f"recorded {len(found)}", flush=True)


async def serve(record_path: Path, port: int) -> None:
    """Run the stamping simulator until SIGTERM or SIGINT."""
    async with Simulator(Pace(), port=port, connection=StampingConnection) as simulator:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump, simulator, record_path)
        stop = termination()
        print(f"simulator listening on {simulator.base_url}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--record", type=Path, required=True, help="where SIGUSR1 writes the records")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.record, args.port))


if __name__ == "__main__":
    main()
