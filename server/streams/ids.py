"""Stream ids: 128 random bits, URL-safe, so that an id names one stream and cannot be guessed."""

from __future__ import annotations

import re
import secrets

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_id() -> str:
    """A fresh stream id (22 characters of ``[A-Za-z0-9_-]``)."""
    return secrets.token_urlsafe(16)


def well_formed(stream_id: str) -> bool:
    """Whether ``stream_id`` could be one the gateway gave (1-64 characters of ``[A-Za-z0-9_-]``)."""
    return _ID.fullmatch(stream_id) is not None
