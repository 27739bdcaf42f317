"""Reading a YAML settings file (the policy file, the backends file) with errors that name the file and line.

    root = compose(text, source, error)     # the document's root node; ``error`` for bad YAML
    at = Nodes(source, error)
    keys = at.mapping(root, "the policy", ("models", "callers"))
    name = at.text(keys["name"], "`name`")

Every method raises ``error`` (a ValueError subclass of the caller's) with ``"<source> line N: ..."``.
"""

from __future__ import annotations

from typing import Any

import yaml


def compose(text: str, source: str, error: type[ValueError]) -> yaml.Node | None:
    """The root node of the YAML ``text`` (None when empty); ``error`` naming the line if it does not parse."""
    try:
        root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise error(f"{source} line {line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    return root


class Nodes:
    """Turns YAML nodes into values, with errors that name the file and line."""

    def __init__(self, source: str, error: type[ValueError]) -> None:
        self.source = source
        self._error = error

    def error(self, node: yaml.Node, message: str) -> ValueError:
        return self._error(f"{self.source} line {node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...] = ()) -> dict[str, yaml.Node]:
        """A mapping's entries by key (an empty mapping for ``null``); keys are plain names, once each."""
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping of `key: value` lines")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, f"keys of {what} must be plain names")
            name = str(key.value)
            if name in out:
                raise self.error(key, f"`{name}` is given twice in {what}")
            if allowed and name not in allowed:
                raise self.error(key, f"unknown key `{name}` in {what}; allowed: {', '.join(allowed)}")
            out[name] = value
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list")
        return list(node.value)

    def text(self, node: yaml.Node, what: str) -> str:
        """A non-empty string (YAML's quoted or plain ``str``; a number is not one)."""
        if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":str") or not node.value:
            raise self.error(node, f"{what} must be a non-empty string")
        return str(node.value)

    def count(self, node: yaml.Node, what: str) -> int:
        """A whole number of at least 1."""
        value: Any = None
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int"):
            value = yaml.safe_load(node.value)  # YAML's own int forms: 1_000, 0x10...
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.error(node, f"{what} must be a whole number of at least 1")
        return value

    def number(self, node: yaml.Node, what: str, minimum: float = 0.0) -> float:
        """A number (int or float) above ``minimum``."""
        value: Any = None
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith((":int", ":float")):
            value = yaml.safe_load(node.value)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > minimum or value != value:
            raise self.error(node, f"{what} must be a number above {minimum:g}")
        return float(value)
