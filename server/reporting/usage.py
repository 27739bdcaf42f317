"""Token usage of one call, merged exactly as the Messages API defines it.

``message_start.message.usage`` carries the input side (and a first output count);
``message_delta.usage`` carries cumulative totals, not increments. In both, a key that is absent or
null means "unchanged": absent is not zero. Nested objects (``cache_creation``, ``server_tool_use``,
``output_tokens_details``) merge key by key under the same rule.

``Usage.values`` is the merged usage object in the API's own JSON shape; the properties read the
numbers the gateway prices and counts. The upstream's numbers are untrusted: a usage object with a
count that is not a whole number from 0 to ``MAX_COUNT`` (NaN, an infinity, 1.5, -1, 2**40), a key that
is not a usage name, a string past ``MAX_TEXT`` characters or more than ``MAX_ENTRIES`` values is not
merged, and the call's usage is marked invalid (``invalid`` says why): its cost is unknown, and no JSON
the gateway writes (trailer, log line) holds a number it did not check. A ``Usage`` is the one record of
a call's tokens: the trailer, the log line, the metrics, the trace and quota accounting (admission) all
read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

NESTED = ("cache_creation", "server_tool_use", "output_tokens_details")
MAX_COUNT = 10_000_000  # tokens (or tool requests) one call may report of a kind: ten times the largest context
MAX_TEXT = 64  # characters of a string value (``service_tier``)
MAX_ENTRIES = 32  # values in the merged object, nested ones counted: the API's have about ten
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")  # a usage name, as the API writes them
# Usage names seen to match ``_KEY``, so that each is matched once: the API's are about twenty.
_NAMES: set[str] = set()
_MAX_NAMES = 256
_SCALARS = frozenset({int, float, str, bool, type(None)})  # JSON's: never a Mapping, known without the ABC check


@dataclass(eq=False)
class Usage:
    """The merged usage of one call so far; ``seen`` once a message_start or message_delta carried any."""

    values: dict[str, Any] = field(default_factory=dict)
    seen: bool = False
    invalid: str | None = None  # why a usage object the upstream sent was not merged; None while none was refused

    def merge(self, usage: Mapping[str, Any]) -> None:
        """Fold one usage object in: every non-null key replaces the value so far; nested objects merge by key.
        An object that does not check (``problem``) is left out whole, and marks the usage invalid."""
        self.seen = True
        problem = _problem(usage)
        if (
            problem is None
            and _size(self.values) + _size(usage) > MAX_ENTRIES
            and _entries(self.values, usage) > MAX_ENTRIES
        ):
            problem = f"more than {MAX_ENTRIES} values"
        if problem is not None:
            self.invalid = self.invalid or problem
            return
        values = self.values
        for key, value in usage.items():
            if value is None:
                continue
            if key in NESTED and _is_object(value):
                inner = values.get(key)
                merged = dict(inner) if isinstance(inner, dict) else {}
                merged.update((k, v) for k, v in value.items() if v is not None)
                values[key] = merged
            else:
                values[key] = value

    def observe(self, name: str, obj: Mapping[str, Any]) -> None:
        """Fold in the usage of a message_start or message_delta event (other events carry none)."""
        if name == "message_start":
            message = obj.get("message")
            usage = message.get("usage") if _is_object(message) else None
        elif name == "message_delta":
            usage = obj.get("usage")
        else:
            return
        if _is_object(usage):
            self.merge(usage)

    def _count(self, key: str, inner: str | None = None) -> int:
        value = self.values.get(key)
        if inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        return value if type(value) is int and value >= 0 else 0

    @property
    def input_tokens(self) -> int:
        """Uncached input tokens."""
        return self._count("input_tokens")

    @property
    def output_tokens(self) -> int:
        """Output tokens, thinking included."""
        return self._count("output_tokens")

    @property
    def cache_read_tokens(self) -> int:
        """Input tokens read from the prompt cache."""
        return self._count("cache_read_input_tokens")

    @property
    def cache_write_1h_tokens(self) -> int:
        """Input tokens written to the cache with a 1 hour lifetime."""
        return self._count("cache_creation", "ephemeral_1h_input_tokens")

    @property
    def cache_write_5m_tokens(self) -> int:
        """Input tokens written to the cache with a 5 minute lifetime: the breakdown's 5m count, plus any
        part of ``cache_creation_input_tokens`` the breakdown does not explain (5 minutes is the default)."""
        by_ttl = self._count("cache_creation", "ephemeral_5m_input_tokens")
        unexplained = self._count("cache_creation_input_tokens") - by_ttl - self.cache_write_1h_tokens
        return by_ttl + max(unexplained, 0)

    @property
    def thinking_tokens(self) -> int | None:
        """Thinking tokens, where the API reports them (part of ``output_tokens``); None otherwise."""
        details = self.values.get("output_tokens_details")
        value = details.get("thinking_tokens") if isinstance(details, dict) else None
        return value if type(value) is int else None

    @property
    def web_searches(self) -> int:
        """Web searches the server tool ran (``server_tool_use.web_search_requests``), priced per thousand."""
        return self._count("server_tool_use", "web_search_requests")

    def tokens(self) -> dict[str, int]:
        """Every priced token count by type: the rows of the token metrics, the columns of the price table."""
        return {
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cache_read": self.cache_read_tokens,
            "cache_write_5m": self.cache_write_5m_tokens,
            "cache_write_1h": self.cache_write_1h_tokens,
        }


def _problem(usage: Mapping[str, Any]) -> str | None:
    """Why ``usage`` (one usage object from the upstream) cannot be merged; None if it can."""
    for key, value in usage.items():
        if key not in _NAMES and not _is_name(key):
            return "a key that is not a usage name"
        if _is_object(value):
            for inner, item in value.items():
                if inner not in _NAMES and not _is_name(inner):
                    return f"{key}: a key that is not a usage name"
                problem = _value_problem(item)
                if problem is not None:
                    return f"{key}.{inner} {problem}"
        else:
            problem = _value_problem(value)
            if problem is not None:
                return f"{key} {problem}"
    return None


def _is_name(key: object) -> bool:
    """Whether ``key`` is a usage name (``_KEY``); one that is is remembered, up to ``_MAX_NAMES`` of them."""
    if type(key) is not str or _KEY.fullmatch(key) is None:
        return False
    if len(_NAMES) < _MAX_NAMES:
        _NAMES.add(key)
    return True


def _value_problem(value: Any) -> str | None:
    kind = type(value)
    if value is None or kind is bool:
        return None
    if kind is int:
        return None if 0 <= value <= MAX_COUNT else f"is {value}, not a count from 0 to {MAX_COUNT}"
    if kind is float:
        return "is not a whole number"  # NaN and the infinities too; the value is not repeated
    if kind is str:
        return None if len(value) <= MAX_TEXT else f"is a string of more than {MAX_TEXT} characters"
    return f"is a {kind.__name__}, not a count"


def _is_object(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether ``value`` is a JSON object (a Mapping); a parsed dict or one of JSON's scalars is answered without
    the ABC's ``isinstance``, which costs several times a type comparison."""
    kind = type(value)
    return kind is dict or (kind not in _SCALARS and isinstance(value, Mapping))


def _size(values: Mapping[str, Any]) -> int:
    """How many values ``values`` holds, nested ones counted: at least ``_entries`` of it and anything merged in."""
    size = 0
    for value in values.values():
        size += len(value) if _is_object(value) else 1
    return size


def _entries(values: Mapping[str, Any], usage: Mapping[str, Any]) -> int:
    """How many values (nested ones counted) ``values`` would hold with ``usage`` merged in."""
    keys: set[tuple[str, str | None]] = {(k, None) for k, v in values.items() if not _is_object(v)}
    keys |= {(k, i) for k, v in values.items() if _is_object(v) for i in v}
    keys |= {(k, None) for k, v in usage.items() if v is not None and not _is_object(v)}
    keys |= {(k, i) for k, v in usage.items() if _is_object(v) for i, x in v.items() if x is not None}
    return len(keys)
