"""Behaviour chosen from the prompt, so that a client in another process can steer the simulator.

The text of the last user message may hold directives `[[sim:NAME ARG...]]`, separated by spaces:

    http_error STATUS [ERROR_TYPE [RETRY_AFTER]]   answer HTTP STATUS (type defaults from the status)
    error_event N [ERROR_TYPE]                     `error` event after N events (overloaded_error)
    cut N                                          abort the connection after N events
    stall N                                        send nothing after N events (-1: no headers)
    malformed N                                    a non-JSON frame after N events
    eof N                                          end the response after N events, no message_stop
    tokens N                                       reply length in text tokens
    tps X                                          tokens per second
    ttft X                                         seconds before the first token

N and STATUS are integers, X and RETRY_AFTER decimals. Several directives may be combined; of the
faults (the first six) the last one wins, and a fault queued with `Simulator.enqueue` beats them all.
Directives are removed from the prompt before the model echoes it. A malformed or unknown
directive is a 400 invalid_request_error naming it.
"""

import re
from dataclasses import dataclass, replace

from .faults import STATUS_BY_ERROR_TYPE, Cut, EndWithoutStop, ErrorEvent, Fault, HttpError, Malformed, Stall
from .pace import Pace

_DIRECTIVE = re.compile(r"\[\[sim:([^\]]*)\]\]")
_AFTER_EVENTS: dict[str, type[Cut | Stall | Malformed | EndWithoutStop]] = {
    "cut": Cut,
    "stall": Stall,
    "malformed": Malformed,
    "eof": EndWithoutStop,
}


@dataclass(frozen=True)
class Directives:
    prompt: str  # the text with the directives removed
    fault: Fault | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    ttft: float | None = None

    def pace(self, base: Pace) -> Pace:
        """`base` with the prompt's overrides applied."""
        return replace(
            base,
            ttft=base.ttft if self.ttft is None else self.ttft,
            tokens_per_second=base.tokens_per_second if self.tokens_per_second is None else self.tokens_per_second,
        )


def parse(text: str) -> Directives:
    """Read the directives in `text`; raises ValueError naming a bad one."""
    found = Directives(prompt=_DIRECTIVE.sub(" ", text))
    for match in _DIRECTIVE.finditer(text):
        try:
            found = _apply(found, match.group(1).split())
        except (ValueError, IndexError) as exc:
            raise ValueError(f"bad simulator directive {match.group(0)!r}") from exc
    return found


def _apply(found: Directives, words: list[str]) -> Directives:
    name, args = words[0], words[1:]
    if name == "http_error" and 1 <= len(args) <= 3:
        status = int(args[0])
        default_type = next((t for t, s in STATUS_BY_ERROR_TYPE.items() if s == status), "api_error")
        retry_after = float(args[2]) if len(args) == 3 else None
        error = HttpError(status, args[1] if len(args) > 1 else default_type, retry_after=retry_after)
        return replace(found, fault=error)
    if name == "error_event" and 1 <= len(args) <= 2:
        return replace(found, fault=ErrorEvent(int(args[0]), *args[1:]))
    if name in _AFTER_EVENTS and len(args) == 1:
        return replace(found, fault=_AFTER_EVENTS[name](int(args[0])))
    if name == "tokens" and len(args) == 1:
        return replace(found, tokens=int(args[0]))
    if name == "tps" and len(args) == 1:
        return replace(found, tokens_per_second=float(args[0]))
    if name == "ttft" and len(args) == 1:
        return replace(found, ttft=float(args[0]))
    raise ValueError(name)
