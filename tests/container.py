"""The container image, built and run on this machine with no container registry in reach.

No container registry is reachable from this project's machines; Debian's packages and PyPI are. What
the build would pull, the test arranges from those:

- **An engine**: Debian's ``docker.io`` daemon, started here as root on a socket of its own, with no
  bridge and no iptables rules (containers use the host's network and talk only over loopback).
- **The base image**: the root Dockerfile's default ``PYTHON_IMAGE``, made from Debian packages with
  ``mmdebstrap`` (the same Debian release and Python minor version as the official slim image) and
  imported under that name, so the Dockerfile is built unchanged.
- **Wheels**: fetched on the host with pip for the base image's Python and platform, and served to the
  build over loopback (``PIP_FIND_LINKS`` + ``PIP_NO_INDEX``), because a container's own TLS to the
  package index fails here.

Everything that can outlive a run does, under ``$XDG_CACHE_HOME/claude-grpc-gateway/container`` (the
engine's images and layer cache, the wheelhouse), so a second run rebuilds only what changed. A file
lock there keeps two runs from sharing one engine at once.

``python -m tests.container`` (as root) builds the image this way and prints its size and the resident
memory of an idle gateway in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The Debian package's client and daemon (the machine may also carry a newer client elsewhere on PATH).
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
MMDEBSTRAP = "/usr/bin/mmdebstrap"
IMAGE = "claude-grpc-gateway:test"
BUILD_STAGE_IMAGE = "claude-grpc-gateway:test-build"
# The packages that make a Debian base fit the Dockerfile: python3 and its venv module (which carries pip
# for the build stage), and CA certificates for the gateway's TLS to the API.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
RECIPE_LABEL = "org.claude-grpc-gateway.test.recipe"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "claude-grpc-gateway" / "container"
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_requirements() -> str | None:
    """Why this machine cannot run the engine, or None when it can."""
    if os.geteuid() != 0:
        return "the Docker engine is started as root"
    absent = [p for p in (DOCKER, DOCKERD, MMDEBSTRAP) if not Path(p).exists()]
    if absent:
        return f"missing {', '.join(absent)} (apt-get install docker.io mmdebstrap; .ci/run does)"
    return None


@dataclasses.dataclass
class Engine:
    """A running dockerd and the client command that talks to it."""

    socket: str
    log: Path
    storage_driver: str

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one docker command against this engine; on failure the error carries its output."""
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        done = subprocess.run(
            [DOCKER, *args],
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def inspect(self, *args: str) -> list[dict[str, object]]:
        found: list[dict[str, object]] = json.loads(self.docker(*args).stdout)
        return found


def start_daemon(data_root: Path, run_dir: Path, driver: str) -> tuple[subprocess.Popen[bytes], Engine]:
    socket = run_dir / "docker.sock"
    log = run_dir / f"dockerd-{driver}.log"
    args = [
        DOCKERD,
        f"--data-root={data_root}",
        f"--exec-root={run_dir / 'exec'}",
        f"--pidfile={run_dir / 'dockerd.pid'}",
        f"--host=unix://{socket}",
        f"--storage-driver={driver}",
        # No docker0 bridge, no NAT, no iptables rules on a machine others share: containers get the host's
        # network (--network host) and the test talks to them over loopback only.
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(str(socket), log, driver)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if socket.exists() and engine.docker("version", check=False, timeout=10).returncode == 0:
            return proc, engine
        time.sleep(0.2)  # polls a daemon that signals readiness only by answering
    stop_daemon(proc)
    raise RuntimeError(f"dockerd ({driver}) did not start:\n{log.read_text(errors='replace')[-3000:]}")


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_stale_daemon(cache: Path) -> None:
    """Stop the dockerd a killed run left on this cache's data root, which would keep a new one from starting."""
    pid_file = cache / "dockerd.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text(encoding="utf-8"))
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        command = []
    if command and command[0] == DOCKERD.encode() and any(str(cache).encode() in arg for arg in command):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # another process's exit: nothing to await but its disappearance
    pid_file.unlink()


def remove_run_dir(run_dir: Path) -> None:
    """Remove the daemon's runtime directory, first unmounting what dockerd leaves mounted in it (the handle of
    its network namespace)."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()]
    for target in sorted((m for m in mounts if m.startswith(f"{run_dir}/")), key=len, reverse=True):
        subprocess.run(["umount", target], check=False, capture_output=True)
    shutil.rmtree(run_dir)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """A private dockerd for the duration of the block: overlay2 where the kernel allows it, else vfs."""
    cache = cache_dir()
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stop_stale_daemon(cache)
        # The runtime directory holds the socket: a short path under /tmp keeps it within the 108-byte limit.
        run_dir = Path(tempfile.mkdtemp(prefix="gw-docker-", dir="/tmp"))
        try:
            failures = []
            for driver in ("overlay2", "vfs"):
                try:
                    proc, running = start_daemon(cache / f"docker-{driver}", run_dir, driver)
                except RuntimeError as exc:
                    failures.append(str(exc))
                    continue
                (cache / "dockerd.pid").write_text(str(proc.pid), encoding="utf-8")
                try:
                    yield running
                finally:
                    stop_daemon(proc)
                    (cache / "dockerd.pid").unlink(missing_ok=True)
                return
            raise RuntimeError("\n\n".join(failures))
        finally:
            remove_run_dir(run_dir)


def dockerfile_arg(name: str) -> str:
    """The default of a global ``ARG name=...`` in the root Dockerfile."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    if match is None:
        raise LookupError(f"the Dockerfile has no default for ARG {name}")
    return match.group(1)


def base_image(docker: Engine) -> str:
    """The Dockerfile's default base, made from Debian packages unless this engine already has it."""
    name = dockerfile_arg("PYTHON_IMAGE")
    # python:3.11-slim-bookworm -> Python 3.11 on Debian bookworm, whose python3 is that version.
    match = re.fullmatch(r"python:(\d+\.\d+)-slim-(\w+)", name)
    if match is None:
        raise LookupError(f"cannot tell the Debian release and Python version of {name}")
    python_version, suite = match.groups()
    command = [MMDEBSTRAP, "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, "-"]
    recipe = hashlib.sha256(json.dumps(command).encode()).hexdigest()[:16]
    existing = docker.docker("image", "inspect", name, check=False)
    if existing.returncode == 0 and json.loads(existing.stdout)[0]["Config"]["Labels"].get(RECIPE_LABEL) == recipe:
        return name
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        subprocess.run([*command[:-1], str(rootfs)], check=True, capture_output=True, timeout=600)
        docker.docker(
            "import",
            "--change",
            f"LABEL {RECIPE_LABEL}={recipe}",
            "--change",
            'CMD ["python3"]',
            str(rootfs),
            name,
            timeout=300,
        )
    found = docker.docker("run", "--rm", "--network=none", name, "python3", "-c", "import sys; print(sys.version)")
    if not found.stdout.startswith(python_version + "."):
        raise RuntimeError(f"Debian {suite} has Python {found.stdout.strip()}, the Dockerfile expects {python_version}")
    return name


def base_platform(docker: Engine, base: str) -> dict[str, str]:
    """The base image's Python version, ABI, libc and machine: what its wheels must be built for."""
    probe = (
        "import json, platform, sys; v = sys.version_info; "
        "print(json.dumps({'version': f'{v.major}{v.minor}', 'glibc': platform.libc_ver()[1], "
        "'machine': platform.machine()}))"
    )
    done = docker.docker("run", "--rm", "--network=none", base, "python3", "-c", probe)
    found: dict[str, str] = json.loads(done.stdout)
    return found


def project_requirements() -> list[str]:
    """What building and running the root project needs from the index: its build requirements and dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    own = client["name"]  # built from client/ inside the image, never fetched
    dependencies = [d for d in project["project"]["dependencies"] if not d.startswith(own)]
    return [*project["build-system"]["requires"], *dependencies, *client["dependencies"]]


def wheelhouse(platform: dict[str, str]) -> Path:
    """Wheels of every requirement for the base's platform, fetched on the host (cached by what they are for)."""
    requirements = project_requirements()
    key = hashlib.sha256(json.dumps([requirements, platform], sort_keys=True).encode()).hexdigest()[:16]
    target = cache_dir() / f"wheels-{key}"
    if (target / ".complete").exists():
        return target
    major, minor = platform["glibc"].split(".")[:2]
    machine = platform["machine"]
    # Every manylinux tag the base's glibc satisfies (pip expands none of them when --platform is given).
    tags = [f"manylinux_{major}_{y}_{machine}" for y in range(int(minor), 4, -1)]
    tags += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}", f"linux_{machine}"]
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(target), "--only-binary=:all:"]
    command += ["--python-version", platform["version"], "--implementation", "cp", "--abi", f"cp{platform['version']}"]
    command += [arg for tag in tags for arg in ("--platform", tag)]
    subprocess.run([*command, *requirements], check=True, capture_output=True, timeout=600)
    (target / ".complete").touch()
    return target


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """``directory`` served over HTTP on loopback for the block; yields its URL (a pip find-links page).

    The URL is a build argument, and the classic builder reuses a RUN layer only when the build arguments it
    sees are unchanged: the port is derived from the directory's name (which names its content), so that the
    same wheels get the same URL run after run, and any free port only if that one is taken."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    stable = 20000 + int(hashlib.sha256(directory.name.encode()).hexdigest(), 16) % 10000
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", stable), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def revision() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def build_image(docker: Engine) -> str:
    """``docker build .`` of the root Dockerfile, as a user runs it, with the wheels handed in; returns the tag."""
    base = base_image(docker)
    wheels = wheelhouse(base_platform(docker, base))
    with served(wheels) as url:
        # host network: the build reaches the wheel server on loopback; PIP_NO_INDEX: and nothing else.
        args = ["build", "--network=host", "--build-arg", "PIP_NO_INDEX=1", "--build-arg", f"PIP_FIND_LINKS={url}"]
        # The build stage gets a tag of its own, so that its layers are never dangling and stay cached.
        docker.docker(*args, "--target=build", f"--tag={BUILD_STAGE_IMAGE}", str(ROOT), timeout=900)
        args += ["--build-arg", f"REVISION={revision()}"]
        docker.docker(*args, f"--tag={IMAGE}", str(ROOT), timeout=900)
    # Earlier builds of the test image, now untagged, are no one's cache: drop them.
    docker.docker("image", "prune", "--force")
    return IMAGE


def run_args(pod: dict[str, Any], container: dict[str, Any], secrets: Path, env: dict[str, str]) -> list[str]:
    """``docker run`` flags that run ``container`` of the Kubernetes pod spec ``pod`` as the kubelet would: its
    user and group, read-only root, dropped capabilities, no privilege escalation, emptyDir volumes as tmpfs,
    Secret volumes from ``secrets/<secretName>/<key>`` files, its literal env plus ``env``, and its command.
    The container shares the host's network, where the test reaches it on loopback."""
    pod_context, context = pod["securityContext"], container["securityContext"]
    user = context.get("runAsUser", pod_context["runAsUser"])
    group = context.get("runAsGroup", pod_context["runAsGroup"])
    args = ["run", "--detach", "--network=host", f"--user={user}:{group}"]
    if context["readOnlyRootFilesystem"]:
        args.append("--read-only")
    args += [f"--cap-drop={capability}" for capability in context["capabilities"]["drop"]]
    if context["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            args.append(f"--tmpfs={mount['mountPath']}")
        elif "secret" in volume:
            source = secrets / volume["secret"]["secretName"]
            args.append(f"--volume={source}:{mount['mountPath']}:ro")
        else:
            raise ValueError(f"no docker equivalent for volume {volume}")
    literal = {entry["name"]: entry["value"] for entry in container.get("env", []) if "value" in entry}
    for name, value in (literal | env).items():
        args += ["--env", f"{name}={value}"]
    command = container["command"]
    return [*args, f"--entrypoint={command[0]}", IMAGE, *command[1:]]


def secret_files(root: Path, secrets: dict[str, dict[str, str]]) -> Path:
    """``secrets`` (Secret name -> key -> value) as files under ``root``, readable by any user, as the kubelet
    mounts a Secret volume (mode 0644)."""
    root.chmod(0o755)
    for name, data in secrets.items():
        folder = root / name
        folder.mkdir(mode=0o755)
        for key, value in data.items():
            (folder / key).write_text(value + "\n", encoding="utf-8")
            (folder / key).chmod(0o644)
    return root


def megabytes(size: object) -> float:
    return round(int(str(size)) / 1e6, 1)


def image_sizes(docker: Engine, image: str) -> dict[str, float]:
    """The image's size, its base's, and what the gateway's stage adds, in MB."""
    (found,) = docker.inspect("image", "inspect", image)
    (base,) = docker.inspect("image", "inspect", dockerfile_arg("PYTHON_IMAGE"))
    total, below = megabytes(found["Size"]), megabytes(base["Size"])
    return {"image": total, "base": below, "gateway": round(total - below, 1)}


def idle_rss_mib(docker: Engine, image: str) -> float:
    """Resident memory of the image's gateway, one worker, started and idle (MiB)."""
    args = ["run", "--detach", "--network=none", "--read-only", "--cap-drop=ALL", "--env=ANTHROPIC_API_KEY=unused"]
    name = docker.docker(*args, "--env=GATEWAY_WORKERS=1", image).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while "gateway listening" not in docker.docker("logs", name).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{docker.docker('logs', name).stderr}")
            time.sleep(0.2)  # polls a container that signals readiness only on its stdout
        pid = json.loads(docker.docker("container", "inspect", "--format={{json .State.Pid}}", name).stdout)
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        (kilobytes,) = re.findall(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        return round(int(kilobytes) / 1024, 1)
    finally:
        docker.docker("rm", "--force", name, check=False)


def main() -> None:
    reason = missing_requirements()
    if reason:
        raise SystemExit(f"cannot build here: {reason}")
    with engine() as docker:
        started = time.monotonic()
        image = build_image(docker)
        sizes = image_sizes(docker, image)
        print(
            f"{image} built in {time.monotonic() - started:.0f} s with {docker.storage_driver}: {sizes['image']} MB, "
            f"of which the base {sizes['base']} MB and the gateway's virtualenv {sizes['gateway']} MB"
        )
        print(f"one idle gateway worker in it: {idle_rss_mib(docker, image)} MiB resident")


if __name__ == "__main__":
    main()
