"""The manifest: what to run, over which rows, and where the results go.

``load_manifest`` reads a YAML manifest (docs/manifest.md is the reference) and reports
*every* problem at once, each at ``file:line``; ``manifest_from_rows`` builds the same
``Manifest`` from a bare CSV and a few ``--input`` pairs.  ``build_jobs`` then checks
the rows against the techniques' schemas and turns each (row, technique) pair into a
``JobSpec``, the unit that is paid for once.

Nothing here reads the clock, the environment or the network; ``load_manifest`` reads
the manifest file (and checks that the rows file exists), and ``build_jobs`` is a
function of its arguments.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ManifestError, ManifestProblems
from .keys import job_key, normalise
from .naming import (
    OUTPUT_FIELDS,
    default_output_name,
    ext_for,
    render_output_name,
    render_template,
    template_fields,
)
from .rows import FORMATS, Row, RowsSource, rows_from_cells
from .types import IOSlot, JobSpec, RunInput, Technique
from .wire import DEFAULT_ALLOWED_HOSTS, check_media_url

#: Longest text input sent to FLORA, in characters.
MAX_TEXT_CHARS = 10_000
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TOP_KEYS = (
    "name",
    "technique",
    "techniques",
    "rows",
    "id",
    "inputs",
    "output",
    "max_cost",
    "concurrency",
    "ledger",
    "skip_invalid",
    "assets",
)
OPTIONAL_KEYS = ("id", "output", "max_cost", "concurrency", "ledger", "skip_invalid", "assets")
ROWS_KEYS = ("path", "encoding", "sheet")
OUTPUT_KEYS = ("dir", "name")
ASSETS_KEYS = ("workspace_id", "folder")
WORKSPACE_RE = re.compile(r"ws_\S{1,200}")
USE_KEYS = ("technique", "inputs")
#: Technique slot types, by their spelling with ``_`` removed and lower-cased.
_SLOT_TYPES = {t.lower(): t for t in ("text", "imageUrl", "videoUrl", "audioUrl", "documentUrl")}
#: Slot types the create endpoint accepts as run inputs (CONTRACT.md §3).
_SENDABLE = ("text", "imageUrl", "videoUrl")
_STR, _INT, _FLOAT, _BOOL, _NULL = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")
)


@dataclass(frozen=True)
class TechniqueUse:
    """One technique the batch runs, with its inputs: input id -> template over columns.

    ``line`` is the manifest line of the technique; ``input_lines`` the line of each input.
    """

    slug: str
    inputs: dict[str, str]
    line: int | None = None
    input_lines: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; every path in it is already resolved against its folder.

    ``lines`` maps manifest keys (``"id"``, ``"output.name"``, ...) to their line, so
    problems found later, against the rows, can point at the manifest.
    """

    path: Path
    name: str
    uses: tuple[TechniqueUse, ...]
    rows: RowsSource
    id_column: str | None
    output_dir: Path
    output_name: str
    max_cost: float | None = None
    concurrency: int | None = None
    ledger: str | None = None
    skip_invalid: bool = False
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    workspace_id: str | None = None  # assets.workspace_id: where input files are uploaded
    asset_folder: str | None = None  # assets.folder: the workspace library folder


#: ``build_jobs``' hook for media inputs: ``(slot type, cell value) -> (value to send,
#: problem)``; ``sources.MediaInputs`` turns local files and web images into upload
#: placeholders.  Without one, a media input must be an https URL on an allowed host.
MediaResolver = Callable[[str, str], tuple[str, str | None]]


# --- reading YAML with line numbers ----------------------------------------------------


class _Reader:
    """Collects problems while walking the YAML node tree, each with its manifest line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[ManifestError] = []
        self.lines: dict[str, int] = {}
        self._key_lines: dict[int, int] = {}  # id(value node) -> line of its key

    def line_of(self, node: Node) -> int:
        """The line of a value's key (a block list starts on the line after its key)."""
        return self._key_lines.get(id(node), _line(node))

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
                self.error(_unknown(f"key {key!r} in {where}", str(key), known), key_node)
            elif key in out:
                self.error(
                    f"{where} has {key!r} twice (first on line {self.line_of(out[key])})", key_node
                )
            else:
                out[key] = value
                self._key_lines[id(value)] = _line(key_node)
        return out

    def text(self, node: Node | None, what: str) -> str | None:
        """A scalar taken exactly as written (``00123`` stays ``00123``); None if absent."""
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL):
            return None
        if isinstance(node, ScalarNode):
            return str(node.value)
        self.error(f"{what} must be text, not a {_kind(node)}", node)
        return None


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    return (
        "list"
        if isinstance(node, SequenceNode)
        else "mapping"
        if isinstance(node, MappingNode)
        else "value"
    )


def _unknown(what: str, given: str, choices: Iterable[str]) -> str:
    """``unknown <what>``, with a "did you mean" when a choice is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(given.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = (
        f"; did you mean {by_lower[close[0]]!r}?"
        if close
        else f"; expected one of: {', '.join(choices)}"
    )
    return f"unknown {what}{hint}"


def _compose(text: str, path: Path) -> Node | None:
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


def _read_manifest(path: Path) -> str:
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


# --- load_manifest ---------------------------------------------------------------------


def load_manifest(path: Path, text: str | None = None) -> Manifest:
    """Read and check a YAML manifest.

    Args:
        path: the manifest file; relative paths inside it resolve against its folder.
        text: the manifest's text, if already read (``path`` is then only for messages
            and for resolving paths).

    Raises:
        ManifestProblems: every problem found, each at ``file:line``.
    """
    path = Path(path)
    root = _compose(_read_manifest(path) if text is None else text, path)
    reader = _Reader(path)
    if root is None:
        reader.error("the manifest is empty: it needs name, technique, rows and inputs", line=1)
    elif not isinstance(root, MappingNode):
        reader.error(
            f"the manifest must be a mapping (name: ..., technique: ...), not a {_kind(root)}", root
        )
    else:
        manifest = _manifest(reader, reader.entries(root, TOP_KEYS, "the manifest"), _line(root))
        if manifest is not None and not reader.problems:
            return manifest
    fallback = ManifestError("the manifest could not be read", path=str(path))
    raise ManifestProblems(reader.problems or [fallback])


def _manifest(r: _Reader, top: dict[str, Node], first_line: int) -> Manifest | None:
    for key, node in top.items():
        r.lines[key] = r.line_of(node)
    # An optional key left empty (``max_cost:``) means the default, as if it were absent.
    top = {k: v for k, v in top.items() if k not in OPTIONAL_KEYS or not _is_null(v)}
    for key in ("name", "rows"):
        if key not in top:
            r.error(f"missing required key {key!r}", line=first_line)
    base = r.path.parent
    name = _name(r, top.get("name"))
    uses = _uses(r, top, first_line)
    rows = _rows(r, top["rows"], base) if "rows" in top else None
    id_column = r.text(top.get("id"), "id")
    out_dir, out_name = _output(r, top.get("output"), base, name, id_column)
    max_cost, concurrency, ledger, skip_invalid = _limits(r, top, base)
    workspace_id, asset_folder = _assets(r, top.get("assets"))
    if name is None or rows is None or not uses or r.problems:
        return None
    return Manifest(
        path=r.path,
        name=name,
        uses=uses,
        rows=rows,
        id_column=id_column,
        output_dir=out_dir,
        output_name=out_name,
        max_cost=max_cost,
        concurrency=concurrency,
        ledger=ledger,
        skip_invalid=skip_invalid,
        lines=r.lines,
        workspace_id=workspace_id,
        asset_folder=asset_folder,
    )


def _name(r: _Reader, node: Node | None) -> str | None:
    if node is None:
        return None
    name = r.text(node, "name")
    if name is None:
        if isinstance(node, ScalarNode):
            r.error("name is empty: give the batch a name (it is part of every job key)", node)
        return None
    if not NAME_RE.fullmatch(name) or not name.strip("."):
        r.error(
            f"name {name!r} must be 1-100 letters, digits, '.', '_' or '-' "
            "(it is part of every job key)",
            node,
        )
        return None
    return name


def _uses(r: _Reader, top: dict[str, Node], first_line: int) -> tuple[TechniqueUse, ...]:
    if "technique" in top and "techniques" in top:
        r.error("give either technique (one) or techniques (a list), not both", top["techniques"])
        return ()
    if "techniques" in top:
        if "inputs" in top:
            r.error("with techniques:, write inputs under each technique", top["inputs"])
        return _use_list(r, top["techniques"])
    if "technique" not in top:
        r.error("missing required key 'technique' (or a 'techniques' list)", line=first_line)
        return ()
    if "inputs" not in top:
        r.error("missing required key 'inputs'", line=first_line)
        return ()
    use = _use(r, top["technique"], top["inputs"])
    return (use,) if use else ()


def _use_list(r: _Reader, node: Node) -> tuple[TechniqueUse, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        r.error("techniques must be a non-empty list of {technique: ..., inputs: {...}}", node)
        return ()
    uses: dict[str, TechniqueUse] = {}
    for item in node.value:
        if not isinstance(item, MappingNode):
            r.error(f"each techniques entry must be a mapping, not a {_kind(item)}", item)
            continue
        entry = r.entries(item, USE_KEYS, "a techniques entry")
        if "technique" not in entry or "inputs" not in entry:
            r.error("each techniques entry needs technique and inputs", item)
            continue
        use = _use(r, entry["technique"], entry["inputs"])
        if use and use.slug in uses:
            r.error(
                f"technique {use.slug!r} is listed twice (first on line {uses[use.slug].line})",
                item,
            )
        elif use:
            uses[use.slug] = use
    return tuple(uses.values())


def _use(r: _Reader, slug_node: Node, inputs_node: Node) -> TechniqueUse | None:
    slug = _slug(r, slug_node)
    inputs = _inputs(r, inputs_node)
    if slug is None or inputs is None:
        return None
    templates, lines = inputs
    return TechniqueUse(slug=slug, inputs=templates, line=r.line_of(slug_node), input_lines=lines)


def _slug(r: _Reader, node: Node) -> str | None:
    if isinstance(node, ScalarNode) and node.tag != _NULL and SLUG_RE.fullmatch(str(node.value)):
        return str(node.value)
    shown = (
        repr(node.value)
        if isinstance(node, ScalarNode) and node.tag != _NULL
        else f"a {_kind(node)}"
    )
    r.error(f"technique must be a technique slug like studio-shot, not {shown}", node)
    return None


def _inputs(r: _Reader, node: Node) -> tuple[dict[str, str], dict[str, int]] | None:
    if not isinstance(node, MappingNode) or not node.value:
        r.error(
            'inputs must map each technique input id to a template, like prompt: "Shot of {title}"',
            node,
        )
        return None
    templates: dict[str, str] = {}
    lines: dict[str, int] = {}
    for key_node, value in node.value:
        input_id = key_node.value.strip() if isinstance(key_node, ScalarNode) else ""
        if not input_id:
            r.error("an input id must be a non-empty name", key_node)
        elif input_id in templates:
            r.error(
                f"input {input_id!r} is given twice (first on line {lines[input_id]})", key_node
            )
        else:
            template = _template(r, value, f"input {input_id!r}")
            if template is not None:
                templates[input_id], lines[input_id] = template, _line(key_node)
    return (templates, lines) if len(templates) == len(node.value) else None


def _template(r: _Reader, node: Node, what: str) -> str | None:
    template = r.text(node, what)
    if template is None:
        if isinstance(node, ScalarNode):
            r.error(f"{what} is empty: give a template, or leave the input out", node)
        return None
    try:
        template_fields(template)
    except ManifestError as exc:
        r.error(f"{what}: {exc.message}", node)
        return None
    return template


def _rows(r: _Reader, node: Node, base: Path) -> RowsSource | None:
    if isinstance(node, SequenceNode):
        return _inline_rows(r, node)
    if isinstance(node, MappingNode):
        entry = r.entries(node, ROWS_KEYS, "rows")
        if "path" not in entry:
            r.error("rows needs a path (or write rows: <file>)", node)
            return None
        given = r.text(entry["path"], "rows path")
        encoding, sheet = (
            r.text(entry.get("encoding"), "encoding"),
            r.text(entry.get("sheet"), "sheet"),
        )
        return _rows_file(r, entry["path"], given, base, encoding, sheet)
    return _rows_file(r, node, r.text(node, "rows"), base, None, None)


def _rows_file(
    r: _Reader, node: Node, given: str | None, base: Path, encoding: str | None, sheet: str | None
) -> RowsSource | None:
    if not given:
        r.error("rows must name a file (CSV, XLSX, JSONL or Parquet) or list the rows", node)
        return None
    path = base / given
    if path.suffix.lower() not in FORMATS:
        r.error(
            f"rows file {given!r}: cannot read {path.suffix or 'files without a suffix'} files; "
            "use .csv, .tsv, .xlsx, .jsonl or .parquet",
            node,
        )
    elif not path.is_file():
        r.error(f"rows file {given!r} not found (looked for {path})", node)
    else:
        return RowsSource(path=path, encoding=encoding, sheet=sheet, line=r.line_of(node))
    return None


def _inline_rows(r: _Reader, node: SequenceNode) -> RowsSource | None:
    if not node.value:
        r.error("rows is an empty list", node)
        return None
    records: list[tuple[int, dict[str, object]]] = []
    for item in node.value:
        if isinstance(item, MappingNode):
            records.append((_line(item), _inline_row(r, item)))
        else:
            r.error(f"each row must be a mapping of column: value, not a {_kind(item)}", item)
    columns = list(dict.fromkeys(k for _, cells in records for k in cells))
    cells = [(line, [row.get(c) for c in columns]) for line, row in records]
    try:
        names, rows = rows_from_cells(str(r.path), list(columns), cells)
    except ManifestProblems as exc:
        r.problems.extend(exc.problems)
        return None
    except ManifestError as exc:
        r.problems.append(exc)
        return None
    return RowsSource(inline=tuple(rows), columns=tuple(names), line=r.line_of(node))


def _inline_row(r: _Reader, node: MappingNode) -> dict[str, object]:
    row: dict[str, object] = {}
    for key_node, value in node.value:
        key = str(key_node.value).strip() if isinstance(key_node, ScalarNode) else ""
        if not key or key in row:
            r.error(f"column {key!r} is blank or repeated in this row", key_node)
        elif not isinstance(value, ScalarNode):
            r.error(f"cell {key!r} must be a single value, not a {_kind(value)}", value)
        else:
            row[key] = None if value.tag == _NULL else value.value
    return row


def _output(
    r: _Reader, node: Node | None, base: Path, name: str | None, id_column: str | None
) -> tuple[Path, str]:
    entry: dict[str, Node] = {}
    if isinstance(node, MappingNode):
        entry = r.entries(node, OUTPUT_KEYS, "output")
    elif node is not None:
        r.error("output must be a mapping with dir and/or name", node)
    for key, value in entry.items():
        r.lines[f"output.{key}"] = r.line_of(value)
    out_dir = r.text(entry.get("dir"), "output.dir") or f"results/{name or 'batch'}"
    template = _template(r, entry["name"], "output.name") if "name" in entry else None
    return base / out_dir, template or default_output_name(id_column)


def _limits(
    r: _Reader, top: dict[str, Node], base: Path
) -> tuple[float | None, int | None, str | None, bool]:
    """max_cost, concurrency, ledger (a path is resolved, a URL kept) and skip_invalid."""
    ledger = r.text(top.get("ledger"), "ledger")
    if ledger is not None and "://" not in ledger and not ledger.startswith("sqlite:"):
        ledger = str(base / ledger)
    return (
        _number(r, top.get("max_cost"), "max_cost"),
        _count(r, top.get("concurrency")),
        ledger,
        _flag(r, top.get("skip_invalid"), "skip_invalid"),
    )


def _assets(r: _Reader, node: Node | None) -> tuple[str | None, str | None]:
    """``assets: {workspace_id: ws_..., folder: ...}``: where input files are uploaded."""
    if node is None:
        return None, None
    if not isinstance(node, MappingNode):
        r.error("assets must be a mapping with workspace_id and/or folder", node)
        return None, None
    entry = r.entries(node, ASSETS_KEYS, "assets")
    workspace = r.text(entry.get("workspace_id"), "assets.workspace_id")
    if workspace is not None and not WORKSPACE_RE.fullmatch(workspace):
        r.error(
            f"assets.workspace_id {workspace!r} is not a FLORA workspace id (ws_...)",
            entry["workspace_id"],
        )
    folder = r.text(entry.get("folder"), "assets.folder")
    if folder is not None and not folder.strip():
        r.error("assets.folder is empty: name a folder, or leave it out", entry["folder"])
    return workspace, (folder.strip() if folder else None)


def _scalar(node: Node) -> object:
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        return None


def _number(r: _Reader, node: Node | None, what: str) -> float | None:
    if node is None:
        return None
    value = _scalar(node) if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT) else None
    if not isinstance(value, int | float) or not 0 < value < float("inf"):
        r.error(f"{what} must be a positive number (like 25.00)", node)
        return None
    return float(value)


def _count(r: _Reader, node: Node | None) -> int | None:
    if node is None:
        return None
    value = _scalar(node) if isinstance(node, ScalarNode) and node.tag == _INT else None
    if not isinstance(value, int) or not 1 <= value <= 64:
        r.error("concurrency must be a whole number from 1 to 64", node)
        return None
    return value


def _flag(r: _Reader, node: Node | None, what: str) -> bool:
    if node is None:
        return False
    if not (isinstance(node, ScalarNode) and node.tag == _BOOL):
        r.error(f"{what} must be true or false", node)
        return False
    return bool(_scalar(node))


# --- a manifest from a bare rows file --------------------------------------------------


def manifest_from_rows(
    rows_path: Path,
    technique: str,
    inputs: Mapping[str, str],
    *,
    name: str | None = None,
    output_dir: Path | None = None,
    id_column: str | None = None,
    encoding: str | None = None,
) -> Manifest:
    """A manifest for a quick job: one technique over a rows file, without YAML.

    Args:
        rows_path: the CSV (or XLSX, JSONL, Parquet) file.
        technique: the technique's slug.
        inputs: input id -> column name, or a template when the value contains ``{``
            (``--input product=image_url``, ``--input backdrop="{colour} paper"``).
        name: the batch name; defaults to the file's stem with characters a batch name
            cannot hold replaced by ``-``.  It is part of every job's key.
        output_dir: defaults to ``results/<name>`` beside the rows file.

    Raises:
        ManifestProblems: every problem found, located at the rows file.
    """
    rows_path = Path(rows_path)
    batch = name if name is not None else _stem_name(rows_path)
    problems: list[ManifestError] = []

    def add(message: str) -> None:
        problems.append(ManifestError(message, path=str(rows_path)))

    if not NAME_RE.fullmatch(batch) or not batch.strip("."):
        add(f"batch name {batch!r} must be 1-100 letters, digits, '.', '_' or '-'")
    if not SLUG_RE.fullmatch(technique):
        add(f"technique {technique!r} is not a technique slug (like studio-shot)")
    templates = _cli_templates(inputs, add)
    if rows_path.suffix.lower() not in FORMATS:
        add(
            f"cannot read {rows_path.suffix or 'files without a suffix'} files; "
            "use .csv, .tsv, .xlsx, .jsonl or .parquet"
        )
    elif not rows_path.is_file():
        add("rows file not found")
    if problems:
        raise ManifestProblems(problems)
    return Manifest(
        path=rows_path,
        name=batch,
        uses=(TechniqueUse(slug=technique, inputs=templates),),
        rows=RowsSource(path=rows_path, encoding=encoding),
        id_column=id_column,
        output_dir=output_dir if output_dir is not None else rows_path.parent / "results" / batch,
        output_name=default_output_name(id_column),
    )


def _stem_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.")[:100] or "batch"


def _cli_templates(inputs: Mapping[str, str], add: Callable[[str], None]) -> dict[str, str]:
    templates: dict[str, str] = {}
    for input_id, given in inputs.items():
        template = given if "{" in given else "{" + given.strip() + "}"
        if not input_id.strip():
            add(f"--input {input_id}={given}: the input id is empty")
            continue
        try:
            template_fields(template)
        except ManifestError as exc:
            add(f"--input {input_id}={given}: {exc.message}")
            continue
        templates[input_id.strip()] = template
    if not templates and not inputs:
        add("give at least one input, like --input product=image_url")
    return templates


# --- checking against the rows and the techniques --------------------------------------


def check_manifest(
    m: Manifest, columns: Sequence[str], techniques: Mapping[str, Technique]
) -> list[ManifestError]:
    """Problems of the manifest itself, given the rows' columns and the techniques' schemas.

    These stop the whole batch, even with ``skip_invalid``: unknown technique, input or
    column, a required input left out, an input type FLORA cannot take, an ``id`` or an
    ``output.name`` placeholder that is not a column.  Each is reported once, at its
    manifest line, however many rows it would affect.
    """
    problems: list[ManifestError] = []

    def add(message: str, line: int | None) -> None:
        problems.append(ManifestError(message, path=str(m.path), line=line))

    _check_output_name(m.output_name, columns, lambda msg: add(msg, m.lines.get("output.name")))
    if m.id_column is not None and m.id_column not in columns:
        add(_unknown(f"id column {m.id_column!r}", m.id_column, columns), m.lines.get("id"))
    for use in m.uses:
        technique = techniques.get(use.slug)
        if technique is None:
            add(_unknown(f"technique {use.slug!r}", use.slug, sorted(techniques)), use.line)
        else:
            _check_use(use, technique, columns, add)
    return problems


def _check_output_name(template: str, columns: Sequence[str], add: Callable[[str], None]) -> None:
    fields = template_fields(template)
    if "output_id" not in fields:
        add("output.name must use {output_id}: one run can return several outputs")
    choices = [*columns, *OUTPUT_FIELDS]
    for unknown in [f for f in fields if f not in choices]:
        add(_unknown(f"placeholder {{{unknown}}} in output.name", unknown, choices))


def _check_use(
    use: TechniqueUse,
    technique: Technique,
    columns: Sequence[str],
    add: Callable[[str, int | None], None],
) -> None:
    slot_ids = [s.id for s in technique.inputs]
    for input_id, template in use.inputs.items():
        line = use.input_lines.get(input_id, use.line)
        slot = technique.input(input_id)
        if slot is None:
            add(_unknown(f"input {input_id!r} for {use.slug}", input_id, slot_ids), line)
            continue
        if send_type(slot) is None:
            add(
                f"input {input_id!r} of {use.slug} takes {slot.type}, which FLORA's create "
                "endpoint cannot send (it takes text, imageUrl and videoUrl; CONTRACT.md §3)",
                line,
            )
        missing = next((f for f in template_fields(template) if f not in columns), None)
        if missing is not None:
            what = f"column {missing!r} (input {input_id!r} uses {{{missing}}})"
            add(_unknown(what, missing, columns), line)
    for slot in technique.inputs:
        if not slot.optional and slot.id not in use.inputs:
            add(f"{use.slug} needs input {slot.id!r} ({slot.type}); add it under inputs", use.line)


def send_type(slot: IOSlot) -> str | None:
    """The run-input type for a technique slot, or None if the create endpoint cannot take it.

    Slot types are matched loosely (``image_url``, ``IMAGE_URL`` and ``imageUrl`` are one
    type).  ``audioUrl`` and ``documentUrl`` slots exist but no run-input type carries
    them, so such a slot cannot be filled: sending it as another type would be refused
    or, worse, misread.
    """
    kind = _SLOT_TYPES.get(slot.type.replace("_", "").lower())
    return kind if kind in _SENDABLE else None


# --- build_jobs ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Binding:
    """One technique input slot, the template that fills it, and the column blamed for it."""

    slot: IOSlot
    kind: str
    template: str
    column: str


def build_jobs(
    m: Manifest,
    columns: list[str],
    rows: list[Row],
    techniques: Mapping[str, Technique],
    *,
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS,
    media: MediaResolver | None = None,
) -> tuple[list[JobSpec], list[ManifestError]]:
    """Every (row, technique) pair as a ``JobSpec``, and every problem found on the way.

    Jobs come row by row (all techniques of row 1, then row 2...).  Problems of the
    manifest itself (``check_manifest``) void the batch: no jobs are returned.  Row
    problems (an empty required input, a refused media URL, a text over 10,000
    characters, a missing or repeated id, an output name another job already has) drop
    only that job, so ``skip_invalid`` can run the rest.  Row problems are located at
    ``rows_file:line:column`` (the manifest for inline rows).

    Identical jobs (same technique and inputs after normalising) get ``occurrence``
    0, 1, 2... in row order, so each is paid for once and only once.

    ``media``, when given, decides what a media input sends (``MediaResolver``): a
    local file or a web image becomes an upload placeholder that the key hashes.
    """
    fatal = check_manifest(m, columns, techniques)
    if fatal:
        return [], fatal
    errors: list[ManifestError] = []
    source = str(m.rows.path or m.path)
    ids = _row_ids(m, rows, source, errors)
    bindings = [(use.slug, _bindings(use, techniques[use.slug])) for use in m.uses]
    specs: list[JobSpec] = []
    for row in (r for r in rows if r.index in ids):
        for slug, binds in bindings:
            inputs = _render_inputs(binds, row, source, (allowed_hosts, media), errors)
            if inputs is not None:
                specs.append(_spec(m, slug, inputs, row, ids[row.index], source))
    specs = number_occurrences(specs)
    lines = {row.index: row.line for row in rows}
    return _check_output_names(m, specs, techniques, (source, lines), errors), errors


def _spec(
    m: Manifest, slug: str, inputs: tuple[RunInput, ...], row: Row, row_id: str | None, source: str
) -> JobSpec:
    return JobSpec(
        batch=m.name,
        technique=slug,
        inputs=inputs,
        row_index=row.index,
        row_id=row_id,
        row=dict(row.values),
        source=f"{source}:{row.line}",
        output_name=m.output_name,
    )


def number_occurrences(specs: Sequence[JobSpec]) -> list[JobSpec]:
    """Give identical jobs (same key at occurrence 0) occurrences 0, 1, 2... in order."""
    seen: dict[str, int] = {}
    out: list[JobSpec] = []
    for spec in specs:
        base = job_key(replace(spec, occurrence=0))
        out.append(replace(spec, occurrence=seen.get(base, 0)))
        seen[base] = seen.get(base, 0) + 1
    return out


def _row_ids(
    m: Manifest, rows: list[Row], source: str, errors: list[ManifestError]
) -> dict[int, str | None]:
    """Each usable row's id (None without an id column); a blank or repeated id drops the row."""
    column = m.id_column
    if column is None:
        return {row.index: None for row in rows}
    ids: dict[int, str | None] = {}
    first: dict[str, int] = {}
    for row in rows:
        value = row.values.get(column, "")
        if not value:
            errors.append(
                ManifestError(
                    f"the id column {column!r} is empty", path=source, line=row.line, column=column
                )
            )
        elif value in first:
            msg = f"id {value!r} is also the id of line {first[value]}; ids must be unique"
            errors.append(ManifestError(msg, path=source, line=row.line, column=column))
        else:
            first[value] = row.line
            ids[row.index] = value
    return ids


def _bindings(use: TechniqueUse, technique: Technique) -> list[_Binding]:
    """The manifest's inputs in the technique's slot order (``check_manifest`` passed)."""
    out: list[_Binding] = []
    for slot in technique.inputs:
        if slot.id in use.inputs:
            template = use.inputs[slot.id]
            column = next(iter(template_fields(template)), slot.id)
            out.append(_Binding(slot, send_type(slot) or slot.type, template, column))
    return out


def _render_inputs(
    binds: list[_Binding],
    row: Row,
    source: str,
    checks: tuple[tuple[str, ...], MediaResolver | None],
    errors: list[ManifestError],
) -> tuple[RunInput, ...] | None:
    """A row's run inputs, or None (with the problems added to ``errors``)."""
    inputs: list[RunInput] = []
    count = len(errors)
    for bind in binds:
        try:
            value = normalise(render_template(bind.template, row.values))
        except ManifestError as exc:
            problem: str | None = exc.message
        else:
            value, problem = _checked_value(bind, value, *checks)
            if problem is None and value:
                inputs.append(RunInput(id=bind.slot.id, type=bind.kind, value=value))
        if problem:
            errors.append(ManifestError(problem, path=source, line=row.line, column=bind.column))
    if len(errors) == count and not inputs:
        errors.append(ManifestError("every input of this row is empty", path=source, line=row.line))
    return tuple(inputs) if len(errors) == count else None


def _checked_value(
    bind: _Binding, value: str, hosts: tuple[str, ...], media: MediaResolver | None
) -> tuple[str, str | None]:
    """The value to send (a file becomes an upload placeholder) and why it is refused."""
    if media is None or bind.kind == "text" or not value:
        return value, _value_problem(bind, value, hosts)
    sent, reason = media(bind.kind, value)
    return sent, (f"input {bind.slot.id!r}: {value[:100]!r} {reason}" if reason else None)


def _value_problem(bind: _Binding, value: str, hosts: tuple[str, ...]) -> str | None:
    """Why FLORA would refuse this input value, or None (an empty optional input is left out)."""
    name = bind.slot.id
    if not value:
        return None if bind.slot.optional else f"input {name!r} is required but empty"
    if bind.kind != "text":
        reason = check_media_url(value, hosts)
        return f"input {name!r}: {value[:100]!r} {reason}" if reason else None
    if len(value) > MAX_TEXT_CHARS:
        return (
            f"input {name!r} is {len(value):,} characters; FLORA takes at most {MAX_TEXT_CHARS:,}"
        )
    return None


def _check_output_names(
    m: Manifest,
    specs: list[JobSpec],
    techniques: Mapping[str, Technique],
    where: tuple[str, dict[int, int]],
    errors: list[ManifestError],
) -> list[JobSpec]:
    """Drop jobs whose output file names clash (ignoring case) with an earlier job's."""
    source, lines = where
    names = _NameSet()
    kept: list[JobSpec] = []
    for spec in specs:
        problems = names.add_job(m, spec, techniques[spec.technique])
        for problem in problems:
            errors.append(ManifestError(problem, path=source, line=lines.get(spec.row_index)))
        if not problems:
            kept.append(spec)
    return kept


class _NameSet:
    """Output paths taken so far, compared case-insensitively, files and folders both."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.folders: dict[str, str] = {}

    def add_job(self, m: Manifest, spec: JobSpec, technique: Technique) -> list[str]:
        names: list[tuple[str, str]] = []
        for position, slot in enumerate(technique.outputs):
            try:
                name = render_output_name(
                    m.output_name,
                    spec.row,
                    technique=spec.technique,
                    output_id=slot.id,
                    ext=ext_for(slot.type),
                    index=position,
                    row_number=spec.row_index + 1,
                    key=job_key(spec),
                )
            except ManifestError as exc:
                return [f"output.name: {exc.message}"]
            names.append((name, f"{spec.source} ({spec.technique} output {slot.id!r})"))
        problems: list[str] = []
        mine = _NameSet()  # the outputs of one job must not clash with each other either
        for name, owner in names:
            problem = self._clash(name, owner) or mine._clash(name, owner)
            if problem:
                problems.append(problem)
            mine._take(name, owner)
        if not problems:
            for name, owner in names:
                self._take(name, owner)
        return problems

    def _clash(self, name: str, owner: str) -> str | None:
        folded = unicodedata.normalize("NFC", name).casefold()
        other = self.files.get(folded) or self.folders.get(folded)
        other = other or next((self.files[p] for p in _parents(folded) if p in self.files), None)
        if other is None:
            return None
        return (
            f"output file {name!r} of {owner} clashes with {other} (names are compared "
            "ignoring case): make output.name unique, e.g. with the id column or {row}"
        )

    def _take(self, name: str, owner: str) -> None:
        folded = unicodedata.normalize("NFC", name).casefold()
        self.files[folded] = owner
        for parent in _parents(folded):
            self.folders.setdefault(parent, owner)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
