"""The command lines as people use them: help, version, bad flags and addresses, the root package."""

from __future__ import annotations

import socket
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest

from server.config import Settings, flag_name
from tests.harness import PROCESS_TIMEOUT, ROOT, clean_env, process


def python(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


def test_server_help_says_what_every_flag_does_with_its_variable_and_allowed_values() -> None:
    """`python -m server --help` names each flag with its GATEWAY_ variable, its meaning and its choices."""
    done = python("-m", "server", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for f in fields(Settings):
        assert flag_name(f.name) in text
        assert " ".join(f.metadata["help"].split()[:4]) in text, f.name
    assert "one of DEBUG, INFO, WARNING, ERROR" in text
    assert "one of aiohttp, httpx" in text


@pytest.mark.parametrize("module", ["server", "simulator"])
def test_version_prints_and_exits_zero(module: str) -> None:
    """`--version` prints the program and its version."""
    done = python("-m", module, "--version")
    assert done.returncode == 0
    assert done.stdout.startswith(f"python -m {module} ")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--log-level", "verbose"], {}, "GATEWAY_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR"),
        (["--max-attempts", "three"], {}, "GATEWAY_MAX_ATTEMPTS='three' is not a valid int"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        ([], {"GATEWAY_HTTP_CLIENT": "curl"}, "GATEWAY_HTTP_CLIENT must be one of aiohttp, httpx"),
        ([], {"GATEWAY_TLS_CERT": "cert.pem"}, "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together"),
        ([], {"GATEWAY_IDLE_TIMEOUT": "30s"}, "GATEWAY_IDLE_TIMEOUT='30s' is not a valid float"),
        ([], {"GATEWAY_LISTEN": "localhost"}, "GATEWAY_LISTEN='localhost' has no port"),
        (["--http-listen", "0.0.0.0"], {}, "GATEWAY_HTTP_LISTEN='0.0.0.0' has no port"),
        (["--health-listen", "[::1]"], {}, "GATEWAY_HEALTH_LISTEN='[::1]' has no port"),
        (["--listen", "127.0.0.1:70000"], {}, "has no valid port ('70000')"),
    ],
)
def test_bad_settings_end_in_one_line_and_exit_2(args: list[str], env: dict[str, str], says: str) -> None:
    """A bad flag or variable (an address without a port too) is one line naming it and exit 2: no usage text,
    no traceback."""
    done = python("-m", "server", *args, env={**clean_env(), **env})
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("python -m server: error: ")
    assert says in line


def test_a_flag_replaces_its_variable_before_the_variable_is_read() -> None:
    """A flag wins over its variable: a bad GATEWAY_IDLE_TIMEOUT stops nothing when --idle-timeout is given."""
    env = {**clean_env(), "ANTHROPIC_API_KEY": "unused", "GATEWAY_LISTEN": "localhost", "GATEWAY_IDLE_TIMEOUT": "30s"}
    with process(["-m", "server", "--listen", "127.0.0.1:0", "--idle-timeout", "30"], env, "gateway listening on "):
        pass


def test_a_second_gateway_on_a_port_in_use_exits_non_zero_and_says_why() -> None:
    """Without GATEWAY_WORKERS, a gateway whose port is taken fails at once instead of sharing the port."""
    env = {**clean_env(), "ANTHROPIC_API_KEY": "unused", "GATEWAY_LISTEN": "127.0.0.1:0"}
    with process(["-m", "server"], env, "gateway listening on ") as (_, target):
        done = python("-m", "server", "--listen", target, env=env)
    assert done.returncode == 1
    assert f"error: cannot listen on {target}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_gateway_does_not_share_a_port_someone_else_holds() -> None:
    """A port bound by another program (with SO_REUSEPORT) is refused, not silently shared."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        target = f"127.0.0.1:{other.getsockname()[1]}"
        done = python("-m", "server", "--listen", target, env={**clean_env(), "ANTHROPIC_API_KEY": "unused"})
    assert done.returncode == 1
    assert "cannot listen on" in done.stderr


def test_root_wheel_is_the_gateway_alone_and_runs_from_an_install(tmp_path: Path) -> None:
    """`pip install ./client .` gives a gateway that starts: the gateway's wheel holds the server alone (no
    simulator, bench or tests), the wire package comes from the client's wheel it depends on, and
    `python -m server` runs from the installed files outside the repository."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT / "client", ROOT], check=True
    )
    (wheel,) = wheels.glob("claude_grpc_gateway-*.whl")
    (client,) = wheels.glob("claude_gateway_client-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"server"}
    command: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        site,
        wheel,
        client,
    ]
    subprocess.run(command, check=True)
    env = {**clean_env(), "PYTHONPATH": str(site), "ANTHROPIC_API_KEY": "unused", "GATEWAY_LISTEN": "127.0.0.1:0"}
    code = "import server, claude_gateway; print(server.__file__, claude_gateway.__file__)"
    where = python("-c", code, cwd=tmp_path, env=env)
    assert where.stdout.split() == [str(site / "server" / "__init__.py"), str(site / "claude_gateway" / "__init__.py")]
    assert python("-m", "server", "--version", cwd=tmp_path, env=env).stdout.strip() == "python -m server 0.1.0"
    with process(["-m", "server"], env, "gateway listening on ", cwd=tmp_path) as (gateway, _):
        gateway.terminate()
        assert gateway.wait(timeout=PROCESS_TIMEOUT) == 0
