"""Manifests and their rows, to jobs: what a batch asks for, checked before anything is paid.

``model`` reads a manifest (YAML, with ``yaml_reader``'s line numbers) or a rows file
with ``--technique``; ``rows`` (``rows_text``, ``rows_sheets``, ``cells``) reads CSV,
XLSX, JSONL and Parquet rows; ``jobs`` turns rows and technique schemas into ``JobSpec``s,
each problem located at ``file:line:column``; ``naming`` renders output file names;
``sources`` says what each media cell sends (as is, or an upload placeholder).  All of it
is pure but for reading the files it is pointed at.
"""

from .jobs import (
    MAX_TEXT_CHARS,
    MediaResolver,
    build_jobs,
    build_keyed_jobs,
    check_manifest,
    number_occurrences,
    send_type,
)
from .model import TOP_KEYS, Manifest, TechniqueUse, load_manifest, manifest_from_rows

__all__ = [
    "MAX_TEXT_CHARS",
    "TOP_KEYS",
    "Manifest",
    "MediaResolver",
    "TechniqueUse",
    "build_jobs",
    "build_keyed_jobs",
    "check_manifest",
    "load_manifest",
    "manifest_from_rows",
    "number_occurrences",
    "send_type",
]
