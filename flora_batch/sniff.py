"""Is a downloaded output the kind of file its output type promises?

A compromised or confused CDN can answer 200 with an HTML error page, a login form or
anything else; saved as ``shot.png`` it would hand the user (and the report's contact
sheet) a file that is not what was bought.  ``media_problem`` reads the response's
Content-Type and, cheaply, the first bytes of the body:

* any media output (``imageUrl``, ``videoUrl``, ``audioUrl``, ``documentUrl``): never
  HTML, whether the Content-Type or the first bytes say so;
* ``imageUrl``: ``image/*``, and a PNG, JPEG, GIF or WebP must start with its magic bytes;
* ``videoUrl``: ``video/*`` or ``image/gif`` (a GIF must start like one);
* no Content-Type or ``application/octet-stream`` (what a bare bucket sends): the magic
  bytes decide for images and videos.

Audio and documents are checked only for HTML.  Pure: no I/O.
"""

from __future__ import annotations

#: Bytes of the body that ``media_problem`` needs to see.
HEAD_BYTES = 64

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_SNIFFED_IMAGES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/gif", "image/webp"}
)
_UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HTML_START = (b"<!doctype", b"<html", b"<head", b"<body", b"<script", b"<?xml")
_MEDIA = ("imageUrl", "videoUrl", "audioUrl", "documentUrl")
_EXPECTED = {"imageUrl": ("image/",), "videoUrl": ("video/", "image/gif")}


def is_image(head: bytes) -> bool:
    """Whether ``head`` starts like a PNG, JPEG, GIF or WebP file."""
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_video(head: bytes) -> bool:
    """Whether ``head`` starts like an MP4/MOV (``ftyp``), a WebM/MKV or a GIF."""
    return head[4:8] == b"ftyp" or head.startswith((b"\x1a\x45\xdf\xa3", b"GIF87a", b"GIF89a"))


def _is_html(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_START)


def media_problem(output_type: str, content_type: str | None, head: bytes | None) -> str | None:
    """Why a body is not what ``output_type`` promises, or None if it may be kept.

    Args:
        output_type: the run output's type (``imageUrl``, ``videoUrl``, ...).
        content_type: the response's Content-Type header, if any.
        head: the first ``HEAD_BYTES`` of the body; ``None`` checks the header only.
    """
    if output_type not in _MEDIA:
        return None
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    shown = mime or "no Content-Type"
    if mime in _HTML_TYPES or (head is not None and _is_html(head)):
        return f"is an HTML page ({shown}), not a {output_type} file"
    expected = _EXPECTED.get(output_type)
    if expected is None or (head is None and mime in _UNTYPED):
        return None
    if mime in _UNTYPED:
        sniff = is_image if output_type == "imageUrl" else is_video
        kind = "an image" if output_type == "imageUrl" else "a video"
        return None if sniff(head or b"") else f"has {shown} and its bytes are not {kind}"
    if not mime.startswith(expected):
        return f"is {mime}, not {' or '.join(expected)}"
    if head is not None and mime in _SNIFFED_IMAGES and not is_image(head):
        return f"says {mime} but its bytes are not a PNG, JPEG, GIF or WebP image"
    return None
