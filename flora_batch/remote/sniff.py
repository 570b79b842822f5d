"""Is a downloaded output the kind of file its output type promises?

A compromised or confused CDN can answer 200 with an HTML error page, a login form or
anything else; saved as ``shot.png`` it would hand the user (and the report's contact
sheet) a file that is not what was bought.  ``media_problem`` reads the response's
Content-Type and, cheaply, the first bytes of the body:

* any media output (``imageUrl``, ``videoUrl``, ``audioUrl``, ``documentUrl``): never
  HTML, whether the Content-Type or the first bytes say so, and never an XML document
  (``<?xml`` first, as a storage error is), unless it is an SVG for an image;
* ``imageUrl``: ``image/*``, and a PNG, JPEG, GIF, WebP, AVIF, HEIC/HEIF or SVG must start
  like one;
* ``videoUrl``: ``video/*`` or ``image/gif`` (a GIF must start like one);
* no Content-Type or ``application/octet-stream`` (what a bare bucket sends): the bytes
  decide for images and videos.

What the bytes are (``sniffed_type``): magic numbers for PNG, JPEG, GIF and WebP; for
AVIF, HEIC and HEIF the brands of the ISO-BMFF ``ftyp`` box (whatever the Content-Type
says: storage often sends them as octet-stream); for SVG the root element, found after
any byte-order mark, XML prolog (``<?xml …?>``), comments and doctype.  The same walk
tells an HTML page (an ``<html>`` root or an HTML doctype) from an SVG that merely starts
with ``<?xml``.  ``content_type_of`` names the type a saved file should be named by.

Audio and documents are checked only for HTML.  Pure: no I/O.
"""

from __future__ import annotations

import re

#: Bytes of the body that ``media_problem`` needs to see: room for an SVG's XML prolog,
#: a comment and its doctype before the ``<svg`` root.
HEAD_BYTES = 512

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
#: ``ftyp`` brands of still images (ISO/IEC 23008-12 HEIF, and AVIF on top of it),
#: in the order they are looked for: a file naming AVIF anywhere is AVIF.
_BMFF_BRANDS = (
    ("image/avif", frozenset({b"avif", b"avis"})),
    ("image/heic", frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})),
    ("image/heif", frozenset({b"mif1", b"mif2", b"msf1"})),
)
_SNIFFED_IMAGES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/heic",
        "image/heif",
        "image/svg+xml",
    }
)
_UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HTML_ROOTS = frozenset({"html", "head", "body", "script"})
_MEDIA = ("imageUrl", "videoUrl", "audioUrl", "documentUrl")
_EXPECTED = {"imageUrl": ("image/",), "videoUrl": ("video/", "image/gif")}
_BOM = b"\xef\xbb\xbf"
_SPACE = b" \t\r\n"
_NAME = re.compile(rb"[A-Za-z_][\w.:-]*")


def bmff_image_type(head: bytes) -> str | None:
    """``image/avif``, ``image/heic`` or ``image/heif`` from an ``ftyp`` box's brands."""
    if head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    end = min(size, len(head)) if size >= 16 else min(len(head), 16)
    brands = {head[8:12]} | {head[n : n + 4] for n in range(16, end - 3, 4)}
    return next((kind for kind, known in _BMFF_BRANDS if brands & known), None)


def root_element(head: bytes) -> str | None:
    """The lower-cased name of the first element of a markup file, or None.

    A byte-order mark, white space, XML prolog, processing instructions, comments and a
    doctype are skipped; an HTML doctype counts as an ``html`` root.  None when ``head``
    does not start like markup or ends before the root.
    """
    text = head.removeprefix(_BOM)
    while True:
        text = text.lstrip(_SPACE)
        if text.startswith(b"<?"):
            text = _after(text, b"?>")
        elif text.startswith(b"<!--"):
            text = _after(text, b"-->")
        elif text[:9].lower() == b"<!doctype":
            if text[9:].lstrip(_SPACE)[:4].lower() == b"html":
                return "html"
            text = _after_doctype(text)
        elif text.startswith(b"<"):
            name = _NAME.match(text, 1)
            return name.group().decode("ascii").lower() if name else None
        else:
            return None


def _after(text: bytes, end: bytes) -> bytes:
    """``text`` after the first ``end`` (empty if it never comes)."""
    at = text.find(end)
    return b"" if at < 0 else text[at + len(end) :]


def _after_doctype(text: bytes) -> bytes:
    """``text`` after its leading doctype, internal subset (``[…]``) included."""
    close, subset = text.find(b">"), text.find(b"[")
    if 0 <= subset < close:
        return _after(text[subset:], b"]>")
    return b"" if close < 0 else text[close + 1 :]


def is_svg(head: bytes) -> bool:
    """Whether ``head`` starts like an SVG file (prolog, comments and doctype allowed)."""
    return root_element(head) == "svg"


def sniffed_type(head: bytes) -> str | None:
    """The image type ``head`` starts like (PNG, JPEG, GIF, WebP, AVIF, HEIC, HEIF, SVG)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return bmff_image_type(head) or ("image/svg+xml" if is_svg(head) else None)


def is_image(head: bytes) -> bool:
    """Whether ``head`` starts like a PNG, JPEG, GIF, WebP, AVIF, HEIC/HEIF or SVG file."""
    return sniffed_type(head) is not None


def is_video(head: bytes) -> bool:
    """Whether ``head`` starts like an MP4/MOV (``ftyp``, not a still image's), a WebM/MKV
    or a GIF."""
    if head[4:8] == b"ftyp":
        return bmff_image_type(head) is None
    return head.startswith((b"\x1a\x45\xdf\xa3", b"GIF87a", b"GIF89a"))


def _is_html(head: bytes) -> bool:
    return root_element(head) in _HTML_ROOTS


def _is_foreign_xml(output_type: str, head: bytes) -> bool:
    """An XML document (``<?xml`` first: a storage error, say) that is not an SVG image."""
    if not head.removeprefix(_BOM).lstrip(_SPACE).startswith(b"<?xml"):
        return False
    return output_type != "imageUrl" or not is_svg(head)


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def content_type_of(content_type: str | None, head: bytes) -> str | None:
    """The type to name a saved image by: the bytes' when the header says nothing
    specific (absent or octet-stream), else the header's."""
    if _mime(content_type) in _UNTYPED:
        return sniffed_type(head) or content_type
    return content_type


def media_problem(output_type: str, content_type: str | None, head: bytes | None) -> str | None:
    """Why a body is not what ``output_type`` promises, or None if it may be kept.

    Args:
        output_type: the run output's type (``imageUrl``, ``videoUrl``, ...).
        content_type: the response's Content-Type header, if any.
        head: the first ``HEAD_BYTES`` of the body; ``None`` checks the header only.
    """
    if output_type not in _MEDIA:
        return None
    mime = _mime(content_type)
    shown = mime or "no Content-Type"
    if mime in _HTML_TYPES or (head is not None and _is_html(head)):
        return f"is an HTML page ({shown}), not a {output_type} file"
    if head is not None and _is_foreign_xml(output_type, head):
        return f"is an XML document ({shown}), not a {output_type} file"
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
        return f"says {mime} but its bytes are not a PNG, JPEG, GIF, WebP, AVIF, HEIC or SVG"
    return None
