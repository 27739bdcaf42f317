"""``make demo``: the whole path on one machine, no API key.

Starts the gateway (``python -m server``) on a free port with the in-process simulator, streams one
reply through the sample client (``python -m client``) so the words arrive one by one, then sends
SIGTERM and waits for a clean exit. Exits non-zero if any step fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PROMPT = "Explain in one paragraph why a gRPC gateway to Claude helps teams that write Go, Java and Node."


def main() -> int:
    env = {**os.environ, "GATEWAY_UPSTREAM": "simulator", "GATEWAY_LISTEN": "127.0.0.1:0"}
    env.setdefault("GATEWAY_SIM_TPS", "20")
    env.setdefault("GATEWAY_LOG_LEVEL", "WARNING")
    print("$ GATEWAY_UPSTREAM=simulator python -m server", flush=True)
    gateway = subprocess.Popen([sys.executable, "-m", "server"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()  # "gateway listening on HOST:PORT", once it serves
        if not line.startswith("gateway listening on "):
            print(f"demo: the gateway did not start: {line!r}", file=sys.stderr)
            return 1
        target = line.split()[-1]
        print(line.strip(), flush=True)
        print(f'$ python -m client --target {target} --deadline 30 "{PROMPT}"', flush=True)
        client = subprocess.run(
            [sys.executable, "-m", "client", "--target", target, "--deadline", "30", PROMPT], check=False
        )
        if client.returncode != 0:
            return client.returncode
    finally:
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=60)
    print(f"gateway stopped (exit {code})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
