"""The manifest: what to run, over which rows, and where the results go.

``load_manifest`` reads a YAML manifest (docs/manifest.md is the reference) and reports
*every* problem at once, each at ``file:line`` (the node walking is ``yaml_reader``);
``manifest_from_rows`` builds the same ``Manifest`` from a bare CSV and a few
``--input`` pairs.  ``build_jobs`` (``jobs.py``) then checks the rows
against the techniques' schemas and turns each (row, technique) pair into a
``JobSpec``, the unit that is paid for once.

Nothing here reads the clock, the environment or the network; ``load_manifest`` reads
the manifest file (and checks that the rows file exists).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ManifestError, ManifestProblems
from .naming import default_output_name, template_fields
from .rows import FORMATS, RowsSource, rows_from_cells
from .yaml_reader import (
    NULL_TAG,
    Reader,
    compose,
    is_null,
    kind,
    node_line,
    read_count,
    read_flag,
    read_manifest,
    read_number,
)

__all__ = ["TOP_KEYS", "Manifest", "TechniqueUse", "load_manifest", "manifest_from_rows"]

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

    All but ``ledger``, kept as written: ``locations.ledger_location`` decides where the
    ledger is (a flag, the environment or the config file may name another), and reads
    a relative path from the manifest's folder there.

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
    root = compose(read_manifest(path) if text is None else text, path)
    reader = Reader(path)
    if root is None:
        reader.error("the manifest is empty: it needs name, technique, rows and inputs", line=1)
    elif not isinstance(root, MappingNode):
        reader.error(
            f"the manifest must be a mapping (name: ..., technique: ...), not a {kind(root)}", root
        )
    else:
        manifest = _manifest(
            reader, reader.entries(root, TOP_KEYS, "the manifest"), node_line(root)
        )
        if manifest is not None and not reader.problems:
            return manifest
    fallback = ManifestError("the manifest could not be read", path=str(path))
    raise ManifestProblems(reader.problems or [fallback])


def _manifest(r: Reader, top: dict[str, Node], first_line: int) -> Manifest | None:
    for key, node in top.items():
        r.lines[key] = r.line_of(node)
    # An optional key left empty (``max_cost:``) means the default, as if it were absent.
    top = {k: v for k, v in top.items() if k not in OPTIONAL_KEYS or not is_null(v)}
    for key in ("name", "rows"):
        if key not in top:
            r.error(f"missing required key {key!r}", line=first_line)
    base = r.path.parent
    name = _name(r, top.get("name"))
    uses = _uses(r, top, first_line)
    rows = _rows(r, top["rows"], base) if "rows" in top else None
    id_column = r.text(top.get("id"), "id")
    out_dir, out_name = _output(r, top.get("output"), base, name, id_column)
    max_cost, concurrency, ledger, skip_invalid = _limits(r, top)
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


def _name(r: Reader, node: Node | None) -> str | None:
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


def _uses(r: Reader, top: dict[str, Node], first_line: int) -> tuple[TechniqueUse, ...]:
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


def _use_list(r: Reader, node: Node) -> tuple[TechniqueUse, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        r.error("techniques must be a non-empty list of {technique: ..., inputs: {...}}", node)
        return ()
    uses: dict[str, TechniqueUse] = {}
    for item in node.value:
        if not isinstance(item, MappingNode):
            r.error(f"each techniques entry must be a mapping, not a {kind(item)}", item)
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


def _use(r: Reader, slug_node: Node, inputs_node: Node) -> TechniqueUse | None:
    slug = _slug(r, slug_node)
    inputs = _inputs(r, inputs_node)
    if slug is None or inputs is None:
        return None
    templates, lines = inputs
    return TechniqueUse(slug=slug, inputs=templates, line=r.line_of(slug_node), input_lines=lines)


def _slug(r: Reader, node: Node) -> str | None:
    if isinstance(node, ScalarNode) and node.tag != NULL_TAG and SLUG_RE.fullmatch(str(node.value)):
        return str(node.value)
    shown = (
        repr(node.value)
        if isinstance(node, ScalarNode) and node.tag != NULL_TAG
        else f"a {kind(node)}"
    )
    r.error(f"technique must be a technique slug like studio-shot, not {shown}", node)
    return None


def _inputs(r: Reader, node: Node) -> tuple[dict[str, str], dict[str, int]] | None:
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
                templates[input_id], lines[input_id] = template, node_line(key_node)
    return (templates, lines) if len(templates) == len(node.value) else None


def _template(r: Reader, node: Node, what: str) -> str | None:
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


def _rows(r: Reader, node: Node, base: Path) -> RowsSource | None:
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
    r: Reader, node: Node, given: str | None, base: Path, encoding: str | None, sheet: str | None
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


def _inline_rows(r: Reader, node: SequenceNode) -> RowsSource | None:
    if not node.value:
        r.error("rows is an empty list", node)
        return None
    records: list[tuple[int, dict[str, object]]] = []
    for item in node.value:
        if isinstance(item, MappingNode):
            records.append((node_line(item), _inline_row(r, item)))
        else:
            r.error(f"each row must be a mapping of column: value, not a {kind(item)}", item)
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


def _inline_row(r: Reader, node: MappingNode) -> dict[str, object]:
    row: dict[str, object] = {}
    for key_node, value in node.value:
        key = str(key_node.value).strip() if isinstance(key_node, ScalarNode) else ""
        if not key or key in row:
            r.error(f"column {key!r} is blank or repeated in this row", key_node)
        elif not isinstance(value, ScalarNode):
            r.error(f"cell {key!r} must be a single value, not a {kind(value)}", value)
        else:
            row[key] = None if value.tag == NULL_TAG else value.value
    return row


def _output(
    r: Reader, node: Node | None, base: Path, name: str | None, id_column: str | None
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


def _limits(r: Reader, top: dict[str, Node]) -> tuple[float | None, int | None, str | None, bool]:
    """max_cost, concurrency, ledger (as written) and skip_invalid."""
    ledger = r.text(top.get("ledger"), "ledger")
    return (
        read_number(r, top.get("max_cost"), "max_cost"),
        read_count(r, top.get("concurrency")),
        ledger,
        read_flag(r, top.get("skip_invalid"), "skip_invalid"),
    )


def _assets(r: Reader, node: Node | None) -> tuple[str | None, str | None]:
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
