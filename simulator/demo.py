"""``make demo``: the whole path on one machine, no API key.

Starts the simulator (``python -m simulator``) and the gateway (``python -m server``) aimed at it by
ANTHROPIC_BASE_URL, exactly as it would be aimed at the real API; streams one reply through the
sample client (``python -m client``) so the words arrive one by one; prints the URL of the chat page
the gateway serves on its HTTP port (and, at a terminal, waits for Enter so it can be opened); then
stops both with SIGTERM
and waits for clean exits. Each command is printed as it can be pasted into another shell. Exits
non-zero if any step fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PROMPT = "Explain in one paragraph why a gRPC gateway to Claude helps teams that write Go, Java and Node."
DEMO_KEY = "sk-ant-demo-not-a-real-key"  # the simulator accepts any key; the real API needs yours


def python() -> str:
    """This interpreter, as a path that works when pasted in the repository (``.venv/bin/python``)."""
    with contextlib.suppress(ValueError):
        return str(Path(sys.executable).relative_to(Path.cwd()))
    return sys.executable


def show(env: dict[str, str], args: list[str]) -> None:
    assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    print("$ " + " ".join([*assignments, python(), *map(shlex.quote, args)]), flush=True)


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], ready: str) -> Iterator[list[str]]:
    """Run ``python ARGS`` with ``env`` added; yield the addresses on its ready line; SIGTERM it after."""
    show(env, args)
    proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(ready):
            raise SystemExit(f"demo: {args[1]} did not start: {line!r}")
        print(line.strip(), flush=True)
        yield line[len(ready) :].split()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"{args[1]} stopped (exit {code})", flush=True)
        if code != 0:
            raise SystemExit(code)


def main() -> int:
    sim = ["-m", "simulator", "--port", "0", "--ttft", "0.3", "--tps", "20"]
    with started(sim, {}, "simulator listening on ") as (base_url, *_):
        gateway_env = {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": DEMO_KEY,
            "GATEWAY_LISTEN": "127.0.0.1:0",
            "GATEWAY_HTTP_LISTEN": "127.0.0.1:0",
            "GATEWAY_CHAT_PAGE": "true",
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        with started(["-m", "server"], gateway_env, "gateway listening on ") as (target, page):
            client = ["-m", "client", "--target", target, "--deadline", "30", PROMPT]
            show({}, client)
            done = subprocess.run([sys.executable, *client], check=False)
            if done.returncode != 0:
                return done.returncode
            print(f"\nThe chat page, the same ChatService over Connect from your browser: {page}", flush=True)
            if sys.stdin.isatty():  # someone is there to open it: keep both running until they are done
                with contextlib.suppress(EOFError, KeyboardInterrupt):
                    input("Open it now; press Enter to stop the demo. ")
    print(YOURSELF, flush=True)
    return 0


YOURSELF = """
To run the same yourself, from the repository, each in its own shell (or `make sim` and `make serve-sim`):
  .venv/bin/python -m simulator --port 8787 --tps 20
  ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=any GATEWAY_HTTP_LISTEN=127.0.0.1:8080 \\
    GATEWAY_CHAT_PAGE=true .venv/bin/python -m server          # chat page: http://127.0.0.1:8080/
  .venv/bin/python -m client --deadline 60 "Hello, gateway"
Against the real API, give the gateway only your key: ANTHROPIC_API_KEY=sk-ant-... .venv/bin/python -m server"""


if __name__ == "__main__":
    sys.exit(main())
