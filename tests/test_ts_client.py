"""The TypeScript package (client/ts, @claude-gateway/client) against real gateways on the simulator.

Its own tests run under Node's test runner (``node --test client/ts/test/``) with the addresses of a
plain gateway, a TLS gateway that wants a token, and the simulator (for the Anthropic TypeScript SDK,
the reference). ``make node`` installs and builds the package (npm ci, tsc).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from simulator import Simulator
from tests.harness import API_KEY, gateway, run
from tests.test_security import TOKEN, self_signed

ROOT = Path(__file__).resolve().parents[1]
TS = ROOT / "client" / "ts"
EXAMPLE = TS / "dist" / "examples" / "stream.js"
# docs/clients.md's command that runs the example, from the repository root once `make node` has compiled it.
EXAMPLE_RUN = "node client/ts/dist/examples/stream.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (TS / "dist" / "node.js").is_file(),
    reason="node or the built TypeScript package is missing: run `make node` (npm ci and tsc) first",
)


async def node(*argv: str, env: dict[str, str], cwd: Path = ROOT) -> tuple[int, str, str]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, *argv, cwd=cwd, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_typescript_package_passes_its_node_tests_against_real_gateways(tmp_path: Path) -> None:
    """`node --test client/ts/test/` passes every test, none skipped, against a plain and a TLS+token gateway."""
    cert, key = self_signed(tmp_path)

    async def go() -> tuple[int, str, str]:
        async with gateway() as plain, gateway(tls_cert=str(cert), tls_key=str(key), auth_token=TOKEN) as guarded:
            env = {
                "GATEWAY_TARGET": plain.target,
                "SIM_URL": plain.sim.base_url,
                "SIM_KEY": API_KEY,
                "GATEWAY_TLS_TARGET": guarded.target,
                "GATEWAY_CA": str(cert),
                "GATEWAY_TEST_TOKEN": TOKEN,
            }
            return await node("--test", "--test-reporter=tap", "client/ts/test/", env=env)

    code, out, err = run(go)
    assert code == 0, out + err
    counts = dict(re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", out, re.MULTILINE))
    assert counts == {"pass": counts["pass"], "fail": "0", "skipped": "0", "cancelled": "0"}, out
    assert int(counts["pass"]) >= 14


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A final message without what only the TypeScript SDK's parse helper adds, or leaves unset."""
    message = {k: v for k, v in message.items() if k != "parsed_output"}
    if message.get("stop_details") is None:
        message.pop("stop_details", None)  # the SDK leaves it out; the gateway's accumulator has it null
    return message


def test_readme_typescript_example_prints_what_the_sdk_prints_against_the_simulator() -> None:
    """The README's TypeScript example, run by docs/clients.md's command, prints via the gateway the text and final
    message its SDK version prints."""
    assert shlex.split(EXAMPLE_RUN)[0] == "node"
    assert ROOT / shlex.split(EXAMPLE_RUN)[1] == EXAMPLE
    ours_js = EXAMPLE.read_text()
    sdk_js = ours_js.replace(
        'import { Gateway } from "@claude-gateway/client/node";', 'import Anthropic from "@anthropic-ai/sdk";'
    ).replace("new Gateway()", "new Anthropic()")
    assert "Gateway" not in sdk_js.split("\n", 1)[1].replace("gateway", "")
    sdk_example = EXAMPLE.with_name("stream.sdk.js")
    sdk_example.write_text(sdk_js)

    async def go() -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        async with gateway() as h:
            ours = await node(*shlex.split(EXAMPLE_RUN)[1:], env={"GATEWAY_TARGET": h.target})
        async with Simulator(api_key=API_KEY) as sim:  # fresh, so that its message id counter matches
            sdk = await node(str(sdk_example), env={"ANTHROPIC_BASE_URL": sim.base_url, "ANTHROPIC_API_KEY": API_KEY})
        return ours, sdk

    try:
        (code, out, err), (sdk_code, sdk_out, sdk_err) = run(go)
    finally:
        sdk_example.unlink()
    assert code == 0, err
    assert sdk_code == 0, sdk_err
    text, message = out.splitlines()
    sdk_text, sdk_message = sdk_out.splitlines()
    assert text.startswith("Hello the simulator")
    assert text == sdk_text
    assert json.loads(message)["id"] == "msg_sim00000000000000001"
    assert comparable(json.loads(message)) == comparable(json.loads(sdk_message))


def test_readme_shows_the_typescript_example_verbatim() -> None:
    """The TypeScript program of the README and docs/clients.md is client/ts/examples/stream.ts, the file the test
    above compiles and runs."""
    example = (TS / "examples" / "stream.ts").read_text()
    assert example in (ROOT / "README.md").read_text()
    assert example in (ROOT / "docs" / "clients.md").read_text()
    assert (
        f"```sh\nmake node\nGATEWAY_TARGET=127.0.0.1:50051 {EXAMPLE_RUN}\n```"
        in (ROOT / "docs" / "clients.md").read_text()
    )
