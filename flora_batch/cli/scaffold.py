"""``flora-batch init``: a ready-to-edit manifest and CSV template for one technique.

Pure text: ``manifest_text`` and ``csv_header`` are functions of the technique's schema,
so what ``init`` writes is exactly what a test can check.  The CSV has one column per
input the create endpoint can send (named after the input); the manifest maps each
input to its column and explains every input in a YAML comment.
"""

from __future__ import annotations

import csv
import io
import json
import re

from ..manifest import send_type
from ..manifest.naming import placeholder_ok
from ..types import IOSlot, Technique, money
from .techniques import constraints


def batch_name(slug: str) -> str:
    """A batch name (letters, digits, ``.``, ``_``, ``-``) for a technique's slug."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip("-.")[:100] or "batch"


def column_for(slot: IOSlot) -> str:
    """The CSV column that feeds an input: the input's id when it can be a placeholder."""
    return slot.id if placeholder_ok(slot.id) else re.sub(r"\W+", "_", slot.id).strip("_")


def columns(t: Technique) -> list[str]:
    """The template's columns: one per input FLORA can be sent, in the technique's order."""
    return [column_for(s) for s in t.inputs if send_type(s) is not None]


def csv_header(t: Technique) -> str:
    """The CSV template: a header line, ready for rows."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(columns(t))
    return out.getvalue()


def _comment(slot: IOSlot) -> list[str]:
    first, *more = constraints(slot)
    about = f" {slot.description}" if slot.description else ""
    return [f"  # {slot.id}: {slot.type}, {first}.{about}", *(f"  #   {c}" for c in more)]


def _input_lines(t: Technique) -> list[str]:
    lines: list[str] = []
    for slot in t.inputs:
        lines += _comment(slot)
        entry = f"{slot.id}: {json.dumps('{' + column_for(slot) + '}')}"
        lines.append(f"  {entry}" if send_type(slot) is not None else f"  # {entry}")
    return lines


def _line(entry: str, comment: str) -> str:
    """A YAML line with its comment aligned."""
    return f"{entry:<29} # {comment}"


def manifest_text(t: Technique, rows_file: str) -> str:
    """A manifest for ``t`` over ``rows_file``, every key explained in a comment."""
    outputs = ", ".join(f"{s.id} ({s.type})" for s in t.outputs) or "none listed"
    name = batch_name(t.slug)
    head = [
        f"# {t.name} ({t.slug}): {money(t.run_cost, t.cost_unit)} per run.",
        *([f"# {t.description}"] if t.description else []),
        f"# Outputs: {outputs}.",
        f"# Add one row per run to {rows_file}, then:",
        f"#   flora-batch plan {name}.yaml   (validates every row, estimates cost; buys nothing)",
        f"#   flora-batch run {name}.yaml    (runs it; run it again to resume)",
        _line(f"name: {name}", "the batch name: part of every job's identity"),
        _line(f"technique: {t.slug}", "flora-batch techniques show " + t.slug),
        _line(f"rows: {json.dumps(rows_file)}", "CSV, XLSX, JSONL or Parquet, beside this file"),
        _line("# id: sku", "optional: a column naming each row (and its files)"),
        _line("inputs:", "technique input id -> template over the columns"),
    ]
    tail = [
        "output:",
        _line(f"  dir: results/{name}", "where the files land (relative to this file)"),
        _line('  # name: "{technique}/row-{row}-{output_id}{ext}"', "optional file names"),
        _line("# max_cost: 10.00", "optional hard cap on money this batch may spend"),
        _line("# concurrency: 4", "optional: runs in flight at most"),
    ]
    return "\n".join([*head, *_input_lines(t), *tail]) + "\n"


def unsendable_required(t: Technique) -> list[str]:
    """Required inputs no create request can carry (the batch cannot run as written)."""
    return [s.id for s in t.inputs if not s.optional and send_type(s) is None]
