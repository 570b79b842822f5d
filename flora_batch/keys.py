"""Job identity: the key that makes a paid run happen at most once.

A job's key is derived from *what would be paid for*, never from where it sits in a
spreadsheet.  The same key is sent to FLORA as the idempotency key of attempt 1 and is
the ledger's primary key, so this module is a written contract: change what is hashed
and every existing ledger sees every job as new.  That is why the key carries a
version tag (``fk1:``); a different derivation must use a different tag.

What is hashed (``key_material``)::

    {"batch": <batch name>,
     "technique": <technique slug>,
     "inputs": [[input id, input type, value], ...]   sorted,
     "occurrence": <0, 1, 2 ... among identical jobs, in input order>}

serialised with ``canonical_json`` (sorted keys, no spaces, UTF-8 kept as is) and
digested with BLAKE2b (16 bytes, hex).  Every string is normalised first: surrounding
whitespace stripped, then Unicode NFC, so ``"Café"`` typed on a Mac and on Windows
gives one key.

Identical jobs (the same material at occurrence 0) are told apart in one of two ways
(``jobs.build_keyed_jobs`` decides):

* without an ``id`` column, by ``occurrence`` 0, 1, 2... in row order (``fk1:``);
* with one, by the row's id: such a job has ``occurrence`` ``BY_ROW_ID`` (-1, as the
  ledger's ``occurrence`` column records it) and its material holds
  ``"occurrence": {"id": <row id>}`` instead of a number; its key is tagged ``fk2:``.
  Numbering by order gave an inserted identical row the key of the row after it, so
  keys moved down the group and the last row bought a file another row already had
  (issue #16).  A job alone with its inputs keeps its ``fk1:`` occurrence-0 key either
  way, and no ``fk1:`` material was changed: every key an older flora-batch made is
  still the key of the same material.  A ledger job that a row id had under another
  key (occurrence n by order, or occurrence 0 before a twin row appeared) stays that
  row's job: ``plan.keep_earlier_keys`` finds it, and nothing is bought again.

A media input that is a local file or a web image off FLORA's input hosts is hashed as
its upload placeholder (``asset:sha256:<hex>`` of the file's bytes, or
``asset:url:<normalized url>``; ``sources.py``), never as the asset URL it is sent as, so
re-uploading a file never changes a job's key.

What is *not* hashed: the row's position (reordering rows keeps every key), the
``id`` column's value (``row_id``) except to tell identical jobs apart, columns no
input template uses, the output naming
template and folder, ``max_cost``/``concurrency``/``ledger``, the rows file's name or
format, YAML comments, key order and whitespace, and the order of the inputs.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from typing import Any

from .types import JobKey, JobSpec

#: Version tag of the key derivation below.  Bump it only with a new derivation.
KEY_PREFIX = "fk1:"
#: Tag of the keys of identical jobs told apart by their row id (``BY_ROW_ID``).
ID_KEY_PREFIX = "fk2:"
#: ``JobSpec.occurrence`` of an identical job told apart by its row id, not its order.
BY_ROW_ID = -1
_DIGEST_SIZE = 16


def compact_json(*, sort_keys: bool) -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=..., separators=(",", ":"), ensure_ascii=False)`` as
    a function whose encoder is made once: ``dumps`` with options (and ``encode``) make a
    new one at every call, a fifth of keying a job and a third of writing an event.

    Its C encoder is made without the circular-reference check, which changes no output
    (keys and ledger values are trees of dicts, lists, strings and numbers), only the
    time it takes.
    """
    encoder = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return encoder.encode
    c_encode = make(None, encoder.default, basestring, None, ":", ",", sort_keys, False, True)
    return lambda value: "".join(c_encode(value, 0))


_CANONICAL = compact_json(sort_keys=True)


def canonical_json(obj: Any) -> str:
    """One spelling per value: the text that gets hashed, so it must never vary."""
    return _CANONICAL(obj)


def normalise(value: str) -> str:
    """Strip surrounding whitespace and compose Unicode (NFC): equal-looking text is equal."""
    return unicodedata.normalize("NFC", value.strip())


def key_material(spec: JobSpec) -> dict[str, Any]:
    """Exactly what ``job_key`` hashes; see the module docstring for what is left out.

    Raises:
        ValueError: ``occurrence`` is ``BY_ROW_ID`` but the job has no row id.
    """
    inputs = sorted([normalise(i.id), normalise(i.type), normalise(i.value)] for i in spec.inputs)
    return {
        "batch": normalise(spec.batch),
        "technique": normalise(spec.technique),
        "inputs": inputs,
        "occurrence": _occurrence(spec),
    }


def _occurrence(spec: JobSpec) -> int | dict[str, str]:
    if spec.occurrence != BY_ROW_ID:
        return spec.occurrence
    if spec.row_id is None:
        raise ValueError("a job told apart by its row id needs a row id")
    return {"id": normalise(spec.row_id)}


def job_key(spec: JobSpec) -> JobKey:
    """The job's identity and first idempotency key: ``"fk1:"`` + 32 hex digits
    (``"fk2:"`` for an identical job told apart by its row id).

    Args:
        spec: the job; only the fields listed in the module docstring matter.
    """
    data = canonical_json(key_material(spec)).encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()
    prefix = ID_KEY_PREFIX if spec.occurrence == BY_ROW_ID else KEY_PREFIX
    return JobKey(prefix + digest)


def attempt_key(key: str, attempt: int) -> str:
    """The idempotency key of one attempt: the job key itself, then ``key-r2``, ``key-r3``...

    FLORA burns a key for hours even when its run fails, so a deliberate re-run needs a
    fresh key that is still derived from the job (CONTRACT.md §12.7).

    Raises:
        ValueError: ``attempt`` is below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    return key if attempt == 1 else f"{key}-r{attempt}"
