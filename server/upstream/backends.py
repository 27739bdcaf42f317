"""The backends file: the upstreams a gateway may send a call to, in priority order (``GATEWAY_BACKENDS_FILE``).

Read and checked once at start-up; every error names the file and the line, and a gateway with a
bad file does not start. Credentials are given by reference, never inline: ``{env: NAME}`` (an
environment variable) or ``{file: PATH}`` (a file, e.g. a mounted Secret, read again when it
changes). Without the file the gateway has one ``anthropic`` backend from ``ANTHROPIC_API_KEY``
and ``ANTHROPIC_BASE_URL``, as it always had::

    backends:
      - name: anthropic               # [a-z0-9._-], 1-64: the name in trailers, logs and metrics
        kind: anthropic               # anthropic | bedrock | vertex
        base_url: https://api.anthropic.com    # optional
        keys:                         # a key pool: one or more API keys
          - env: ANTHROPIC_KEY_A
          - file: /run/secrets/anthropic-b
      - name: bedrock-us
        kind: bedrock
        region: us-east-1
        # credentials: none given = the standard AWS chain (environment, shared file, web identity);
        # or keys: [{env: AWS_BEARER_TOKEN_BEDROCK}] (Bedrock API keys, a pool like the above);
        # or aws_access_key_id / aws_secret_access_key / aws_session_token references, or aws_profile
        anthropic_version: bedrock-2023-05-31   # the default
        models:                       # which models it serves, and each one's id here
          claude-sonnet-4-6: us.anthropic.claude-sonnet-4-6-v1:0
      - name: vertex
        kind: vertex
        region: us-east5
        project: my-project
        access_token: {file: /var/run/gcp/token}   # optional; absent: application default credentials
        models: {claude-sonnet-4-6: claude-sonnet-4-6}

Per backend, optionally: ``models`` (absent: any model, under the name the caller's request has
once the policy's aliases resolved), ``priority`` (a whole number; lower is tried first; default:
the backend's place in the list), ``weight`` (how traffic is shared among backends of one
priority; default 1), ``anthropic_version``, ``first_event_timeout`` (seconds one attempt on this
backend may wait for its first content delta before the call moves on) and ``prices_file`` (a price
table in ``GATEWAY_PRICES_FILE``'s format for the calls this backend serves, where it is billed
otherwise).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from server.yamlfile import Nodes, compose

KINDS = ("anthropic", "bedrock", "vertex")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# The anthropic_version each platform's docs name; the Messages API's is a header the SDK sets.
DEFAULT_VERSIONS: Mapping[str, str] = {"bedrock": "bedrock-2023-05-31", "vertex": "vertex-2023-10-16"}
COMMON = (
    "name",
    "kind",
    "base_url",
    "models",
    "priority",
    "weight",
    "anthropic_version",
    "first_event_timeout",
    "prices_file",
)
KEYS_BY_KIND: Mapping[str, tuple[str, ...]] = {
    "anthropic": (*COMMON, "keys"),
    "bedrock": (
        *COMMON,
        "region",
        "keys",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_profile",
    ),
    "vertex": (*COMMON, "region", "project", "access_token"),
}
AWS_SECRETS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


class BackendsError(ValueError):
    """The backends file cannot be read or says something wrong; the message names the file and line."""


@dataclass(frozen=True)
class SecretRef:
    """Where a credential is: an environment variable or a file. Its text says where, never what."""

    env: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return f"env {self.env}" if self.env is not None else f"file {self.file}"

    def read(self) -> str:
        """The credential (surrounding whitespace dropped); BackendsError naming the reference if absent or empty."""
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
        else:
            assert self.file is not None
            try:
                value = Path(self.file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise BackendsError(f"cannot read the credential in {self}: {reason}") from None
        if not value:
            raise BackendsError(f"the credential in {self} is empty or unset")
        return value


@dataclass(frozen=True)
class BackendSpec:
    """One backend as the file declares it."""

    name: str
    kind: str
    priority: int
    base_url: str | None = None
    keys: tuple[SecretRef, ...] = ()  # anthropic: API keys; bedrock: Bedrock API keys (bearer)
    region: str | None = None
    project: str | None = None
    access_token: SecretRef | None = None  # vertex
    aws: Mapping[str, SecretRef] = field(default_factory=dict)  # aws_access_key_id... by name
    aws_profile: str | None = None
    models: Mapping[str, str] | None = None  # the caller's model id -> this backend's; None: any, as named
    weight: float = 1.0
    anthropic_version: str | None = None
    first_event_timeout: float | None = None
    prices_file: str | None = None  # a TOML price table (GATEWAY_PRICES_FILE's format) for the calls it serves

    @property
    def version(self) -> str | None:
        """The anthropic_version this backend needs (bedrock and vertex: in the body; anthropic: a header)."""
        return self.anthropic_version or DEFAULT_VERSIONS.get(self.kind)

    def model_id(self, model: str) -> str | None:
        """This backend's id of ``model``; None when it does not serve it."""
        if self.models is None:
            return model
        return self.models.get(model)


def load(path: str) -> list[BackendSpec]:
    """The backends in ``path``, in priority order; BackendsError naming the file and line of the first problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise BackendsError(f"cannot read the backends file {path}: {reason}") from None
    return parse(text, path)


def parse(text: str, source: str = "backends") -> list[BackendSpec]:
    """The backends a YAML text declares; BackendsError naming ``source`` and the line of the first problem."""
    root = compose(text, source, BackendsError)
    if root is None:
        raise BackendsError(f"{source}: empty; list the upstreams under `backends:`")
    at = _Reader(source, BackendsError)
    top = at.mapping(root, "the backends file", ("backends",))
    if "backends" not in top:
        raise at.error(root, "no `backends:`: list the upstreams, in priority order")
    entries = at.sequence(top["backends"], "`backends`")
    if not entries:
        raise at.error(top["backends"], "`backends` lists no backend")
    specs: list[BackendSpec] = []
    for position, node in enumerate(entries):
        spec = at.backend(node, position)
        if any(s.name == spec.name for s in specs):
            raise at.error(node, f"backend name `{spec.name}` is used twice")
        specs.append(spec)
    return sorted(specs, key=lambda s: s.priority)


class _Reader(Nodes):
    def backend(self, node: yaml.Node, position: int) -> BackendSpec:
        first = self.mapping(node, f"backend {position + 1}")
        if "name" not in first:
            raise self.error(node, f"backend {position + 1} has no `name`")
        name = self.text(first["name"], "`name`")
        if NAME.fullmatch(name) is None:
            raise self.error(first["name"], f"backend name {name!r} must be 1-64 of a-z, 0-9, '.', '_', '-'")
        what = f"backend `{name}`"
        if "kind" not in first:
            raise self.error(node, f"{what} has no `kind` (one of {', '.join(KINDS)})")
        kind = self.text(first["kind"], f"`kind` of {what}")
        if kind not in KINDS:
            raise self.error(first["kind"], f"`kind` of {what} must be one of {', '.join(KINDS)}, not {kind!r}")
        keys = self.mapping(node, what, KEYS_BY_KIND[kind])

        def text(key: str) -> str | None:
            return self.text(keys[key], f"`{key}` of {what}") if key in keys else None

        for required in {"bedrock": ("region",), "vertex": ("region", "project")}.get(kind, ()):
            if required not in keys:
                raise self.error(node, f"{what} ({kind}) needs `{required}`")
        secrets = tuple(self.secret(k, f"an entry of `keys` of {what}") for k in self.keys_of(keys, what))
        if kind == "anthropic" and not secrets:
            raise self.error(
                node, f"{what} (anthropic) needs `keys`: one or more API keys, each {{env: NAME}} or {{file: PATH}}"
            )
        aws = {k: self.secret(keys[k], f"`{k}` of {what}") for k in AWS_SECRETS if k in keys}
        if aws and ("aws_access_key_id" not in aws or "aws_secret_access_key" not in aws):
            raise self.error(node, f"{what}: `aws_access_key_id` and `aws_secret_access_key` go together")
        if secrets and (aws or "aws_profile" in keys):
            raise self.error(node, f"{what}: `keys` (Bedrock API keys) and AWS credentials exclude each other")
        if aws and "aws_profile" in keys:
            raise self.error(node, f"{what}: `aws_profile` and AWS key references exclude each other")
        models = None
        if "models" in keys:
            entries = self.mapping(keys["models"], f"`models` of {what}")
            if not entries:
                raise self.error(keys["models"], f"`models` of {what} is empty: leave it out to serve any model")
            models = {model: self.text(value, f"the id of `{model}` on {what}") for model, value in entries.items()}
        base_url = text("base_url")
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise self.error(keys["base_url"], f"`base_url` of {what} must start with http:// or https://")
        return BackendSpec(
            name=name,
            kind=kind,
            priority=self.priority(keys, what, position),
            base_url=base_url,
            keys=secrets,
            region=text("region"),
            project=text("project"),
            access_token=self.secret(keys["access_token"], f"`access_token` of {what}")
            if "access_token" in keys
            else None,
            aws=aws,
            aws_profile=text("aws_profile"),
            models=models,
            weight=self.number(keys["weight"], f"`weight` of {what}") if "weight" in keys else 1.0,
            anthropic_version=text("anthropic_version"),
            prices_file=text("prices_file"),
            first_event_timeout=(
                self.number(keys["first_event_timeout"], f"`first_event_timeout` of {what}")
                if "first_event_timeout" in keys
                else None
            ),
        )

    def keys_of(self, keys: dict[str, yaml.Node], what: str) -> list[yaml.Node]:
        if "keys" not in keys:
            return []
        entries = self.sequence(keys["keys"], f"`keys` of {what}")
        if not entries:
            raise self.error(keys["keys"], f"`keys` of {what} is empty")
        return entries

    def priority(self, keys: dict[str, yaml.Node], what: str, position: int) -> int:
        if "priority" not in keys:
            return position
        node = keys["priority"]
        value = yaml.safe_load(node.value) if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int") else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(node, f"`priority` of {what} must be a whole number of at least 0")
        return value

    def secret(self, node: yaml.Node, what: str) -> SecretRef:
        """``{env: NAME}`` or ``{file: PATH}``; a bare string is refused, so no secret is ever written inline."""
        if isinstance(node, yaml.ScalarNode):
            raise self.error(
                node, f"{what} must be a reference, {{env: NAME}} or {{file: PATH}}, never the secret itself"
            )
        ref = self.mapping(node, what, ("env", "file"))
        if len(ref) != 1:
            raise self.error(node, f"{what} must name exactly one of `env` or `file`")
        ((where, value),) = ref.items()
        target = self.text(value, f"`{where}` of {what}")
        return SecretRef(env=target) if where == "env" else SecretRef(file=target)
