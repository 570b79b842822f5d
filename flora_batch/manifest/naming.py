"""Templates over row columns, and output file names that can never leave the results folder.

Two kinds of template share one small engine (``render_template``): input templates
(``"Studio shot of {title}"``) and the output naming template
(``"{sku}/{technique}-{output_id}{ext}"``).  It is ``str.format`` syntax cut down to
what a spreadsheet needs: ``{column}`` placeholders, ``{{``/``}}`` for literal braces and
an optional format spec (``{row:04d}``, ``{title:.40}``).  There is no attribute or
index access and no ``!r`` conversion: the whole text between the braces is the column
name, so columns may be called ``Image URL`` or ``price.eur``.

Output names come from spreadsheet cells, which are untrusted text, and end up as paths
on Windows, macOS and Linux; ``render_output_name`` documents the rules.  Pure: no
file system access.
"""

from __future__ import annotations

import functools
import hashlib
import string
import unicodedata
from collections.abc import Mapping

from ..errors import ManifestError

#: Longest path component, in UTF-8 bytes (most file systems allow 255).
MAX_COMPONENT_BYTES = 200
#: Hex digits of the job key that ``{key}`` gives: enough to tell a batch's jobs apart.
KEY_DIGITS = 12
#: The results folder's temporary area (``results.TMP_DIR``): no output may land in it.
RESERVED_FOLDER = ".flora-tmp"
#: Where the files of superseded jobs go (runs of edited or removed rows, finished anyway:
#: ``Downloads._name``); no name rendered from a row may start with it.
SUPERSEDED_FOLDER = "_superseded"
#: Fields every output template may use besides the row's columns.  They win over a
#: column of the same name.
OUTPUT_FIELDS = ("technique", "output_id", "ext", "index", "row", "key")

_WINDOWS_ILLEGAL = frozenset('<>:"|?*')
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789¹²³"}
)
_FORMATTER = string.Formatter()

_EXT_BY_CONTENT_TYPE = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/svg+xml": ".svg",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/wave": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "application/json": ".json",
}
_EXT_BY_OUTPUT_TYPE = {
    "imageUrl": ".png",
    "videoUrl": ".mp4",
    "audioUrl": ".mp3",
    "documentUrl": ".pdf",
    "text": ".txt",
}


# --- templates -------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parse(template: str) -> tuple[tuple[str, str | None, str], ...]:
    """``(literal, field or None, format spec)`` pieces, or a ManifestError saying what is wrong.

    Cached: a batch renders the same few templates once per row (a ManifestError is
    raised again on every call, never cached).
    """
    try:
        pieces = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ManifestError(
            f"template {template!r} is not valid: {exc} (write {{{{ for a literal {{)"
        ) from exc
    out: list[tuple[str, str | None, str]] = []
    for literal, field, spec, conversion in pieces:
        if field is None:
            out.append((literal, None, ""))
            continue
        name = field.strip()
        if not name:
            raise ManifestError(
                f"template {template!r} has an empty {{}}: name a column inside the braces"
            )
        if conversion is not None:
            raise ManifestError(
                f"template {template!r}: conversions like !{conversion} are not supported"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ManifestError(f"template {template!r}: nested placeholders are not supported")
        out.append((literal, name, spec or ""))
    return tuple(out)


@functools.lru_cache(maxsize=256)  # per output name rendered: a batch has a few templates
def template_fields(template: str) -> tuple[str, ...]:
    """The column names a template uses, in order and without repeats.

    Raises:
        ManifestError: the template is not valid (no location; callers add it).
    """
    names = (field for _, field, _ in _parse(template) if field is not None)
    return tuple(dict.fromkeys(names))


def render_template(template: str, values: Mapping[str, str | int]) -> str:
    """Fill a template's placeholders from ``values``.

    Raises:
        ManifestError: bad syntax, a placeholder ``values`` lacks, or a format spec that
            does not fit the value (``{title:d}``).
    """
    parts: list[str] = []
    for literal, field, spec in _parse(template):
        parts.append(literal)
        if field is None:
            continue
        if field not in values:
            raise ManifestError(f"template {template!r} uses {{{field}}}, which is not a column")
        try:
            parts.append(format(values[field], spec))
        except (ValueError, TypeError) as exc:
            raise ManifestError(
                f"template {template!r}: format {{{field}:{spec}}} failed: {exc}"
            ) from exc
    return "".join(parts)


def placeholder_ok(column: str) -> bool:
    """Whether a column name can be written as ``{column}`` in a template."""
    if not column.strip() or any(c in column for c in "{}:!"):
        return False
    return template_fields("{" + column + "}") == (column.strip(),)


# --- output names ----------------------------------------------------------------------


def default_output_name(id_column: str | None) -> str:
    """The naming template used when the manifest has no ``output.name``.

    ``{technique}/{<id_column>}-{output_id}{ext}`` names files after the row's id.
    Without an id column (or with one that cannot be a placeholder) the 1-based row
    number stands in, followed by the first 8 hex digits of the job key:
    ``{technique}/row-{row}-{key:.8}-{output_id}{ext}``.  Row numbers move when rows are
    inserted; the key part keeps a new row from taking (and overwriting) the file of
    a job that already ran.
    """
    if id_column is not None and placeholder_ok(id_column):
        return "{technique}/{" + id_column + "}-{output_id}{ext}"
    return "{technique}/row-{row}-{key:.8}-{output_id}{ext}"


def render_output_name(
    template: str,
    row: Mapping[str, str],
    *,
    technique: str,
    output_id: str,
    ext: str,
    index: int,
    row_number: int,
    key: str,
) -> str:
    """A relative POSIX path for one output file, safe to join under the results folder.

    Fields: every column of ``row``, plus ``{technique}``, ``{output_id}``, ``{ext}``
    (with its dot), ``{index}`` (the output's 0-based position among its run's
    outputs), ``{row}`` (``row_number``: the row's 1-based position) and ``{key}`` (the
    first 12 hex digits of the job key, whatever the caller passes: the full key or
    its digest).  These six win over columns of the same name.

    Rules, applied in this order, so the result is deterministic and can never escape:

    1. A value never makes folders: ``/`` and ``\\`` inside a value become ``_``.  Only
       slashes written in the template itself (``/`` or ``\\``) separate folders.
    2. Each component is NFC-normalised; control characters (NUL, newlines, C1, line
       and paragraph separators, bidi overrides) and the characters Windows forbids,
       ``<>:"|?*``, become ``_``.  So a drive letter ``C:`` becomes ``C_``.
    3. Surrounding whitespace and trailing dots and spaces are removed (Windows drops
       them silently).  Components left empty (``""``, ``.``, ``..``) are dropped: a
       leading ``/`` or any ``..`` can never climb out of the results folder.
    4. Windows device names (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM0-9``,
       ``LPT0-9``, with any extension, any case) get a ``_`` prefix.
    5. A component longer than 200 UTF-8 bytes is cut at a character boundary and ends
       with ``-`` + 8 hex digits of its BLAKE2b hash + its extension (when it has a
       short one), so long names stay distinct.
    6. If nothing is left, the name is ``row-{row}-{output_id}{ext}``.
    7. A first component that is ``.flora-tmp`` (any case: the results folder's
       temporary area, swept on every run) or ``_superseded`` (where the files of
       superseded jobs go) gets a ``_`` prefix.

    Raises:
        ManifestError: the template is invalid or names a missing column.
    """
    # Only the columns the template names are flattened (it names a few of many).
    fields: dict[str, str | int] = {
        k: _flatten(row[k]) for k in template_fields(template) if k in row
    }
    fields.update(
        technique=_flatten(technique),
        output_id=_flatten(output_id),
        ext=_flatten(ext),
        index=index,
        row=row_number,
        key=key.rsplit(":", 1)[-1][:KEY_DIGITS],
    )
    path = _clean_path(render_template(template, fields))
    path = path or _clean_path(f"row-{row_number}-{output_id}{ext}") or "_"
    first = path.split("/", 1)[0].casefold()
    return "_" + path if first in (RESERVED_FOLDER, SUPERSEDED_FOLDER) else path


def _flatten(value: str) -> str:
    """Rule 1: a value's slashes are not folder separators."""
    return value.replace("/", "_").replace("\\", "_")


def _clean_path(text: str) -> str:
    parts = [_clean_component(p) for p in text.replace("\\", "/").split("/")]
    return "/".join([p for p in parts if p])


def _bad_char(char: str) -> bool:
    if char in _WINDOWS_ILLEGAL or char in _BIDI_CONTROLS:
        return True
    return unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")


def _clean_component(part: str) -> str:
    """Rules 2 to 5 for one path component; ``""`` means drop it."""
    if part.isascii() and part.isprintable():  # the usual case, ~10x faster: NFC is a no-op
        if not _WINDOWS_ILLEGAL.isdisjoint(part):  # and no ASCII control or bidi character
            part = "".join("_" if c in _WINDOWS_ILLEGAL else c for c in part)
    else:
        part = "".join("_" if _bad_char(c) else c for c in unicodedata.normalize("NFC", part))
    part = part.strip().rstrip(". ")
    if not part:
        return ""
    if part.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        part = "_" + part
    return _fit(part)


def _fit(part: str) -> str:
    """Rule 5: cut an overlong component, keeping its extension and adding a short hash."""
    raw = part.encode("utf-8")
    if len(raw) <= MAX_COMPONENT_BYTES:
        return part
    dot = part.rfind(".")
    ext = part[dot:] if 0 < dot and len(part[dot:].encode("utf-8")) <= 16 else ""
    stem = part[: len(part) - len(ext)]
    tag = "-" + hashlib.blake2b(raw, digest_size=4).hexdigest()
    budget = MAX_COMPONENT_BYTES - len(ext.encode("utf-8")) - len(tag)
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return cut + tag + ext


def ext_for(output_type: str, content_type: str | None = None) -> str:
    """The file extension (with its dot) for an output.

    The response's content type wins when it is one we know (``image/jpeg`` gives
    ``.jpg``); otherwise the technique's output type decides (``imageUrl`` ``.png``,
    ``videoUrl`` ``.mp4``, ``audioUrl`` ``.mp3``, ``documentUrl`` ``.pdf``, ``text``
    ``.txt``), and anything else is ``.bin``.
    """
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in _EXT_BY_CONTENT_TYPE:
            return _EXT_BY_CONTENT_TYPE[mime]
        if mime.startswith("text/"):
            return ".txt"
    return _EXT_BY_OUTPUT_TYPE.get(output_type, ".bin")
