"""From a manifest and its rows to jobs: the schema checks, then one ``JobSpec`` per run.

``check_manifest`` finds the problems of the manifest itself against the rows' columns
and the techniques' schemas (they void the batch); ``build_jobs`` renders each (row,
technique) pair into a ``JobSpec``, the unit that is paid for once, and drops the rows
FLORA would refuse, each problem located at ``rows_file:line:column``.  Both are
functions of their arguments: no I/O (a ``MediaResolver`` may read input files).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import ManifestError
from ..keys import BY_ROW_ID, job_key, normalise
from ..types import IOSlot, JobKey, JobSpec, RunInput, Technique
from ..wire import DEFAULT_ALLOWED_HOSTS, check_media_url
from .naming import OUTPUT_FIELDS, ext_for, render_output_name, render_template, template_fields
from .rows import Row
from .yaml_reader import unknown

if TYPE_CHECKING:  # manifest.py re-exports this module's functions: no import cycle
    from .model import Manifest, TechniqueUse

#: Longest text input sent to FLORA, in characters.
MAX_TEXT_CHARS = 10_000
#: Technique slot types, by their spelling with ``_`` removed and lower-cased.
_SLOT_TYPES = {t.lower(): t for t in ("text", "imageUrl", "videoUrl", "audioUrl", "documentUrl")}
#: Slot types the create endpoint accepts as run inputs (CONTRACT.md §3).
_SENDABLE = ("text", "imageUrl", "videoUrl")

#: ``build_jobs``' hook for media inputs: ``(slot type, cell value) -> (value to send,
#: problem)``; ``sources.MediaInputs`` turns local files and web images into upload
#: placeholders.  Without one, a media input must be an https URL on an allowed host.
MediaResolver = Callable[[str, str], tuple[str, str | None]]


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
        add(unknown(f"id column {m.id_column!r}", m.id_column, columns), m.lines.get("id"))
    for use in m.uses:
        technique = techniques.get(use.slug)
        if technique is None:
            add(unknown(f"technique {use.slug!r}", use.slug, sorted(techniques)), use.line)
        else:
            _check_use(use, technique, columns, add)
    return problems


def _check_output_name(template: str, columns: Sequence[str], add: Callable[[str], None]) -> None:
    fields = template_fields(template)
    if "output_id" not in fields:
        add("output.name must use {output_id}: one run can return several outputs")
    choices = [*columns, *OUTPUT_FIELDS]
    for name in [f for f in fields if f not in choices]:
        add(unknown(f"placeholder {{{name}}} in output.name", name, choices))


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
            add(unknown(f"input {input_id!r} for {use.slug}", input_id, slot_ids), line)
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
            add(unknown(what, missing, columns), line)
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

    Identical jobs (same technique and inputs after normalising) are told apart so
    each is paid for once and only once: by their row id when the manifest has an id
    column (``keys.BY_ROW_ID``: inserting, deleting or moving a twin row changes no
    other row's key), else by ``occurrence`` 0, 1, 2... in row order.

    ``media``, when given, decides what a media input sends (``MediaResolver``): a
    local file or a web image becomes an upload placeholder that the key hashes.
    """
    keyed, errors = build_keyed_jobs(
        m, columns, rows, techniques, allowed_hosts=allowed_hosts, media=media
    )
    return [spec for _, spec in keyed], errors


def build_keyed_jobs(
    m: Manifest,
    columns: list[str],
    rows: list[Row],
    techniques: Mapping[str, Technique],
    *,
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS,
    media: MediaResolver | None = None,
) -> tuple[list[tuple[JobKey, JobSpec]], list[ManifestError]]:
    """``build_jobs``, each job with its ``job_key``: the one hash per job a batch needs.

    Numbering identical jobs and naming their output files both need the key, and so
    do the plan and the ledger; computed once here, it is handed on (a resumed
    100,000-row batch spent most of its planning time re-hashing the same jobs).
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
    keyed = _numbered(specs, by_id=m.id_column is not None)
    del specs
    lines = {row.index: row.line for row in rows}
    return _check_output_names(m, keyed, techniques, (source, lines), errors), errors


def _spec(
    m: Manifest, slug: str, inputs: tuple[RunInput, ...], row: Row, row_id: str | None, source: str
) -> JobSpec:
    # The row's cells are shared, not copied: neither a Row nor a JobSpec changes them,
    # and a copy per job was 100,000 more dicts alive at once.
    return JobSpec(
        batch=m.name,
        technique=slug,
        inputs=inputs,
        row_index=row.index,
        row_id=row_id,
        row=row.values,
        source=f"{source}:{row.line}",
        output_name=m.output_name,
    )


def number_occurrences(specs: Sequence[JobSpec]) -> list[JobSpec]:
    """Tell identical jobs (same key at occurrence 0) apart as ``build_jobs`` does: by
    row id when every job has one, else occurrences 0, 1, 2... in order."""
    by_id = bool(specs) and all(s.row_id is not None for s in specs)
    return [spec for _, spec in _numbered([replace(s, occurrence=0) for s in specs], by_id=by_id)]


def _numbered(specs: Sequence[JobSpec], *, by_id: bool) -> list[tuple[JobKey, JobSpec]]:
    """Specs at occurrence 0 told apart, with their keys (hashed again only if identical)."""
    if by_id:
        return _by_row_id(specs)
    seen: dict[JobKey, int] = {}
    out: list[tuple[JobKey, JobSpec]] = []
    for spec in specs:
        key = job_key(spec)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n:
            spec = replace(spec, occurrence=n)
            out.append((job_key(spec), spec))
        else:
            out.append((key, spec))
    return out


def _by_row_id(specs: Sequence[JobSpec]) -> list[tuple[JobKey, JobSpec]]:
    """Identical specs (each with its row id) keyed by their row id; the others as they are."""
    keyed = [(job_key(spec), spec) for spec in specs]
    count = Counter(key for key, _ in keyed)
    if len(count) == len(keyed):
        return keyed
    out: list[tuple[JobKey, JobSpec]] = []
    for key, spec in keyed:
        if count[key] > 1:
            spec = replace(spec, occurrence=BY_ROW_ID)
            key = job_key(spec)
        out.append((key, spec))
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
    keyed: list[tuple[JobKey, JobSpec]],
    techniques: Mapping[str, Technique],
    where: tuple[str, dict[int, int]],
    errors: list[ManifestError],
) -> list[tuple[JobKey, JobSpec]]:
    """Drop jobs whose output file names clash (ignoring case) with an earlier job's."""
    source, lines = where
    names = _NameSet()
    kept: list[tuple[JobKey, JobSpec]] = []
    for key, spec in keyed:
        problems = names.add_job(m, spec, key, techniques[spec.technique])
        for problem in problems:
            errors.append(ManifestError(problem, path=source, line=lines.get(spec.row_index)))
        if not problems:
            kept.append((key, spec))
    return kept


def check_saved_names(
    m: Manifest,
    new: list[tuple[JobKey, JobSpec]],
    saved: tuple[Mapping[str, JobKey], Callable[[JobKey], str]],
    output_ids: Mapping[str, tuple[str, ...]],
    techniques: Mapping[str, Technique],
    where: tuple[str, dict[int, int]],
    errors: list[ManifestError],
) -> list[tuple[JobKey, JobSpec]]:
    """Drop new jobs whose output file would take the name of a file the batch saved.

    ``_check_output_names`` compares the names the rows render now; a job already
    done keeps the file it saved under the name its row had then (rows move, ids
    repeat, a column the name uses is edited), and a new job taking that name would
    be paid for and then refused at download (``Downloads._claim``).  So before
    anything is bought, each new job's names are compared with the saved files'
    names (``saved``: name in the results folder -> the job whose file it is, and how
    to name that job in a message), ignoring case and the extension (it comes from the
    content type served).  A run's output ids come from
    FLORA, not from the technique's slots: each job is named with its slot ids and with
    the output ids the batch's runs of its technique returned (``output_ids``:
    technique -> output ids, in the ledger's order, ``Ledger.output_ids``).
    Located like the other row problems; ``where`` is ``(rows file, line by row index)``.
    """
    names, whose = saved
    taken = {_loose(name): (name, key) for name, key in names.items()}
    if not taken:
        return new
    source, lines = where
    kept: list[tuple[JobKey, JobSpec]] = []
    for key, spec in new:
        slots = tuple(slot.id for slot in techniques[spec.technique].outputs)
        ids = {slots, output_ids.get(spec.technique, ())}
        clash = next((c for c in _names_of(m, spec, key, ids) if _loose(c) in taken), None)
        if clash is None:
            kept.append((key, spec))
            continue
        name, owner = taken[_loose(clash)]
        msg = (
            f"an output file of {spec.source} ({spec.technique}) would be named {name!r}, "
            f"saved before for {whose(owner)} (names are compared ignoring case and "
            "extension): make output.name unique, e.g. with the id column or {row}"
        )
        errors.append(ManifestError(msg, path=source, line=lines.get(spec.row_index)))
    return kept


def _names_of(
    m: Manifest, spec: JobSpec, key: JobKey, output_ids: set[tuple[str, ...]]
) -> list[str]:
    """The job's output names with each set of output ids it may get (rendering passed)."""
    names: list[str] = []
    for ids in sorted(output_ids):
        for index, output_id in enumerate(ids):
            names.append(_render_name(m, spec, key, output_id, ".bin", index))
    return names


def _render_name(
    m: Manifest, spec: JobSpec, key: JobKey, output_id: str, ext: str, index: int
) -> str:
    return render_output_name(
        m.output_name,
        spec.row,
        technique=spec.technique,
        output_id=output_id,
        ext=ext,
        index=index,
        row_number=spec.row_index + 1,
        key=key,
    )


def _loose(name: str) -> str:
    """How a planned name meets a saved one: folded, without the last extension."""
    head, _, last = _folded(name).rpartition("/")
    stem = last.rsplit(".", 1)[0] if "." in last[1:] else last
    return f"{head}/{stem}" if head else stem


class _NameSet:
    """Output paths taken so far, compared case-insensitively, files and folders both."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.folders: dict[str, str] = {}

    def add_job(self, m: Manifest, spec: JobSpec, key: JobKey, technique: Technique) -> list[str]:
        """Take the job's output names, or return why they clash (and take none)."""
        names: list[tuple[str, list[str], str, str]] = []  # (folded, its folders, name, owner)
        for position, slot in enumerate(technique.outputs):
            try:
                name = _render_name(m, spec, key, slot.id, ext_for(slot.type), position)
            except ManifestError as exc:
                return [f"output.name: {exc.message}"]
            owner = f"{spec.source} ({spec.technique} output {slot.id!r})"
            folded = _folded(name)
            names.append((folded, _parents(folded), name, owner))
        problems: list[str] = []
        # The outputs of one job must not clash with each other either (a job with one
        # output, the usual case, has nothing to compare: no set is built for it).
        mine = _NameSet() if len(names) > 1 else None
        for folded, parents, name, owner in names:
            problem = self._clash(folded, parents, name, owner)
            if mine is not None:
                problem = problem or mine._clash(folded, parents, name, owner)
                mine._take(folded, parents, owner)
            if problem:
                problems.append(problem)
        if not problems:
            for folded, parents, _, owner in names:
                self._take(folded, parents, owner)
        return problems

    def _clash(self, folded: str, parents: list[str], name: str, owner: str) -> str | None:
        other = self.files.get(folded) or self.folders.get(folded)
        other = other or next((self.files[p] for p in parents if p in self.files), None)
        if other is None:
            return None
        return (
            f"output file {name!r} of {owner} clashes with {other} (names are compared "
            "ignoring case): make output.name unique, e.g. with the id column or {row}"
        )

    def _take(self, folded: str, parents: list[str], owner: str) -> None:
        self.files[folded] = owner
        for parent in parents:
            self.folders.setdefault(parent, owner)


def _folded(name: str) -> str:
    """How two output names are compared: NFC, then case-folded."""
    return unicodedata.normalize("NFC", name).casefold()


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``: the folders a file name makes."""
    if "/" not in path:
        return []
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
