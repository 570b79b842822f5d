"""What the asset endpoints accept (ASSETS.md §7, §8): types, limits, sniffing, SSRF, URLs.

Pure helpers, no state.  Content types are compared in a normal form (lower case, no
parameters, a few common aliases folded: ``image/jpg`` is ``image/jpeg``).  A file's real
type is sniffed from its first bytes where possible; the declared one is kept beside it
as ``upload_content_type``, as FLORA's asset object does.

SSRF (ASSETS.md §8): a ``source`` URL whose host is a loopback, private, link-local,
shared, reserved or metadata address, written any way ``inet_aton`` accepts (``127.1``,
``0x7f.0.0.1``, ``2130706433``), or a local-only name (``localhost``, ``*.internal``), is
refused.  The emulator resolves no names, so any other name counts as public.
"""

from __future__ import annotations

import io
import ipaddress
import mimetypes
import re
import socket
import warnings
from urllib.parse import quote, unquote, urlsplit

from PIL import Image

from flora_batch import wire

ACCEPTED_TYPES: tuple[str, ...] = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/avif",
    "image/heic",
    "image/heif",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "audio/mpeg",
    "audio/wav",
    "audio/ogg",
    "application/pdf",
)
TYPE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "video/mov": "video/quicktime",
    "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
}
EXTENSIONS = {
    **wire.MEDIA_EXTENSIONS,
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".pdf": "application/pdf",
}
OCTET_STREAM = "application/octet-stream"
#: Server-side fetch limit (path B) and image resolution limit, ASSETS.md §8.
FETCH_LIMIT = 50 * 1024 * 1024
MAX_PIXELS = 150_000_000
#: Seconds (before ``speed``) a source URL takes to fetch, and an upload to ingest.
FETCH_SECONDS = 3.0
INGEST_SECONDS = 2.0
#: Where asset URLs live: on the technique-input allowlist (ASSETS.md §7, seed doc).
MEDIA_HOST = "media.flora.ai"
ASSET_PATH = "/assets"
#: ISO-BMFF ``ftyp`` brands of the accepted types; any other brand is taken for MP4.
_ISO_BRANDS = {
    "avif": "image/avif",
    "avis": "image/avif",
    "heic": "image/heic",
    "heix": "image/heic",
    "heim": "image/heic",
    "heis": "image/heic",
    "hevc": "image/heic",
    "hevx": "image/heic",
    "mif1": "image/heif",
    "msf1": "image/heif",
    "qt  ": "video/quicktime",
}
_LOCAL_NAMES = ("localhost", "metadata", "metadata.google.internal")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain")


def normalise(content_type: str) -> str:
    """``Image/JPG; q=1`` → ``image/jpeg``."""
    base = content_type.split(";", 1)[0].strip().lower()
    return TYPE_ALIASES.get(base, base)


def accepted(content_type: str) -> bool:
    """Whether FLORA stores assets of this type."""
    return normalise(content_type) in ACCEPTED_TYPES


def guess_type(name: str | None) -> str | None:
    """The type a file name's extension suggests, if any."""
    if not name:
        return None
    match = re.search(r"\.[A-Za-z0-9]+$", name)
    if match and match[0].lower() in EXTENSIONS:
        return EXTENSIONS[match[0].lower()]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed


def sniff(data: bytes) -> str | None:
    """The type a file's first bytes reveal, for the accepted types; None if unknown."""
    head = data[:16]
    prefixes = (
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"\x1a\x45\xdf\xa3", "video/webm"),
        (b"OggS", "audio/ogg"),
        (b"ID3", "audio/mpeg"),
    )
    for prefix, kind in prefixes:
        if head.startswith(prefix):
            return kind
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    if head[4:8] == b"ftyp":
        return _ISO_BRANDS.get(head[8:12].decode("latin-1"), "video/mp4")
    if len(head) >= 2 and head[0] == 0xFF and head[1] in (0xFB, 0xF3, 0xF2):
        return "audio/mpeg"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of an image Pillow can read the header of, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                return int(width), int(height)
        except Exception:  # Pillow raises many kinds for bytes that are not an image
            return None


def too_many_pixels(data: bytes) -> bool:
    """Whether an image is above FLORA's 150-megapixel limit (only its header is read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError:  # over Pillow's hard limit, ~179 megapixels
            return True
        except Exception:
            return False
    return int(width) * int(height) > MAX_PIXELS


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def private_host(host: str) -> bool:
    """Whether a URL host is one the server must never fetch from (SSRF, ASSETS.md §8)."""
    host = host.lower().rstrip(".")
    if host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
        return True
    ip = _as_ip(host)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def host_listed(host: str, entries: tuple[str, ...]) -> bool:
    """Whether ``host`` is on a host list (``.example.com`` also matches its subdomains)."""
    return wire.media_host_allowed(host, entries)


def file_name_from_url(url: str) -> str | None:
    """The last path segment of a URL, decoded; None for a URL that ends in ``/``."""
    tail = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return tail or None


def asset_url(asset_id: str, file_name: str) -> str:
    """The public media URL of an asset: on ``media.flora.ai``, so runs accept it."""
    return f"https://{MEDIA_HOST}{ASSET_PATH}/{asset_id}/{quote(file_name, safe='')}"


def asset_id_in_url(url: str) -> str | None:
    """The asset id in a URL shaped like ``asset_url`` makes them, else None."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme != "https" or (parts.hostname or "").lower() != MEDIA_HOST:
        return None
    segments = parts.path.split("/")
    if len(segments) < 3 or f"/{segments[1]}" != ASSET_PATH:
        return None
    return segments[2] if segments[2].startswith("asset_") else None
