"""Each backend kind's SDK client, made into ``Upstream``s: the pool of a backends file, or the one default backend.

    anthropic   ``anthropic.AsyncAnthropic``        one member per key of its pool
    bedrock     ``anthropic.AsyncAnthropicBedrock`` one member per Bedrock API key (bearer), else one
                                                    signing with SigV4 from the AWS credentials given
                                                    (references, a profile, or the standard chain)
    vertex      ``anthropic.AsyncAnthropicVertex``  one member: an access token file, or Google's
                                                    application default credentials (refreshed by the SDK)

Every client is on the gateway's HTTP transport (``server.upstream.client.http_client``); the
Messages API's is read once and posted on the gateway's own session, Bedrock's and Vertex's go
through the SDK's ``post`` (which rewrites the path and body as each platform wants and signs or
authorizes each request). Bedrock answers in the AWS event-stream framing, read by the gateway's
own decoder (``server.upstream.eventstream``).
"""

from __future__ import annotations

import importlib
from typing import Any

import anthropic

from server.config import Settings
from server.upstream.backends import BackendsError, BackendSpec, SecretRef
from server.upstream.client import EVENT_STREAM, SSE, Upstream, http_client
from server.upstream.pool import Backend, Credential, Member, Pool, key_id
from server.upstream.state import PoolState

DEFAULT_BACKEND = "default"


def upstream_for(spec: BackendSpec, secret: str | None, aws: dict[str, str], settings: Settings) -> Upstream:
    """The ``Upstream`` of one member of ``spec``: made with ``secret`` (its key or token, if it has one)."""
    transport = http_client(settings)
    client: Any
    try:
        if spec.kind == "anthropic":
            headers = {"anthropic-version": spec.anthropic_version} if spec.anthropic_version else None
            client = anthropic.AsyncAnthropic(
                api_key=secret, base_url=spec.base_url, http_client=transport, default_headers=headers
            )
            return Upstream(client, settings)
        if spec.kind == "bedrock":
            if secret is None:
                # SigV4: the SDK signs with botocore, imported on the first request (about a second on a busy
                # machine): imported here, at start-up, instead of in the first caller's time.
                importlib.import_module("boto3")
                importlib.import_module("botocore.auth")
            client = anthropic.AsyncAnthropicBedrock(
                aws_region=spec.region,
                base_url=spec.base_url,
                api_key=secret,
                aws_access_key=aws.get("aws_access_key_id"),
                aws_secret_key=aws.get("aws_secret_access_key"),
                aws_session_token=aws.get("aws_session_token"),
                aws_profile=spec.aws_profile,
                http_client=transport,
            )
            return Upstream(client, settings, request_id_header="x-amzn-requestid", framing=EVENT_STREAM)
        client = anthropic.AsyncAnthropicVertex(
            region=spec.region or "",
            project_id=spec.project or "",
            access_token=secret,
            base_url=spec.base_url,
            http_client=transport,
        )
        return Upstream(client, settings, framing=SSE)
    except ValueError as exc:  # the SDK's words for credentials it cannot take (never the credentials)
        raise BackendsError(f"backend `{spec.name}`: {exc}") from None


async def file_pool(specs: list[BackendSpec], settings: Settings, state: PoolState) -> tuple[Pool, list[str]]:
    """The pool the backends file declares, and every secret it read (for the redactor). BackendsError naming
    a credential reference that is unset, empty or unreadable, or that the SDK refuses; nothing stays open."""
    secrets: list[str] = []
    read: list[tuple[BackendSpec, dict[str, str], list[tuple[SecretRef, str]]]] = []
    for spec in specs:  # every credential first: a missing one stops start-up before any client exists
        aws = {name: ref.read() for name, ref in spec.aws.items()}
        secrets.extend(v for k, v in aws.items() if k != "aws_access_key_id")
        refs = spec.keys or ((spec.access_token,) if spec.access_token is not None else ())
        values = [(ref, ref.read()) for ref in refs]
        secrets.extend(value for _, value in values)
        read.append((spec, aws, values))
    backends: list[Backend] = []
    try:
        for spec, aws, values in read:
            backend = Backend(spec)
            backends.append(backend)
            for ref, value in values:
                upstream = upstream_for(spec, value, aws, settings)
                backend.members.append(Member(backend, key_id(value), upstream, Credential(ref, value)))
            if not values:
                own = aws.get("aws_access_key_id", "")
                upstream = upstream_for(spec, None, aws, settings)
                backend.members.append(Member(backend, key_id(own) if own else "", upstream))
    except BaseException:
        for member in (m for b in backends for m in b.members):
            await member.upstream.aclose()
        raise
    by_name = {spec.name: aws for spec, aws, _ in read}

    def rebuild(backend: Backend, secret: str) -> Upstream:
        return upstream_for(backend.spec, secret, by_name[backend.name], settings)

    return Pool(backends, state, managed=True, rebuild=rebuild), secrets


def single_pool(client: anthropic.AsyncAnthropic, settings: Settings) -> Pool:
    """Without a backends file: the one ``anthropic`` backend of ``client``, as the gateway always had it."""
    spec = BackendSpec(name=DEFAULT_BACKEND, kind="anthropic", priority=0)
    backend = Backend(spec)
    secret = client.api_key or client.auth_token or ""
    backend.members.append(Member(backend, key_id(secret) if secret else "", Upstream(client, settings)))
    return Pool([backend], PoolState(), managed=False)
