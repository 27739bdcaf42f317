"""``python -m bench.loadgen JOB_JSON``: one load-client process, running one ``jobs.Job``.

It speaks one line at a time with the orchestrator, so that several clients start together and
setup (imports, connections) costs no measured time:

    stdout  ready            connected, waiting
    stdin   go               start the job now
    stdout  opened           (hold only) every stream has its first event
    stdin   release          (hold only) cancel the streams and finish
    stdout  result JSON      the job's result, with the process's own CPU seconds and wall time

Then it exits 0. Anything unexpected is a traceback on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

from bench.jobs import RUNNERS, Clients, Job


class Lines:
    """The orchestrator's end: stdout lines out, stdin lines in."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls) -> Lines:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return cls(reader)

    async def announce(self, word: str) -> None:
        print(word, flush=True)

    async def expect(self, word: str) -> None:
        line = (await self._reader.readline()).decode().strip()
        if line != word:
            raise SystemExit(f"loadgen: expected {word!r} on stdin, got {line!r}")


async def run(job: Job) -> None:
    lines = await Lines.open()
    clients = await Clients.connect(job)
    gc.collect()
    gc.freeze()  # what setup built is long-lived: keep it out of the collector's way
    await lines.announce("ready")
    await lines.expect("go")
    cpu0, wall0 = time.process_time(), time.monotonic()
    result = await RUNNERS[job.kind](job, clients, lines)
    result["cpu_s"] = time.process_time() - cpu0
    result["wall_s"] = time.monotonic() - wall0
    await clients.close()
    print("result " + json.dumps(result), flush=True)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    asyncio.run(run(Job.from_json(sys.argv[1])))


if __name__ == "__main__":
    main()
