"""The policy file: model aliases, the default model, and each caller's allowed models and limits.

``GATEWAY_POLICY_FILE`` names a YAML file, read and checked once at start-up; every error names
the file and the line, and a gateway with a bad file does not start. Without the file any caller
may use any model with no limits (``OPEN``)::

    models:                  # aliases: what callers may write as `model`
      chat: claude-sonnet-4-6
      bulk: claude-haiku-4-5
    default_model: chat      # when a request leaves `model` empty
    callers:
      support-ui:            # a caller name, from the callers file or the client certificate
        models: [chat]       # aliases or model ids; absent: any model
        max_tokens: 4096     # cap on a request's max_tokens
        concurrent_streams: 20
        requests_per_minute: 600
        tokens_per_minute: 400000   # input + output tokens
        usd_per_day: 20             # spend, by the cost of the model that served (UTC days)
        usd_per_month: 300          # (UTC calendar months)
      "*": {}                # every caller not named above; absent: those get PERMISSION_DENIED

Every limit is optional; absent means unlimited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from server.limits.identity import CALLER_NAME
from server.redaction import MODEL_ID_RULE, model_id, shown
from server.yamlfile import Nodes, compose

ANY_CALLER = "*"
LIMITS = ("max_tokens", "concurrent_streams", "requests_per_minute", "tokens_per_minute")
BUDGETS = ("usd_per_day", "usd_per_month")  # spend limits, in USD (decimals)
CALLER_KEYS = ("models", *LIMITS, *BUDGETS)
MICRO = 1_000_000  # spend is counted in millionths of a dollar: whole numbers, exact in Redis too
TOP_KEYS = ("models", "default_model", "callers")


class PolicyError(ValueError):
    """The policy file cannot be read or says something wrong; the message names the file and line."""


@dataclass(frozen=True)
class Limits:
    """A caller's limits counted by the quota store; None is unlimited."""

    concurrent_streams: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    micro_usd_per_day: int | None = None  # usd_per_day in millionths of a dollar
    micro_usd_per_month: int | None = None

    def __bool__(self) -> bool:
        return any(
            v is not None
            for v in (
                self.concurrent_streams,
                self.requests_per_minute,
                self.tokens_per_minute,
                self.micro_usd_per_day,
                self.micro_usd_per_month,
            )
        )

    @property
    def spend(self) -> bool:
        """Whether a spend budget applies."""
        return self.micro_usd_per_day is not None or self.micro_usd_per_month is not None


@dataclass(frozen=True)
class Rules:
    """What one caller may do."""

    models: frozenset[str] | None = None  # model ids, aliases resolved; None: any model
    max_tokens: int | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Policy:
    """Model aliases, the default model, and the rules of each caller."""

    aliases: Mapping[str, str] = field(default_factory=dict)
    default_model: str | None = None  # as written: an alias or a model id
    callers: Mapping[str, Rules] = field(default_factory=dict)
    anyone: Rules | None = Rules()  # the rules of a caller not named in ``callers``; None: refused

    def rules(self, caller: str) -> Rules | None:
        """The caller's rules; None when the policy does not allow it."""
        return self.callers.get(caller, self.anyone)

    def model(self, requested: str) -> str:
        """The model id ``requested`` stands for (itself unless it is an alias)."""
        return self.aliases.get(requested, requested)

    def names(self, models: frozenset[str]) -> list[str]:
        """How callers are told to name ``models``: each model id's aliases, with the id in brackets
        (``chat (claude-sonnet-4-6)``), or the id alone when no alias stands for it; sorted."""
        out = []
        for model in models:
            aliases = sorted(a for a, target in self.aliases.items() if target == model)
            out += [f"{a} ({model})" for a in aliases] or [model]
        return sorted(out)


OPEN = Policy()  # no policy file: any caller, any model, no limits


def load(path: str) -> Policy:
    """The policy in ``path``; PolicyError naming the file and line of the first problem."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file {path}: {exc.__class__.__name__}") from None
    return parse(text, path)


def parse(text: str, source: str = "policy") -> Policy:
    """The policy a YAML text states; PolicyError naming ``source`` and the line of the first problem."""
    root = compose(text, source, PolicyError)
    if root is None:
        raise PolicyError(f"{source}: empty; a policy names its callers under `callers:`")
    at = _Reader(source, PolicyError)
    top = at.mapping(root, "the policy", TOP_KEYS)
    aliases: dict[str, str] = {}
    if "models" in top:
        for key, value in at.mapping(top["models"], "`models`").items():
            if model_id(key) is None:  # callers write it as `model`, which must look like a model name
                raise at.error(top["models"], f"alias {shown(key)!r} must be a model name, {MODEL_ID_RULE}")
            aliases[key] = at.text(value, f"alias `{key}`")
        for name, target in aliases.items():
            if target in aliases:
                raise at.error(top["models"], f"alias `{name}` names another alias, `{target}`: give a model id")
    default = at.text(top["default_model"], "`default_model`") if "default_model" in top else None
    if default is not None and model_id(default) is None:
        raise at.error(top["default_model"], f"`default_model` must be a model name, {MODEL_ID_RULE}")
    if "callers" not in top:
        raise at.error(root, 'no `callers:`: name the callers and their limits (`"*": {}` lets anyone in)')
    callers: dict[str, Rules] = {}
    for name, node in at.mapping(top["callers"], "`callers`").items():
        if name != ANY_CALLER and CALLER_NAME.fullmatch(name) is None:
            raise at.error(node, f'caller name {name!r} must be 1-128 of letters, digits and ._@:/+- or be "*"')
        callers[name] = at.rules(node, name, aliases)
    anyone = callers.pop(ANY_CALLER, None)
    return Policy(aliases, default, callers, anyone)


class _Reader(Nodes):
    """Turns YAML nodes into policy values, with errors that name the line."""

    def dollars(self, node: yaml.Node, what: str) -> int:
        """A positive amount of USD (``0.05``, ``20``), as millionths of a dollar."""
        value: Any = None
        if isinstance(node, yaml.ScalarNode) and (node.tag.endswith(":int") or node.tag.endswith(":float")):
            value = yaml.safe_load(node.value)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e12:
            raise self.error(node, f"{what} must be an amount of USD above 0, such as 0.05 or 20")
        micro = round(Decimal(str(value)) * MICRO)
        if micro < 1:
            raise self.error(node, f"{what} must be at least 0.000001 (a millionth of a dollar)")
        return int(micro)

    def rules(self, node: yaml.Node, caller: str, aliases: Mapping[str, str]) -> Rules:
        keys = self.mapping(node, f"caller `{caller}`", CALLER_KEYS)
        models = None
        if "models" in keys:
            entries = keys["models"]
            if not isinstance(entries, yaml.SequenceNode):
                raise self.error(entries, f"`models` of `{caller}` must be a list of aliases or model ids")
            models = frozenset(
                aliases.get(m, m) for m in (self.text(e, f"an entry of `models` of `{caller}`") for e in entries.value)
            )
        found = {k: self.count(keys[k], f"`{k}` of `{caller}`") for k in LIMITS if k in keys}
        budgets = {k: self.dollars(keys[k], f"`{k}` of `{caller}`") for k in BUDGETS if k in keys}
        limits = Limits(
            found.get("concurrent_streams"),
            found.get("requests_per_minute"),
            found.get("tokens_per_minute"),
            budgets.get("usd_per_day"),
            budgets.get("usd_per_month"),
        )
        return Rules(models, found.get("max_tokens"), limits)
