"""Input files as FLORA assets: each distinct file uploaded once, resumably (ASSETS.md).

``Uploader`` runs beside the worker (``pipeline.run_batch``): it uploads every file that
a job still to be submitted needs, four at a time, while the worker submits the jobs
whose inputs are ready; ``resolve_inputs`` is the worker's hook that swaps a job's
placeholders (``sources.py``) for the asset URLs right before its create.  A job whose
file is not ready yet waits, unpaid; one whose file failed is not submitted this run.

One ``uploads`` row per distinct file (``ledger/upload_store.py``)::

    planned ──begin──► uploading ──────────────► ready
                           │  (asset id noted the moment it is known)
                           └──► failed ──(next run: reopen as attempt n+1, a new key)──► planned

Paths (ASSETS.md §1): a file up to 4 MiB is one multipart create (``direct``); a larger
one is reserved (``signed_url``), sent to the storage host, completed (the row's ``step``
says how far it got); a web image is fetched by FLORA (``url``) and, if FLORA will not,
downloaded here and uploaded as a file, keyed by its content.  Every asset is polled until
``ready``.  A ``ready`` row whose asset a job still needs is checked with one
``GET /assets/{id}`` per run, and uploaded again if FLORA has lost it; job keys do not
change, since they hash the placeholder, not the URL.

Never two assets for one file:

* the create's ``Idempotency-Key`` (``sources.upload_idempotency_key``: the file's hash
  and the workspace) is committed by ``begin_upload`` before the request leaves, and a
  lost answer (dropped connection, timeout, 5xx, broken JSON) is resent with that key,
  in this run or the next (a key older than FLORA's two-hour window is looked up first);
* a 409 ``idempotency_duplicate`` names no asset (ASSETS.md §9), so the asset is found in
  ``GET /assets`` (newest first) by its file name, which carries a hash tag, its size and
  a creation time in the window of this key's sends; if it is not listed, the file waits
  for the next run: it is never created again under a new key;
* only a definite answer (a 4xx refusal, a ``failed`` asset) marks a row ``failed``; a row
  whose create may have landed stays ``uploading`` with its key.
"""

from .calls import AssetCalls
from .probe import FileProbe, hash_file, image_pixels, probe_file
from .stage import UPLOAD_CONCURRENCY, Uploader, UploadReport

__all__ = [
    "UPLOAD_CONCURRENCY",
    "AssetCalls",
    "FileProbe",
    "UploadReport",
    "Uploader",
    "hash_file",
    "image_pixels",
    "probe_file",
]
