"""Caller identity: which caller a call comes from, in the mode ``GATEWAY_CALLER_IDENTITY`` names.

    none   every call is from one caller, ``anonymous`` (a sidecar that only its pod reaches)
    token  ``authorization: Bearer <token>`` metadata; the callers file maps the token's sha256 to a
           caller name, so the file holds no token; it is re-read when it changes, without a restart
    mtls   the client certificate's common name (or its first subject alternative name); grpc has
           already checked the certificate against ``GATEWAY_TLS_CLIENT_CA``

``GATEWAY_AUTH_TOKEN`` is token mode's one-token shorthand: its holder is the caller ``default``; with
a callers file it is one more token. A call that names no caller gets UNAUTHENTICATED
(CALLER_UNAUTHENTICATED). Tokens never reach a log line or a message; only their hashes are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.config import Settings
from server.errors import GatewayError, Reason, fail

log = logging.getLogger("server.limits.identity")

ANONYMOUS = "anonymous"  # the one caller when callers are not identified
SHARED = "default"  # the holder of GATEWAY_AUTH_TOKEN
CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")
HASH_LINE = re.compile(r"([0-9a-fA-F]{64})\s+(\S+)")

Table = tuple[tuple[bytes, str], ...]  # (sha256 digest of a token, caller name)


class CallersFileError(ValueError):
    """The callers file cannot be read or has a bad line; the message names the file and the line."""


def token_hash(token: str) -> str:
    """The hex sha256 of ``token``: what a callers file line holds (``printf %s "$T" | sha256sum``)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_callers(text: str, source: str) -> Table:
    """The table of a callers file: one ``<sha256 hex> <caller name>`` per line, ``#`` comments, blank lines."""
    table: list[tuple[bytes, str]] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = HASH_LINE.fullmatch(line)
        if match is None:
            raise CallersFileError(
                f"{source} line {number}: expected `<sha256 hex of a token> <caller name>` "
                "(64 hex digits, spaces, a name)"
            )
        digest, name = bytes.fromhex(match[1]), match[2]
        if CALLER_NAME.fullmatch(name) is None:
            raise CallersFileError(
                f"{source} line {number}: caller name {name!r} must be 1-128 of letters, digits and ._@:/+- "
                "starting with a letter or digit"
            )
        if digest in seen:
            raise CallersFileError(f"{source} line {number}: this token hash is already listed above")
        seen.add(digest)
        table.append((digest, name))
    return tuple(table)


def read_callers(path: str) -> Table:
    """The callers file's table; CallersFileError naming the file (and line) when it is not one."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CallersFileError(f"cannot read the callers file {path}: {exc.__class__.__name__}") from None
    return parse_callers(text, path)


def _digest(path: str) -> bytes | None:
    """The sha256 of the file's content, None when it cannot be read: a rewrite shows here whatever its
    size and times (a copy that restores the mtime, a Kubernetes mount that swaps a symlink)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return None


class Identity:
    """Names the caller of each call; in token mode keeps the callers file's table fresh."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.caller_identity
        self._path = settings.callers_file
        self._every = settings.callers_reload_seconds
        self._extra: Table = (
            ((hashlib.sha256(settings.auth_token.encode()).digest(), SHARED),) if settings.auth_token else ()
        )
        if self._extra and self.mode == "none":
            self.mode = "token"  # GATEWAY_AUTH_TOKEN alone: token mode with one token
        self._digest = _digest(self._path) if self._path else None
        self._table: Table = self._extra + (read_callers(self._path) if self._path else ())
        self._by_digest = _index(self._table)
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start re-reading the callers file when it changes (token mode with a file only)."""
        if self.mode == "token" and self._path:
            self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        """Stop watching the callers file."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    @property
    def callers(self) -> tuple[str, ...]:
        """The names the callers table holds now (token mode)."""
        return tuple(name for _, name in self._table)

    def reload(self) -> bool:
        """Re-read the callers file if its content changed; a bad file keeps the table in force. True if it
        changed. Reads and hashes the whole file: run it off the event loop for a large one."""
        digest = _digest(self._path)
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            table = read_callers(self._path)
        except CallersFileError as exc:
            log.error("callers file not reloaded, the previous one stays in force: %s", exc)
            return False
        self._table = self._extra + table
        self._by_digest = _index(self._table)
        log.info("callers file reloaded: %d callers", len(table))
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await asyncio.to_thread(self.reload)  # a file of 100k callers takes milliseconds to hash and parse

    def caller(self, context: Any) -> str:
        """The caller of the call ``context`` belongs to; GatewayError UNAUTHENTICATED when it names none.

        ``context`` is a grpc.aio.ServicerContext, or any object with ``invocation_metadata()`` (and
        ``auth_context()`` for mtls).
        """
        if self.mode == "none":
            return ANONYMOUS
        if self.mode == "token":
            token = bearer(context.invocation_metadata())
            name = self._by_digest.get(hashlib.sha256(token.encode()).digest()) if token is not None else None
            if name is None:
                raise GatewayError(
                    fail(
                        Reason.CALLER_UNAUTHENTICATED,
                        "send metadata `authorization: Bearer <token>` with a known token",
                    )
                )
            return name
        name = certificate_name(context)
        if name is None:
            raise GatewayError(
                fail(Reason.CALLER_UNAUTHENTICATED, "connect with a client certificate that has a common name")
            )
        return name


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of ``authorization: Bearer <token>`` metadata, if the call has one."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
            return value[7:].strip()
    return None


def _index(table: Table) -> dict[bytes, str]:
    """Callers by the sha256 digest of their token. A call's token is hashed once and looked up once,
    whatever the number of callers; the time taken tells nothing of the token, only of its digest, which
    an attacker cannot choose without a preimage."""
    return dict(table)


def certificate_name(context: Any) -> str | None:
    """The common name of the client certificate of the call's connection, else its first SAN."""
    auth_context = getattr(context, "auth_context", None)
    if auth_context is None:  # an adapter without a TLS connection (Connect / gRPC-Web)
        return None
    properties = auth_context() or {}
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in properties.get(key, ()):
            name = value.decode() if isinstance(value, bytes) else str(value)
            if name:
                return name
    return None
