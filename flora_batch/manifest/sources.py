"""Where a media input comes from, decided at plan time; the I/O is a function passed in.

A media input (an ``imageUrl`` or ``videoUrl`` slot) may be:

* an ``https://`` URL on a host FLORA takes as a run input (``wire.DEFAULT_ALLOWED_HOSTS``):
  sent exactly as written;
* any other ``https://`` URL: FLORA fetches it into an asset (server-side fetch); if FLORA
  refuses, flora-batch downloads it and uploads the bytes (``uploads.py``);
* a local file: a path (relative to the manifest's folder, or absolute; ``~`` works) or a
  ``file://`` URL: uploaded as an asset, directly up to 4 MiB, by a signed upload above;
* anything else (``http://``, ``ftp://``, ``data:``, ...) is an error at the row.

Files and web images become **placeholders** in the job's inputs, and a placeholder is what
the job key hashes (``keys.py``), so a job's identity is its content, never the asset URL
FLORA hands out, and re-uploading a file never changes a job:

* ``asset:sha256:<64 hex digits>``: a local file, by the SHA-256 of its bytes;
* ``asset:url:<normalized URL>``: a web image, by its URL: scheme and host lower-cased, the
  default port (443) and any ``#fragment`` dropped, path and query kept as written.

The ledger's ``uploads`` table is keyed by ``upload_key(placeholder)``: the hex digest, or
``url:<normalized URL>``.  The worker swaps each placeholder for the asset URL recorded
there right before the create (``Uploader.resolve_inputs``).

Everything here is a function of its arguments: the only I/O, reading and hashing a local
file, is the ``Probe`` that the caller passes to ``MediaInputs``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..keys import canonical_json
from ..types import RunInput, UploadRecord, UploadState
from ..wire import DEFAULT_ALLOWED_HOSTS, MEDIA_EXTENSIONS, media_host_allowed

#: Largest file sent in one multipart request (path A); larger ones use a signed upload.
DIRECT_UPLOAD_LIMIT = 4 * 1024 * 1024
#: FLORA refuses images above this many pixels (ASSETS.md §8).
MAX_PIXELS = 150_000_000
#: What each media slot type takes (ASSETS.md §8: the image and video types FLORA stores).
IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/avif",
    "image/heic",
    "image/heif",
)
VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime")
ACCEPTED = {"imageUrl": IMAGE_TYPES, "videoUrl": VIDEO_TYPES}
EXTENSIONS = MEDIA_EXTENSIONS
#: Extensions that surely name something a technique cannot take (checked on web URLs).
NOT_MEDIA = {
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".doc": "application/msword",
    ".docx": "application/msword",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
}
FILE_PREFIX = "asset:sha256:"
URL_PREFIX = "asset:url:"
UPLOAD_KEY_PREFIX = "fu1:"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_OTHER_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
#: An https URL whose host ``urlsplit`` would read as it is written: dot-separated ASCII
#: labels, no user, no port, then printable ASCII only (nothing ``urlsplit`` strips).
_PLAIN_HTTPS_RE = re.compile(r"https://([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?:[/?#][!-~]*)?")
_ISO_BRANDS = {
    "avif": "image/avif",
    "avis": "image/avif",
    "heic": "image/heic",
    "heix": "image/heic",
    "heim": "image/heic",
    "heis": "image/heic",
    "mif1": "image/heif",
    "msf1": "image/heif",
    "qt  ": "video/quicktime",
}


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the probe learnt of a local file: where it is, its hash, size and real type."""

    path: str  # absolute
    sha256: str
    size: int
    content_type: str | None  # sniffed from the bytes; None if not a type we know
    pixels: int | None = None  # width × height of an image, when readable


#: Reads one local file (the argument is the path as the manifest wrote it) into
#: ``FileFacts``, or returns why it cannot (``"file not found (...)"``).
Probe = Callable[[str], "FileFacts | str"]


@dataclass(frozen=True, slots=True)
class UploadSource:
    """One distinct thing to upload: a local file, or a web image FLORA should fetch."""

    sha256: str  # the uploads row key: hex digest, or "url:<normalized url>"
    placeholder: str
    kind: str  # "file" or "url"
    source: str  # absolute path, or the normalized URL
    file_name: str  # the asset's name in FLORA: "<stem>.<12 hex>.<ext>"
    size: int | None = None
    content_type: str | None = None

    def planned(self, workspace_id: str, now: float) -> UploadRecord:
        """The ledger row of this source before anything is sent."""
        return UploadRecord(
            sha256=self.sha256,
            source=self.source,
            file_name=self.file_name,
            workspace_id=workspace_id,
            state=UploadState.PLANNED,
            idempotency_key=upload_idempotency_key(self.sha256, workspace_id),
            size=self.size,
            content_type=self.content_type,
            created_at=now,
            updated_at=now,
        )


# --- placeholders and keys -------------------------------------------------------------


def is_placeholder(value: str) -> bool:
    """Whether an input value stands for an upload (rather than being sent as written)."""
    return value.startswith((FILE_PREFIX, URL_PREFIX))


def upload_key(placeholder: str) -> str:
    """The ``uploads`` row key of a placeholder: ``<hex>`` or ``url:<normalized url>``."""
    if placeholder.startswith(FILE_PREFIX):
        return placeholder.removeprefix(FILE_PREFIX)
    return "url:" + placeholder.removeprefix(URL_PREFIX)


def upload_keys(inputs: Iterable[RunInput]) -> list[str]:
    """The upload keys a job's inputs need, in input order."""
    return [upload_key(i.value) for i in inputs if is_placeholder(i.value)]


def upload_idempotency_key(sha256: str, workspace_id: str, attempt: int = 1) -> str:
    """The ``Idempotency-Key`` of an asset create: ``fu1:`` + a digest of file and workspace.

    Attempt *n* > 1 (a new try after a definite failure) appends ``-r<n>``, as job keys do.
    """
    material = canonical_json({"upload": sha256, "workspace_id": workspace_id})
    digest = hashlib.blake2b(material.encode("utf-8"), digest_size=16).hexdigest()
    key = UPLOAD_KEY_PREFIX + digest
    return key if attempt == 1 else f"{key}-r{attempt}"


def normalise_url(url: str) -> str:
    """One spelling per web URL: scheme and host lower-cased, port 443 and fragment dropped.

    Raises:
        ValueError: the URL cannot be parsed (a bad port, brackets).
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    shown = f"[{host}]" if ":" in host else host
    port = parts.port
    netloc = shown if port in (None, 443) else f"{shown}:{port}"
    if parts.username is not None:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urlunsplit(("https", netloc, parts.path or "/", parts.query, ""))


def upload_name(name: str, digest: str, content_type: str | None) -> str:
    """The asset's file name: the original stem, a 12-digit hash tag and the extension.

    The tag makes ``GET /assets?query=<tag>`` find exactly this file when a lost create
    has to be reconciled (ASSETS.md §9).
    """
    path = PurePosixPath(name.replace("\\", "/"))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-")[:60] or "file"
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS and content_type:
        suffix = next((e for e, t in EXTENSIONS.items() if t == content_type), "")
    elif suffix not in EXTENSIONS:
        suffix = re.sub(r"[^a-z0-9.]", "", suffix)[:8]
    return f"{stem}.{digest[:12]}{suffix}"


# --- sniffing ---------------------------------------------------------------------------


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file reveal, for the types FLORA stores."""
    prefixes = (
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"\x1a\x45\xdf\xa3", "video/webm"),
        (b"%PDF-", "application/pdf"),
        (b"BM", "image/bmp"),
    )
    for prefix, kind in prefixes:
        if head.startswith(prefix):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return _ISO_BRANDS.get(head[8:12].decode("latin-1"), "video/mp4")
    return None


def type_of_name(name: str) -> str | None:
    """The type a file name's extension suggests, from the tables above."""
    suffix = PurePosixPath(name).suffix.lower()
    return EXTENSIONS.get(suffix) or NOT_MEDIA.get(suffix)


def _kinds(kind: str) -> str:
    names = [t.split("/")[1].upper().replace("QUICKTIME", "MOV") for t in ACCEPTED[kind]]
    return ", ".join(names)


def type_problem(kind: str, content_type: str | None) -> str | None:
    """Why a ``kind`` input (``imageUrl``/``videoUrl``) cannot take this type, or None."""
    if content_type in ACCEPTED.get(kind, ()):
        return None
    what = "an image" if kind == "imageUrl" else "a video"
    found = f"is {content_type}" if content_type else "is not a file type FLORA accepts"
    return f"{found}; {kind} inputs take {what}: {_kinds(kind)}"


# --- turning a cell into what the job sends ----------------------------------------------

_NEEDS_WORKSPACE = (
    "must be uploaded to FLORA as an asset first, which needs a workspace id: add "
    "`assets: {workspace_id: ws_...}` to the manifest, or set FLORA_WORKSPACE_ID "
    "(or --workspace-id, or workspace_id in the config file)"
)


def classify(value: str, hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS) -> tuple[str, str]:
    """``(how, target)``: ``("url", url)`` to send as is, ``("remote", url)`` to fetch,
    ``("file", path)`` to upload, or ``("error", why)``."""
    plain = _PLAIN_HTTPS_RE.fullmatch(value)
    if plain is not None:  # the usual cell: the answer below, without urlsplit (2x faster)
        return _https(value, plain.group(1).lower(), hosts)
    match = _SCHEME_RE.match(value)
    if match is None:
        if _OTHER_SCHEME_RE.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
            return "error", "is neither an https:// URL nor a file path"
        return "file", value
    scheme = match.group(1).lower()
    if scheme == "file":
        return _file_url(value)
    if scheme != "https":
        return "error", f"is a {scheme}:// URL; use https:// (FLORA refuses http:// and others)"
    try:
        parts = urlsplit(value.strip())
        host, _ = parts.hostname, parts.port  # .port raises ValueError on a bad port
    except ValueError:
        return "error", "is not a valid URL"
    if not host:
        return "error", "has no host"
    return _https(value, host, hosts)


def _https(value: str, host: str, hosts: tuple[str, ...]) -> tuple[str, str]:
    """An https URL on ``host``: sent as is to an allowed host, else fetched by FLORA."""
    return ("url", value) if media_host_allowed(host, hosts) else ("remote", normalise_url(value))


def _file_url(value: str) -> tuple[str, str]:
    try:
        parts = urlsplit(value)
    except ValueError:  # unbalanced brackets in the host
        return "error", "is not a valid URL"
    if parts.netloc not in ("", "localhost"):
        return "error", "is a file:// URL on another host; write file:///path/on/this/machine"
    path = unquote(parts.path)
    return ("file", path) if path else ("error", "is a file:// URL without a path")


class MediaInputs:
    """``build_jobs``' media resolver: a cell in, the value to send (or a problem) out.

    Every distinct file or web image met is kept in ``sources`` (placeholder -> source).

    Args:
        probe: reads a local file (the only I/O, passed in); called once per path.
        hosts: the run-input host allowlist.
        uploads: whether a workspace id is known; without one, an input that needs an
            upload is a problem at its row, so the batch stops before any request.
    """

    def __init__(
        self,
        probe: Probe,
        *,
        hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS,
        uploads: bool = True,
    ) -> None:
        self.probe = probe
        self.hosts = hosts
        self.uploads = uploads
        self.sources: dict[str, UploadSource] = {}
        self.needs_workspace = False
        self._facts: dict[str, FileFacts | str] = {}

    def __call__(self, kind: str, value: str) -> tuple[str, str | None]:
        """``(value to send, problem)`` for one media cell of type ``kind``."""
        how, target = classify(value, self.hosts)
        if how == "error":
            return value, target
        if how == "url":
            return value, None
        source = self._remote(kind, target) if how == "remote" else self._file(kind, target)
        if isinstance(source, str):
            return value, source
        if not self.uploads:
            self.needs_workspace = True
            return value, _NEEDS_WORKSPACE
        self.sources.setdefault(source.placeholder, source)
        return source.placeholder, None

    def _remote(self, kind: str, url: str) -> UploadSource | str:
        name = unquote(PurePosixPath(urlsplit(url).path).name) or "download"
        guessed = type_of_name(name)
        if guessed is not None:
            problem = type_problem(kind, guessed)
            if problem:
                return f"names a file that {problem}"
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return UploadSource(
            sha256="url:" + url,
            placeholder=URL_PREFIX + url,
            kind="url",
            source=url,
            file_name=upload_name(name, digest, guessed),
            content_type=guessed,
        )

    def _file(self, kind: str, path: str) -> UploadSource | str:
        if path not in self._facts:
            self._facts[path] = self.probe(path)
        facts = self._facts[path]
        if isinstance(facts, str):
            return facts
        if facts.size == 0:
            return "is an empty file"
        problem = type_problem(kind, facts.content_type)
        if problem:
            return problem
        if facts.pixels is not None and facts.pixels > MAX_PIXELS:
            return f"is {facts.pixels:,} pixels; FLORA takes images up to {MAX_PIXELS:,}"
        return UploadSource(
            sha256=facts.sha256,
            placeholder=FILE_PREFIX + facts.sha256,
            kind="file",
            source=facts.path,
            file_name=upload_name(PurePosixPath(facts.path).name, facts.sha256, facts.content_type),
            size=facts.size,
            content_type=facts.content_type,
        )


# --- what a plan says about uploads ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadSummary:
    """The uploads a batch needs, against what the ledger already holds."""

    files: int  # distinct local files and web images the batch's jobs use
    bytes: int  # their size (local files; web images' sizes are unknown until fetched)
    web: int  # how many of them are web images FLORA fetches
    uploaded: int  # already ready in FLORA (this workspace)
    to_upload: int
    bytes_to_upload: int
    failed: int  # failed last time (tried again by the next run)
    #: Each file: (source, size or None, ``uploaded`` / ``failed`` / ``to upload``).
    items: tuple[tuple[str, int | None, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON shape, for ``plan --json``."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "web": self.web,
            "uploaded": self.uploaded,
            "to_upload": self.to_upload,
            "bytes_to_upload": self.bytes_to_upload,
            "failed": self.failed,
            "items": [{"source": s, "size": n, "state": st} for s, n, st in self.items],
        }


def needed_sources(
    inputs: Iterable[Iterable[RunInput]], found: Mapping[str, UploadSource]
) -> dict[str, UploadSource]:
    """The sources (by upload key) that these jobs' inputs use."""
    out: dict[str, UploadSource] = {}
    for job_inputs in inputs:
        for item in job_inputs:
            if is_placeholder(item.value) and item.value in found:
                source = found[item.value]
                out.setdefault(source.sha256, source)
    return out


_SHOWN = {UploadState.READY.value: "uploaded", UploadState.FAILED.value: "failed"}


def summarise(
    sources: Mapping[str, UploadSource], known: Mapping[str, UploadRecord], workspace_id: str | None
) -> UploadSummary:
    """Count the files to upload; a ledger row counts only for the same workspace."""
    ready = failed = 0
    left_bytes = 0
    items: list[tuple[str, int | None, str]] = []
    for key, source in sources.items():
        row = known.get(key)
        state = row.state if row is not None and row.workspace_id == workspace_id else None
        shown = _SHOWN.get(state.value if state else "", "to upload")
        items.append((source.source, source.size, shown))
        if state is UploadState.READY:
            ready += 1
            continue
        failed += int(state is UploadState.FAILED)
        left_bytes += source.size or 0
    return UploadSummary(
        files=len(sources),
        bytes=sum(s.size or 0 for s in sources.values()),
        web=sum(1 for s in sources.values() if s.kind == "url"),
        uploaded=ready,
        to_upload=len(sources) - ready,
        bytes_to_upload=left_bytes,
        failed=failed,
        items=tuple(items),
    )
