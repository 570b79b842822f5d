"""Sniffing outputs FLORA may send in ways a strict check refused: an SVG after an XML
prolog, AVIF and HEIC as ``application/octet-stream``, while HTML is still refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from flora_batch.manifest.naming import ext_for
from flora_batch.remote.sniff import (
    HEAD_BYTES,
    content_type_of,
    is_image,
    is_svg,
    is_video,
    media_problem,
    root_element,
    sniffed_type,
)
from flora_batch.wire import parse_technique

PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>\n'
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><rect/></svg>'
DOCTYPE = (
    b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
    b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
)
AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf\x00\x00\x00\xebmeta"
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic\x00\x00\x00\xebmeta"
HEIF = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1miaf\x00\x00\x00\xebmeta"
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42\x00\x00\x00\x08free"
XHTML = (
    PROLOG + b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "x.dtd">'
    b'<html xmlns="http://www.w3.org/1999/xhtml"><body>Access denied</body></html>'
)


@pytest.mark.parametrize(
    "head",
    [
        SVG,
        PROLOG + SVG,
        b"\xef\xbb\xbf" + PROLOG + SVG,
        PROLOG + b"<!-- Generator: Adobe Illustrator 27.0 -->\n" + DOCTYPE + SVG,
        b"  \n" + DOCTYPE + SVG,
        PROLOG + b'<!DOCTYPE svg [<!ENTITY ns "http://www.w3.org/2000/svg">]>' + SVG,
        PROLOG + b'<?xml-stylesheet href="icons.css"?>' + SVG,
    ],
)
def test_an_svg_is_recognised_after_its_prolog_comments_and_doctype(head: bytes) -> None:
    """BOM, XML prolog, processing instructions, comments and a doctype may precede ``<svg``."""
    assert is_svg(head) and sniffed_type(head) == "image/svg+xml"
    assert media_problem("imageUrl", "image/svg+xml", head[:HEAD_BYTES]) is None


def test_an_svg_with_an_xml_prolog_is_kept() -> None:
    """The case FLORA's storage sends: ``image/svg+xml`` whose body starts ``<?xml``."""
    assert media_problem("imageUrl", "image/svg+xml; charset=utf-8", PROLOG + SVG) is None


@pytest.mark.parametrize(
    ("head", "kind"), [(AVIF, "image/avif"), (HEIC, "image/heic"), (HEIF, "image/heif")]
)
@pytest.mark.parametrize("content_type", ["application/octet-stream", None, "binary/octet-stream"])
def test_avif_and_heic_sent_untyped_are_kept(
    head: bytes, kind: str, content_type: str | None
) -> None:
    """AVIF, HEIC and HEIF are told by their ``ftyp`` brand whatever the Content-Type says."""
    assert sniffed_type(head) == kind and is_image(head)
    assert media_problem("imageUrl", content_type, head) is None


@pytest.mark.parametrize(
    ("content_type", "head"),
    [("image/avif", AVIF), ("image/heic", HEIC), ("image/heif", HEIF), ("image/heic", AVIF)],
)
def test_avif_and_heic_with_their_own_type_are_kept(content_type: str, head: bytes) -> None:
    """Declared AVIF/HEIC/HEIF with an image brand in its ``ftyp`` box passes."""
    assert media_problem("imageUrl", content_type, head) is None


def test_a_real_avif_file_is_recognised() -> None:
    """What Pillow writes as AVIF sniffs as AVIF (when this Pillow can write it)."""
    out = io.BytesIO()
    try:
        Image.new("RGB", (8, 8), "red").save(out, format="AVIF")
    except (KeyError, OSError):
        pytest.skip("this Pillow cannot write AVIF")
    assert sniffed_type(out.getvalue()[:HEAD_BYTES]) == "image/avif"


@pytest.mark.parametrize(
    ("output_type", "content_type", "head", "says"),
    [
        ("imageUrl", "image/svg+xml", XHTML, "HTML page"),
        ("imageUrl", "application/octet-stream", XHTML, "HTML page"),
        ("imageUrl", "image/png", PROLOG + b"<!DOCTYPE html><html></html>", "HTML page"),
        ("imageUrl", "image/svg+xml", b"<!-- x -->\n<html><body>502</body></html>", "HTML page"),
        ("imageUrl", "image/svg+xml", PROLOG + b"<Error><Code>AccessDenied</Code></Error>", "not"),
        ("imageUrl", "application/octet-stream", PROLOG + b"<Error/>", "XML document"),
        ("imageUrl", "image/avif", MP4, "not"),
        ("imageUrl", "image/heic", b"\x00\x00\x00\x18ftyp", "not"),
        ("videoUrl", "application/octet-stream", AVIF, "not a video"),
        ("videoUrl", None, HEIC, "not a video"),
        ("imageUrl", "application/octet-stream", PROLOG + b"<!-- only a comment", "XML"),
        ("imageUrl", "image/x-icon", PROLOG + b"<Error><Code>NoSuchKey</Code></Error>", "XML"),
        ("documentUrl", "application/pdf", PROLOG + b"<Error/>", "XML document"),
        ("audioUrl", None, b"\xef\xbb\xbf" + PROLOG + b"<svg/>", "XML document"),
    ],
)
def test_what_is_not_the_promised_file_is_still_refused(
    output_type: str, content_type: str | None, head: bytes, says: str
) -> None:
    """HTML (even after an XML prolog), other XML, videos as stills and stills as videos."""
    problem = media_problem(output_type, content_type, head)
    assert problem is not None and says in problem


def test_mp4_is_still_a_video_and_not_an_image() -> None:
    """An MP4's ``ftyp`` names no image brand: a video, not an AVIF."""
    assert is_video(MP4) and not is_image(MP4)
    assert is_video(AVIF) is False and media_problem("videoUrl", None, MP4) is None


@pytest.mark.parametrize(
    ("head", "root"),
    [
        (b"<!doctype HTML><p>", "html"),
        (PROLOG + b"<svg:svg xmlns:svg='x'/>", "svg:svg"),
        (b"<HTML>", "html"),
        (b"\x89PNG", None),
        (PROLOG, None),
        (b"<!-- never closed", None),
    ],
)
def test_root_element(head: bytes, root: str | None) -> None:
    """The first element's name, lower-cased; None for non-markup or a cut-off head."""
    assert root_element(head) == root


@pytest.mark.parametrize(
    ("content_type", "head", "ext"),
    [
        ("application/octet-stream", AVIF, ".avif"),
        (None, HEIC, ".heic"),
        ("binary/octet-stream", HEIF, ".heif"),
        ("application/octet-stream", PROLOG + SVG, ".svg"),
        ("image/svg+xml", PROLOG + SVG, ".svg"),
        ("image/png", AVIF, ".png"),
        ("application/octet-stream", b"\x00\x01", ".png"),
    ],
)
def test_content_type_of_names_untyped_files_by_their_bytes(
    content_type: str | None, head: bytes, ext: str
) -> None:
    """``content_type_of`` gives the bytes' type when the header is not specific, and
    ``ext_for`` then picks the right extension (HEIC and HEIF included)."""
    assert ext_for("imageUrl", content_type_of(content_type, head)) == ext


def test_a_technique_without_run_cost_parses_as_free() -> None:
    """A lookup that leaves ``run_cost`` out (``quote="missing"``) reads as cost 0, not a crash."""
    technique = parse_technique({"technique_id": "tech_icon-pack", "name": "Icon Pack"})
    assert (technique.slug, technique.run_cost, technique.cost_unit) == ("icon-pack", 0.0, "usd")
