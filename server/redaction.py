"""What the upstream says, made safe to pass on: secrets cut out, sizes bounded, ids checked.

Everything the upstream controls is untrusted. Before a failure reaches the caller (status message,
ErrorInfo) or the log, ``Redactor.failure`` replaces every occurrence of the gateway's secrets (the
Anthropic API key or token, the callers' token) and bounds the message; ``request_id`` passes an
upstream request id on only when it looks like one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable

from server.errors import Failure

MASK = "[REDACTED]"
MAX_MESSAGE_CHARS = 1024  # a status message travels in trailers, which clients cap (8 KiB by default)
_REQUEST_ID = re.compile(r"req_[A-Za-z0-9_-]{1,120}")
# What a model name looks like, from a caller (``params.model``, a policy alias) or from the upstream
# (``message_start.message.model``): anything else is never repeated in a trailer, a log line or a metric
# label. Room for the platforms' ids (Bedrock's ``anthropic.claude-...-v2:0`` and ARNs, Vertex's ``...@date``).
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
MODEL_ID_RULE = "1-128 of letters, digits and ._:@/- starting with a letter or digit"
_MIN_SECRET = 8  # shorter values would mask ordinary words; a real key or token is far longer


def shown(value: str, limit: int = 64) -> str:
    """A caller's string as an error message may repeat it: at most ``limit`` characters, then an
    ellipsis and the length, so a huge value never reaches a trailer or a log line whole."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def model_id(value: object) -> str | None:
    """``value`` if it looks like a model name (``MODEL_ID``), else None."""
    return value if isinstance(value, str) and MODEL_ID.fullmatch(value) else None


def request_id(value: object) -> str | None:
    """``value`` if it looks like an upstream request id (``req_`` and up to 120 safe characters)."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else None


class Scanner:
    """Finds the secrets in the reads of one upstream response. Each read is searched together with the last
    ``len(secret) - 1`` bytes of what came before, so a secret split across two reads (by the network, or by
    an upstream that means to) is found too."""

    __slots__ = ("_carry", "_keep", "_secrets")

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self._secrets = secrets
        self._keep = max(map(len, secrets), default=1) - 1
        self._carry = b""

    def found(self, read: bytes) -> bool:
        """Whether ``read``, or its seam with the reads before, holds a secret."""
        keep = self._keep
        if not keep:
            return False
        window = self._carry + read  # one copy, one search per secret
        for secret in self._secrets:
            if secret in window:
                return True
        self._carry = window[-keep:]
        return False


class Redactor:
    """Cuts the given secrets out of upstream text."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True))
        self._encoded = tuple(s.encode() for s in self._secrets)

    def scanner(self) -> Scanner:
        """A scanner for the secrets in the reads of one upstream response."""
        return Scanner(self._encoded)

    def holds(self, texts: Iterable[str]) -> bool:
        """Whether any of ``texts`` holds a secret (each searched on its own: nothing is carried between them)."""
        secrets = self._secrets
        for text in texts:
            for secret in secrets:
                if secret in text:
                    return True
        return False

    def text(self, text: str) -> str:
        """``text`` with every secret replaced by [REDACTED]."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def request_id(self, value: object) -> str | None:
        """``value`` if it looks like a request id and holds no secret."""
        rid = request_id(value)
        return rid if rid is not None and self.text(rid) == rid else None

    def failure(self, failure: Failure) -> Failure:
        """``failure`` safe to show: message redacted and bounded, request id dropped unless clean."""
        message = self.text(failure.message)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "... (cut)"
        rid = self.request_id(failure.request_id)
        if message is failure.message and rid == failure.request_id:
            return failure
        return dataclasses.replace(failure, message=message, request_id=rid)


class LogRedaction(logging.Filter):
    """A handler filter that cuts the secrets out of every record: message, arguments and traceback.
    Defence in depth: the gateway's own lines carry no upstream text, but a library's might."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._redactor.text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor.text(record.exc_text)
        return True
