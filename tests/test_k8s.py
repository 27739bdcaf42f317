"""The Kubernetes manifests in k8s/: every overlay renders offline with Kustomize, validates against the
Kubernetes schemas, and agrees with the gateway's own settings, health services, drain sequence and image."""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from claude_gateway.wire import SERVICE

from server.config import Settings, env_name
from server.limits.bodies import default_budget
from server.limits.policy import parse

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("sidecar", "shared", "shared-limits")

# The oldest Kubernetes the manifests target (1.29: native sidecars on by default) and the newest schema that
# kubernetes-validate 1.37 bundles.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

GATEWAY = "gateway"  # the gateway container's name in every mode
GATEWAY_COMMAND = ["python", "-m", "server"]
SETTINGS_ENV = frozenset(env_name(f.name) for f in fields(Settings))
# GATEWAY_* variables read by the Python client (client/claude_gateway/cli.py), not by the gateway.
CLIENT_ENV = frozenset({"GATEWAY_TARGET"})
# Where the example app says how long its own drain takes (k8s/overlays/sidecar/app.yaml).
APP_SHUTDOWN_ENV = "APP_SHUTDOWN_SECONDS"
# server/app.py gives server.stop() drain_grace + 5 s before giving up: the pod has to outlast that as well.
STOP_BACKSTOP_SECONDS = 5.0
WILDCARD_HOSTS = ("0.0.0.0", "[::]")
KEY_SHAPED = re.compile(r"sk-ant-[A-Za-z0-9_-]{16,}")
# What a relayed stream costs, from docs/performance.md's table (rows 2b and 4), at the bench's pace.
DELTAS_PER_SECOND = 50

Doc = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    """The objects `kubectl kustomize k8s/overlays/<overlay>` renders, offline."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) renders the overlays; it ships on this kind of machine")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kustomize build of {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc is not None)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def deployment(overlay: str) -> Doc:
    (found,) = of_kind(render(overlay), "Deployment")
    return found


def pod_spec(overlay: str) -> Doc:
    spec: Doc = deployment(overlay)["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def gateway_container(spec: Doc) -> Doc:
    (gateway,) = [c for c in all_containers(spec) if c["name"] == GATEWAY]
    return gateway


def app_containers(spec: Doc) -> list[Doc]:
    return [c for c in all_containers(spec) if c["name"] != GATEWAY]


def env_entries(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def literal_env(container: Doc) -> dict[str, str]:
    return {name: entry["value"] for name, entry in env_entries(container).items() if "value" in entry}


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * scale
    raise ValueError(f"unexpected memory quantity {quantity!r}")


def workers(container: Doc) -> int:
    """GATEWAY_WORKERS as the kubelet resolves it: the CPU request rounded up (divisor 1)."""
    return max(1, math.ceil(cpu_cores(container["resources"]["requests"]["cpu"])))


def gateway_settings(container: Doc) -> Settings:
    """The Settings the gateway container starts with, parsed the way the gateway parses them."""
    env = {k: v for k, v in literal_env(container).items() if k in SETTINGS_ENV}
    env[env_name("workers")] = str(workers(container))
    return Settings.from_env(env)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def prestop_seconds(container: Doc) -> float:
    """How long the container's preStop hook holds off SIGTERM (only the native sleep action can be timed)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" not in hook:
        pytest.fail(f"{container['name']}: cannot time a preStop hook other than `sleep`: {hook}")
    return float(hook["sleep"]["seconds"])


def is_native_sidecar(spec: Doc, container: Doc) -> bool:
    return any(c is container for c in spec.get("initContainers", [])) and container.get("restartPolicy") == "Always"


def named_container_ports(spec: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in all_containers(spec) for p in c.get("ports", []) if "name" in p}


def performance_figure(row: str, pattern: str) -> float:
    """A number from docs/performance.md's table: the first match of ``pattern`` in the row that starts so."""
    for line in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {row} |"):
            match = re.search(pattern, line)
            assert match is not None, f"performance row {row} has no {pattern!r}"
            return float(match.group(1))
    raise AssertionError(f"docs/performance.md has no row {row}")


def idle_worker_mib() -> float:
    """An idle gateway worker's resident memory in the image, as docs/deploy.md gives it (`make image` measures it)."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(r"An idle gateway process in it holds\s+([\d.]+) MiB resident", text)
    assert match is not None, "docs/deploy.md no longer gives an idle gateway's resident memory"
    return float(match.group(1))


def body_peak_per_budget_byte() -> float:
    """A worker's peak resident memory over its idle memory per byte of its body budget, with the budget full of
    the largest requests, as docs/deploy.md gives it (`python -m tests.memory` measures it)."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(r"([\d.]+) bytes of resident memory per byte of its body budget", text)
    assert match is not None, "docs/deploy.md no longer gives a worker's peak per byte of its body budget"
    return float(match.group(1))


def dockerfile_user() -> tuple[int, int]:
    (user,) = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    return int(user[0]), int(user[1])


def base_image_reference() -> str:
    """The image the base kustomization sets: the one place that names it."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    (image,) = kustomization["images"]
    return f"{image['newName']}:{image['newTag']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_matches_the_kubernetes_schema(overlay: str, version: str) -> None:
    """Every rendered object validates offline against the strict (no unknown fields) schema of each version."""
    docs = render(overlay)
    assert docs, f"{overlay} renders nothing"
    for doc in docs:
        assert "namespace" not in doc["metadata"], f"{overlay}: apply with -n instead of fixing a namespace"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_applied_and_nothing_key_shaped_is_committed(overlay: str) -> None:
    """No overlay creates a Secret (users create their own), and no file under k8s/ holds anything key-shaped."""
    assert not of_kind(render(overlay), "Secret")
    for path in K8S.rglob("*.yaml"):
        assert not KEY_SHAPED.search(path.read_text(encoding="utf-8")), f"{path} holds something key-shaped"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_env_names_are_settings(overlay: str) -> None:
    """GATEWAY_* variables on the gateway are Settings fields whose values parse; apps set only the client's."""
    spec = pod_spec(overlay)
    gateway = gateway_container(spec)
    unknown = {n for n in env_entries(gateway) if n.startswith("GATEWAY_")} - SETTINGS_ENV
    assert not unknown, f"{overlay}: the gateway does not read {sorted(unknown)}"
    gateway_settings(gateway)  # raises on a value the gateway would refuse at start-up
    for app in app_containers(spec):
        stray = {n for n in env_entries(app) if n.startswith("GATEWAY_")} - CLIENT_ENV
        assert not stray, f"{overlay}: {app['name']} sets gateway-only variables {sorted(stray)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_logs_json_in_every_overlay_and_in_the_image(overlay: str) -> None:
    """GATEWAY_LOG_FORMAT=json on the gateway of every overlay, and in the image's own environment."""
    assert gateway_settings(gateway_container(pod_spec(overlay))).log_format == "json"
    assert image_env()["GATEWAY_LOG_FORMAT"] == "json"


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV instructions set (``NAME=value`` forms, continued lines joined)."""
    found: dict[str, str] = {}
    instruction = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV ") or instruction:
            instruction += " " + line.removeprefix("ENV ").rstrip("\\")
            if not line.endswith("\\"):
                found.update(pair.partition("=")[::2] for pair in instruction.split() if "=" in pair)
                instruction = ""
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_follow_the_cpu_request(overlay: str) -> None:
    """GATEWAY_WORKERS comes from the gateway container's own CPU request through the downward API."""
    gateway = gateway_container(pod_spec(overlay))
    ref = env_entries(gateway)["GATEWAY_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": GATEWAY, "resource": "requests.cpu", "divisor": "1"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay: str) -> None:
    """terminationGracePeriodSeconds outlasts preStop, the app's own drain (for a sidecar), drain delay and grace."""
    spec = pod_spec(overlay)
    gateway = gateway_container(spec)
    settings = gateway_settings(gateway)
    budget = prestop_seconds(gateway) + settings.drain_delay + settings.drain_grace + STOP_BACKSTOP_SECONDS
    if is_native_sidecar(spec, gateway):
        # The kubelet stops a native sidecar only after the app containers have exited: their drain comes first.
        apps = app_containers(spec)
        assert all(APP_SHUTDOWN_ENV in literal_env(c) for c in apps), f"{overlay}: say how long the app takes to stop"
        budget += max(float(literal_env(c)[APP_SHUTDOWN_ENV]) + prestop_seconds(c) for c in apps)
    assert spec["terminationGracePeriodSeconds"] > budget, f"{overlay}: SIGKILL would land inside the drain"


def test_shared_gateway_never_cuts_a_stream_on_rollout() -> None:
    """The shared gateway's drain grace is at least its longest stream, so a rollout lets every stream finish."""
    settings = gateway_settings(gateway_container(pod_spec("shared")))
    assert settings.drain_grace >= settings.max_stream_seconds
    assert settings.drain_delay > 0, "the drain delay is what replaces a preStop sleep here"
    rollout = deployment("shared")["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_grpc_health_on_a_plaintext_grpc_port(overlay: str) -> None:
    """Startup and liveness probe health "", readiness the chat service, all native grpc probes on a port the
    gateway serves health on in plaintext (the health port when the main port is TLS)."""
    gateway = gateway_container(pod_spec(overlay))
    settings = gateway_settings(gateway)
    if settings.tls_cert:
        assert settings.health_listen, f"{overlay}: kubelet grpc probes cannot speak TLS; set GATEWAY_HEALTH_LISTEN"
        port = port_of(settings.health_listen)
    else:
        port = port_of(settings.listen)
    expected = {"startupProbe": "", "livenessProbe": "", "readinessProbe": SERVICE}
    assert SERVICE == "claude_gateway.v1.ChatService"
    for probe_name, service in expected.items():
        probe = gateway[probe_name]
        handlers = {"grpc", "exec", "httpGet", "tcpSocket"} & probe.keys()
        assert handlers == {"grpc"}, f"{overlay}: {probe_name} uses {sorted(handlers)}"
        assert probe["grpc"]["port"] == port, f"{overlay}: {probe_name} probes a port without plaintext health"
        assert probe["grpc"].get("mode", "Plaintext") == "Plaintext"
        assert probe["grpc"].get("service", "") == service, f"{overlay}: {probe_name} checks the wrong service"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_listens_where_the_probes_can_reach(overlay: str) -> None:
    """The gateway binds all interfaces (and so does its health port), since the kubelet's probes dial the pod IP."""
    settings = gateway_settings(gateway_container(pod_spec(overlay)))
    for listen in filter(None, (settings.listen, settings.health_listen)):
        assert listen.rsplit(":", 1)[0] in WILDCARD_HOSTS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_has_no_prestop_hook(overlay: str) -> None:
    """No preStop sleep: GATEWAY_DRAIN_DELAY keeps the gateway answering while endpoints are removed."""
    assert "lifecycle" not in gateway_container(pod_spec(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_key_is_a_mounted_secret_file_only_the_gateway_sees(overlay: str) -> None:
    """The key reaches the gateway only as ANTHROPIC_API_KEY_FILE inside a mounted Secret; no app mounts it and no
    container gets it as a variable."""
    spec = pod_spec(overlay)
    gateway = gateway_container(spec)
    path = Path(literal_env(gateway)["ANTHROPIC_API_KEY_FILE"])
    (mount,) = [m for m in gateway["volumeMounts"] if path.parent == Path(m["mountPath"])]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert not secret.get("optional", False), "a missing Secret should stop the pod, not start a keyless gateway"
    assert path.name in {item["path"] for item in secret["items"]}
    for container in all_containers(spec):
        assert "envFrom" not in container, f"{overlay}: envFrom would hand whole Secrets to {container['name']}"
        assert "ANTHROPIC_API_KEY" not in env_entries(container), f"{overlay}: the key as a variable"
        if container is not gateway:
            names = {m["name"] for m in container.get("volumeMounts", [])}
            assert mount["name"] not in names, f"{overlay}: {container['name']} can read the API key"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nobody_runs_as_root(overlay: str) -> None:
    """The pod and every container run as the image's non-root numeric user, read-only, with no capabilities,
    no privilege escalation and the runtime's seccomp profile (the "restricted" Pod Security Standard)."""
    spec = pod_spec(overlay)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == dockerfile_user()
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key, False)
    for container in all_containers(spec):
        context = container["securityContext"]
        assert context.get("runAsUser", pod["runAsUser"]) != 0
        assert context.get("runAsNonRoot", True) is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]
        assert not context.get("privileged", False)


def test_every_gateway_image_is_the_one_the_base_sets() -> None:
    """Every container that runs the gateway's image, in every overlay, runs exactly the base's reference."""
    expected = base_image_reference()
    seen = set()
    for overlay in OVERLAYS:
        spec = pod_spec(overlay)
        assert gateway_container(spec)["image"] == expected
        for container in all_containers(spec):
            if "claude-grpc-gateway" in container["image"]:
                seen.add(container["image"])
    assert seen == {expected}
    for path in K8S.rglob("*.yaml"):
        if path != K8S / "base" / "kustomization.yaml":
            assert expected.split(":")[0] not in path.read_text(encoding="utf-8"), f"{path} names the image again"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_command_and_resources_fit_the_benchmark(overlay: str) -> None:
    """The gateway runs `python -m server`; its CPU request covers its stream limit at the benchmark's CPU per
    event, and its memory request covers idle workers plus every admitted stream, under a larger limit."""
    gateway = gateway_container(pod_spec(overlay))
    assert gateway["command"] == GATEWAY_COMMAND
    settings = gateway_settings(gateway)
    resources = gateway["resources"]
    streams = settings.workers * settings.max_concurrent_streams
    cpu_per_event = performance_figure("2b", r"paced.*?\| ([\d.]+) us") / 1e6
    assert cpu_cores(resources["requests"]["cpu"]) >= streams * DELTAS_PER_SECOND * cpu_per_event
    stream_mib = performance_figure("4", r"\| ([\d.]+) KB") / 1024
    assert mebibytes(resources["requests"]["memory"]) >= settings.workers * idle_worker_mib() + streams * stream_mib
    assert mebibytes(resources["limits"]["memory"]) > mebibytes(resources["requests"]["memory"])
    assert "cpu" not in resources["limits"], "a CPU limit throttles every stream's relay"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_limit_covers_every_worker_with_its_body_budget_full(overlay: str) -> None:
    """The memory limit holds every worker at its measured peak: idle, its admitted streams, and its body budget
    full of the largest requests (docs/deploy.md, "Memory"). The budget is the one the gateway would use in this
    container: GATEWAY_MAX_BODY_BYTES_IN_FLIGHT, else an eighth of each worker's share of this very limit."""
    gateway = gateway_container(pod_spec(overlay))
    settings = gateway_settings(gateway)
    limit = mebibytes(gateway["resources"]["limits"]["memory"])
    budget = settings.max_body_bytes_in_flight or default_budget(
        settings.max_message_bytes, settings.workers, memory=int(limit * 2**20)
    )
    stream_mib = performance_figure("4", r"\| ([\d.]+) KB") / 1024
    worker = idle_worker_mib() + settings.max_concurrent_streams * stream_mib
    worker += body_peak_per_budget_byte() * budget / 2**20
    assert limit >= settings.workers * worker, f"{overlay}: {settings.workers} workers of {worker:.0f} MiB each"


def test_sidecar_is_native_and_private_on_loopback() -> None:
    """The sidecar is a native sidecar the app dials on 127.0.0.1, no Service targets it, and the policy admits
    nothing to it."""
    docs = render("sidecar")
    spec = pod_spec("sidecar")
    gateway = gateway_container(spec)
    port = port_of(gateway_settings(gateway).listen)
    assert is_native_sidecar(spec, gateway)
    assert gateway not in spec["containers"]
    (app,) = app_containers(spec)
    assert literal_env(app)["GATEWAY_TARGET"] == f"127.0.0.1:{port}"
    assert app["command"][:2] == ["sh", "-c"]
    assert "python -m claude_gateway" in app["command"][2]
    assert not of_kind(docs, "Service")
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    (policy,) = of_kind(docs, "NetworkPolicy")
    labels = deployment("sidecar")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    named = named_container_ports(spec)
    for rule in policy["spec"].get("ingress", []):
        assert rule.get("ports"), "an ingress rule without ports would open every port, the gateway's included"
        for rule_port in rule["ports"]:
            assert named.get(rule_port["port"], rule_port["port"]) != port


def test_shared_service_is_headless_grpc_with_tls() -> None:
    """The shared Service is headless, selects the gateway pods and publishes the gRPC port, served with TLS from
    a mounted kubernetes.io/tls Secret."""
    docs = render("shared")
    spec = pod_spec("shared")
    gateway = gateway_container(spec)
    settings = gateway_settings(gateway)
    (service,) = of_kind(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    assert service["spec"]["selector"].items() <= deployment("shared")["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["appProtocol"] == "grpc"
    assert named_container_ports(spec).get(service_port["targetPort"]) == port_of(settings.listen)
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    tls = Path(settings.tls_cert).parent
    # The key names of a kubernetes.io/tls Secret, in one mounted directory.
    assert (settings.tls_cert, settings.tls_key) == (str(tls / "tls.crt"), str(tls / "tls.key"))
    (volume,) = [v for v in spec["volumes"] if v["name"] == mounts[str(tls)]]
    assert "secret" in volume


def test_shared_disruption_budget_and_autoscaler_cover_the_gateway() -> None:
    """The PodDisruptionBudget and the autoscaler act on the gateway's pods, which the autoscaler alone counts."""
    docs = render("shared")
    gateway_deployment = deployment("shared")
    labels = gateway_deployment["spec"]["template"]["metadata"]["labels"]
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", gateway_deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert "replicas" not in gateway_deployment["spec"], "a fixed count would fight the autoscaler on every apply"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def metrics_ports(settings: Settings) -> list[int]:
    """The ports the gateway serves metrics on: GATEWAY_METRICS_LISTEN's port plus 0..workers-1, one per worker."""
    if not settings.metrics_listen:
        return []
    first = port_of(settings.metrics_listen)
    return [first + number for number in range(settings.workers)]


def test_shared_network_policy_admits_clients_to_grpc_and_prometheus_to_metrics_only() -> None:
    """The shared NetworkPolicy selects the gateway pods, admits labelled clients to the gRPC port and Prometheus
    to every worker's metrics port, and nothing else."""
    docs = render("shared")
    spec = pod_spec("shared")
    (policy,) = of_kind(docs, "NetworkPolicy")
    labels = deployment("shared")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    named = named_container_ports(spec)
    settings = gateway_settings(gateway_container(spec))
    admitted = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every pod"
        (source,) = rule["from"]
        (who,) = source["podSelector"]["matchLabels"].items()
        admitted[who] = sorted(named.get(p["port"], p["port"]) for p in rule["ports"])
    assert admitted.pop(("claude-gateway/client", "true")) == [port_of(settings.listen)]
    assert admitted == {("app.kubernetes.io/name", "prometheus"): metrics_ports(settings)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_worker_metrics_port_is_declared(overlay: str) -> None:
    """Each worker's metrics port is a named container port, so that a scraper and the policy can find it."""
    spec = pod_spec(overlay)
    settings = gateway_settings(gateway_container(spec))
    declared = set(named_container_ports(spec).values())
    assert set(metrics_ports(settings)) <= declared
    if overlay == "shared":
        assert metrics_ports(settings), "the shared gateway serves metrics"


def test_the_limits_component_mounts_a_valid_policy_and_the_callers_where_the_settings_point() -> None:
    """shared-limits turns on token callers, the policy and Redis quotas: the policy it ships is one the gateway
    loads, each file setting points into a mounted volume, and the Redis URL comes from a Secret, not a value."""
    policy = parse((K8S / "components" / "callers-and-limits" / "policy.yaml").read_text(), "policy.yaml")
    assert policy.model("chat") == "claude-sonnet-4-6"
    spec = pod_spec("shared-limits")
    gateway = gateway_container(spec)
    env = {e["name"]: e for e in gateway["env"]}
    assert env["GATEWAY_CALLER_IDENTITY"]["value"] == "token"
    assert "value" not in env["GATEWAY_REDIS_URL"]
    assert env["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "claude-gateway-redis"
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for setting, volume in (("GATEWAY_CALLERS_FILE", "callers"), ("GATEWAY_POLICY_FILE", "policy")):
        assert Path(env[setting]["value"]).parent == Path(mounts[volume]), setting
    (config_map,) = of_kind(render("shared-limits"), "ConfigMap")
    assert volumes["policy"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "policy.yaml" in config_map["data"]
