"""Token usage of one call, merged exactly as the Messages API defines it.

``message_start.message.usage`` carries the input side (and a first output count);
``message_delta.usage`` carries cumulative totals, not increments. In both, a key that is absent or
null means "unchanged": absent is not zero. Nested objects (``cache_creation``, ``server_tool_use``,
``output_tokens_details``) merge key by key under the same rule.

``Usage.values`` is the merged usage object in the API's own JSON shape; the properties read the
numbers the gateway prices and counts. A ``Usage`` is the one record of a call's tokens: the
trailer, the log line, the metrics, the trace and quota accounting (admission) all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NESTED = ("cache_creation", "server_tool_use", "output_tokens_details")


@dataclass(eq=False)
class Usage:
    """The merged usage of one call so far; ``seen`` once a message_start or message_delta carried any."""

    values: dict[str, Any] = field(default_factory=dict)
    seen: bool = False

    def merge(self, usage: Mapping[str, Any]) -> None:
        """Fold one usage object in: every non-null key replaces the value so far; nested objects merge by key."""
        self.seen = True
        values = self.values
        for key, value in usage.items():
            if value is None:
                continue
            if key in NESTED and isinstance(value, Mapping):
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
            usage = message.get("usage") if isinstance(message, Mapping) else None
        elif name == "message_delta":
            usage = obj.get("usage")
        else:
            return
        if isinstance(usage, Mapping):
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
