"""The plan memo: a batch's job keys, remembered under a digest of everything that made them.

Planning a resumed batch of 100,000 rows used to mean reading every row, rendering
every input and output name and hashing every job again, only to find each key done
in the ledger: two to three seconds (more on a slow machine) before anything happens.
Keys are a pure function of what ``pipeline.prepare`` reads, so ``run`` stores them in
the ledger once it has built them (``meta`` row ``plan-memo:<batch>``), under
``batch_digest``: a BLAKE2b over

* this memo format, the source of every ``flora_batch`` module (any upgrade or edit of
  the code starts afresh), the Python version and its Unicode tables (NFC), and the
  versions of the spreadsheet readers (openpyxl, pyarrow) for XLSX and Parquet;
* the parsed manifest, whole (its ``repr``: every field, inline rows included, and
  whatever field a later version adds);
* the rows file's bytes;
* the technique schemas fetched for this run;
* whether input files may be uploaded (a workspace is set).

A later ``prepare`` with the same digest takes the keys from the memo, and nothing is
rendered or hashed.  It does so only when it is safe to need no ``JobSpec`` at all:

* the memo is written only for a batch with no row problem and no input file to upload
  (a local file's bytes or a web image would be inputs the digest does not read);
* it is used only when every remembered key is already in the ledger, so nothing is
  new and nothing must be recorded (a batch with a new job is planned the long way,
  and its cost is the runs it is about to buy, not these seconds).

Anything unexpected (no rows file, a memo of another digest, an unreadable or
truncated value, a key the ledger does not know) means: plan the long way.  The memo
can make planning faster, never different; ``tests/faults/test_memo.py`` checks the two
ways against each other.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from .manifest import Manifest
from .types import JobKey, Technique

#: Version of the memo's digest and value; a different layout must use another.
MEMO_FORMAT = "flora-batch plan memo 1"
#: Readers outside this package whose output decides the rows of these formats.
_READERS = {"xlsx": ("openpyxl",), "parquet": ("pyarrow",)}


def memo_name(batch: str) -> str:
    """The ledger ``meta`` row that holds the batch's memo."""
    return f"plan-memo:{batch}"


def batch_digest(
    manifest: Manifest,
    techniques: Mapping[str, Technique],
    *,
    uploads: bool,
    code: str | None = None,
) -> str | None:
    """The digest of everything ``prepare`` reads to build the batch's keys.

    ``code`` stands for ``code_fingerprint()`` (tests give another version).  None when
    the rows file cannot be read: the long way reports that properly.
    """
    h = hashlib.blake2b(digest_size=20)
    for part in (
        MEMO_FORMAT,
        code_fingerprint() if code is None else code,
        repr(manifest),
        repr(sorted(techniques.items())),
        f"uploads={uploads}",
        *_reader_versions(manifest.rows.format),
    ):
        _feed(h, part.encode("utf-8"))
    path = manifest.rows.path
    if path is not None:
        try:
            with path.open("rb") as f:
                h.update(hashlib.file_digest(f, "blake2b").digest())
        except OSError:
            return None
    return h.hexdigest()


def _feed(h: hashlib.blake2b, data: bytes) -> None:
    """Length-prefixed, so no two sequences of parts feed the same bytes."""
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A digest of this package's Python source, the interpreter and its Unicode version.

    Reading some hundred small files takes a few milliseconds, once per process.
    """
    h = hashlib.blake2b(digest_size=20)
    _feed(h, f"{sys.version}|{unicodedata.unidata_version}".encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        _feed(h, path.relative_to(root).as_posix().encode("utf-8"))
        _feed(h, path.read_bytes())
    return h.hexdigest()


def _reader_versions(kind: str) -> list[str]:
    """The installed versions of the libraries that read this rows format."""
    out: list[str] = []
    for package in _READERS.get(kind, ()):
        try:
            out.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            out.append(f"{package}=none")
    return out


def encode(digest: str, keys: Sequence[JobKey]) -> str:
    """The memo's stored text: the digest, the number of keys, then one key per line."""
    return "\n".join([digest, str(len(keys)), *keys])


def decode(text: str | None, digest: str) -> list[JobKey] | None:
    """The remembered keys if ``text`` is a whole memo made under ``digest``, else None."""
    if not text:
        return None
    head, _, rest = text.partition("\n")
    if head != digest:
        return None
    count, _, body = rest.partition("\n")
    keys = body.split("\n") if body else []
    if not count.isdigit() or int(count) != len(keys) or len(set(keys)) != len(keys):
        return None
    return [JobKey(k) for k in keys]
