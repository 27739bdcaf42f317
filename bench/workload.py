"""The request bodies the benchmark sends: a short prompt steering the simulator by directives.

The prompt stays short on purpose: the gateway keeps the request body for the life of a call, so a
long prompt would show up in the memory per stream. The reply's text deltas are the simulator's
filler words, which the stamping simulator overwrites with send times (see ``stamps``).
"""

from __future__ import annotations

from typing import Any

MODEL = "claude-sonnet-4-6"


def body(tokens: int, tps: float, *, ttft: float = 0.0, tag: str = "") -> dict[str, Any]:
    """A Messages API body whose reply has ``tokens`` text deltas at ``tps`` per second (0: unpaced).

    ``tag`` is echoed in nothing the client sees; the simulator's record keeps it, so a scenario
    can find this request among the simulator's records.
    """
    prompt = f"[[sim:tokens {tokens}]] [[sim:tps {tps:g}]] [[sim:ttft {ttft:g}]] bench"
    if tag:
        prompt += f" tag:{tag}"
    return {"model": MODEL, "max_tokens": tokens + 16, "messages": [{"role": "user", "content": prompt}]}


def tag_of(prompt: str) -> str | None:
    """The tag that ``body`` put into ``prompt``, if any."""
    for word in prompt.split():
        if word.startswith("tag:"):
            return word[4:]
    return None
