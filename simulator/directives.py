"""Behaviour chosen from the prompt, so that a client in another process can steer the simulator.

The text of the last user message may hold directives `[[sim:NAME ARG...]]`, separated by spaces:

    http_error STATUS [ERROR_TYPE [RETRY_AFTER]]   answer HTTP STATUS (type defaults from the status)
    spend_limit [STATUS]                           answer as when the key's spend limit is reached (429)
    error_event N [ERROR_TYPE]                     `error` event after N events (overloaded_error);
                                                   on Bedrock an exception message (`platforms`)
    cut N                                          abort the connection after N events
    stall N                                        send nothing after N events (-1: no headers)
    malformed N                                    a non-JSON frame after N events
    eof N                                          end the response after N events, no message_stop
    tokens N                                       reply length in text tokens
    tps X                                          tokens per second
    ttft X                                         seconds before the first token
    ratelimit KIND N                               report N remaining in rate-limit bucket KIND
                                                   (requests, tokens, input-tokens, output-tokens
                                                   or all) and leave the bucket at N (`ratelimits`)
    model NAME                                     report NAME as the model that served (message_start's
                                                   message.model), whatever the request named

N and STATUS are integers, X and RETRY_AFTER decimals. Several directives may be combined; of the
faults (the first seven) the last one wins, and a fault queued with `Simulator.enqueue` beats them all.

A directive may be scoped, `[[sim@SCOPE:NAME ARG...]]`, where SCOPE is words separated by commas,
each a platform (`anthropic`, `bedrock`, `vertex`), `key=KEY` (the key the request is made with)
or `name=NAME` (the simulator's name); it applies only to requests that match every word, so one
prompt can fail on one backend or key and succeed on the next. Every directive, scoped or not, is
removed from the prompt before the model echoes it, so all backends echo the same text. A malformed
or unknown directive is a 400 invalid_request_error naming it.
"""

import re
from dataclasses import dataclass, field, replace

from .faults import (
    STATUS_BY_ERROR_TYPE,
    Cut,
    EndWithoutStop,
    ErrorEvent,
    Fault,
    HttpError,
    Malformed,
    SpendLimit,
    Stall,
)
from .pace import Pace
from .ratelimits import KINDS

_DIRECTIVE = re.compile(r"\[\[sim(?:@([^:\]]*))?:([^\]]*)\]\]")
_PLATFORMS = ("anthropic", "bedrock", "vertex")
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
    remaining: dict[str, int] = field(default_factory=dict)  # rate-limit bucket -> remaining to report
    model: str | None = None  # the model the reply says served it, when not the one asked for

    def pace(self, base: Pace) -> Pace:
        """`base` with the prompt's overrides applied."""
        return replace(
            base,
            ttft=base.ttft if self.ttft is None else self.ttft,
            tokens_per_second=base.tokens_per_second if self.tokens_per_second is None else self.tokens_per_second,
        )


@dataclass(frozen=True)
class Seen:
    """What a scoped directive is matched against: the request's platform and key, the simulator's name."""

    platform: str = "anthropic"
    key: str | None = None
    name: str | None = None


def parse(text: str, seen: Seen | None = None) -> Directives:
    """Read the directives in `text` that apply to `seen` (unscoped ones only, without it);
    raises ValueError naming a bad one, whether it applies or not."""
    found = Directives(prompt=_DIRECTIVE.sub(" ", text))
    for match in _DIRECTIVE.finditer(text):
        try:
            applies = _applies(match.group(1), seen)
            scoped = _apply(found, match.group(2).split())
        except (ValueError, IndexError) as exc:
            raise ValueError(f"bad simulator directive {match.group(0)!r}") from exc
        if applies:
            found = scoped
    return found


def _applies(scope: str | None, seen: Seen | None) -> bool:
    if scope is None:
        return True
    matches = []
    for word in scope.split(","):
        name, equals, value = word.strip().partition("=")
        if equals and name in ("key", "name") and value:
            matches.append(seen is not None and value == (seen.key if name == "key" else seen.name))
        elif not equals and name in _PLATFORMS:
            matches.append(seen is not None and name == seen.platform)
        else:
            raise ValueError(word)
    return all(matches)


def _apply(found: Directives, words: list[str]) -> Directives:
    name, args = words[0], words[1:]
    if name == "http_error" and 1 <= len(args) <= 3:
        status = int(args[0])
        default_type = next((t for t, s in STATUS_BY_ERROR_TYPE.items() if s == status), "api_error")
        retry_after = float(args[2]) if len(args) == 3 else None
        error = HttpError(status, args[1] if len(args) > 1 else default_type, retry_after=retry_after)
        return replace(found, fault=error)
    if name == "spend_limit" and len(args) <= 1:
        return replace(found, fault=SpendLimit(*map(int, args)))
    if name == "ratelimit" and len(args) == 2 and (args[0] in KINDS or args[0] == "all") and int(args[1]) >= 0:
        return replace(found, remaining={**found.remaining, args[0]: int(args[1])})
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
    if name == "model" and len(args) == 1:
        return replace(found, model=args[0])
    raise ValueError(name)
