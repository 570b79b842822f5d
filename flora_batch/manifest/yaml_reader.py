"""Reading a YAML manifest with line numbers: every problem is reported at ``file:line``.

``load_manifest`` (``manifest.py``) walks the node tree PyYAML composes, which keeps
the position of every key and value, through a ``Reader`` that collects problems
instead of stopping at the first one.  Scalars are taken as written (``00123`` stays
text); only the few numeric and boolean settings are converted, by YAML's own rules.
Nothing here knows what a manifest means: the keys and their checks are in
``manifest.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ManifestError, ManifestProblems

STR_TAG, INT_TAG, FLOAT_TAG, BOOL_TAG, NULL_TAG = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")
)


class Reader:
    """Collects problems while walking the YAML node tree, each with its manifest line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[ManifestError] = []
        self.lines: dict[str, int] = {}
        self._key_lines: dict[int, int] = {}  # id(value node) -> line of its key

    def line_of(self, node: Node) -> int:
        """The line of a value's key (a block list starts on the line after its key)."""
        return self._key_lines.get(id(node), node_line(node))

    def error(self, message: str, node: Node | None = None, line: int | None = None) -> None:
        if node is not None:
            line = self.line_of(node)
        self.problems.append(ManifestError(message, path=str(self.path), line=line))

    def entries(self, node: MappingNode, known: Sequence[str], where: str) -> dict[str, Node]:
        """A mapping's values by key; unknown and repeated keys are reported."""
        out: dict[str, Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str) or key not in known:
                self.error(unknown(f"key {key!r} in {where}", str(key), known), key_node)
            elif key in out:
                self.error(
                    f"{where} has {key!r} twice (first on line {self.line_of(out[key])})", key_node
                )
            else:
                out[key] = value
                self._key_lines[id(value)] = node_line(key_node)
        return out

    def text(self, node: Node | None, what: str) -> str | None:
        """A scalar taken exactly as written (``00123`` stays ``00123``); None if absent."""
        if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
            return None
        if isinstance(node, ScalarNode):
            return str(node.value)
        self.error(f"{what} must be text, not a {kind(node)}", node)
        return None


def is_null(node: Node) -> bool:
    """Whether a value was left empty (``key:``) or written ``null``/``~``."""
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def node_line(node: Node) -> int:
    """The 1-based manifest line a node starts on."""
    return int(node.start_mark.line) + 1


def kind(node: Node) -> str:
    """``list``, ``mapping`` or ``value``: how a message names what was written."""
    return (
        "list"
        if isinstance(node, SequenceNode)
        else "mapping"
        if isinstance(node, MappingNode)
        else "value"
    )


def unknown(what: str, given: str, choices: Iterable[str]) -> str:
    """``unknown <what>``, with a "did you mean" when a choice is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(given.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = (
        f"; did you mean {by_lower[close[0]]!r}?"
        if close
        else f"; expected one of: {', '.join(choices)}"
    )
    return f"unknown {what}{hint}"


def compose(text: str, path: Path) -> Node | None:
    """The YAML node tree (which keeps line numbers), or the syntax error at its position."""
    text = text.removeprefix("\ufeff")
    try:
        node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        return node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        said = ", ".join(str(part) for part in (exc.context, exc.problem) if part)
        message = f"not valid YAML: {said}"
    except yaml.reader.ReaderError as exc:  # a control character or an invalid code point
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        message = f"not valid YAML: character U+{exc.character:04X} is not allowed"
    except (yaml.YAMLError, RecursionError) as exc:
        line, column = None, None
        message = "not valid YAML: " + (
            "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        )
    problem = ManifestError(message, path=str(path), line=line, column=column)
    raise ManifestProblems([problem])


def read_manifest(path: Path) -> str:
    """The manifest's text (UTF-8, a BOM allowed); a located problem if it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestProblems([ManifestError("manifest not found", path=str(path))]) from None
    except OSError as exc:
        msg = f"cannot read the manifest: {exc.strerror or exc}"
        raise ManifestProblems([ManifestError(msg, path=str(path))]) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = f"the manifest must be UTF-8 text (byte 0x{data[exc.start]:02x} is not)"
        raise ManifestProblems([ManifestError(msg, path=str(path), line=line)]) from None


def _scalar(node: Node) -> object:
    """A scalar converted by YAML's own rules (None if it cannot be)."""
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        return None


def read_number(r: Reader, node: Node | None, what: str) -> float | None:
    """A positive number (``max_cost``), or None with the problem reported."""
    if node is None:
        return None
    value = (
        _scalar(node) if isinstance(node, ScalarNode) and node.tag in (INT_TAG, FLOAT_TAG) else None
    )
    if not isinstance(value, int | float) or not 0 < value < float("inf"):
        r.error(f"{what} must be a positive number (like 25.00)", node)
        return None
    return float(value)


def read_count(r: Reader, node: Node | None) -> int | None:
    """``concurrency``: a whole number from 1 to 64, or None with the problem reported."""
    if node is None:
        return None
    value = _scalar(node) if isinstance(node, ScalarNode) and node.tag == INT_TAG else None
    if not isinstance(value, int) or not 1 <= value <= 64:
        r.error("concurrency must be a whole number from 1 to 64", node)
        return None
    return value


def read_flag(r: Reader, node: Node | None, what: str) -> bool:
    """A YAML boolean; anything else is reported (and counts as false)."""
    if node is None:
        return False
    if not (isinstance(node, ScalarNode) and node.tag == BOOL_TAG):
        r.error(f"{what} must be true or false", node)
        return False
    return bool(_scalar(node))
