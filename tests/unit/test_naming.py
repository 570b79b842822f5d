"""Templates and output names: no value can make a path leave the results folder."""

from __future__ import annotations

import os
import posixpath
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flora_batch.errors import ManifestError
from flora_batch.manifest.naming import (
    MAX_COMPONENT_BYTES,
    default_output_name,
    ext_for,
    placeholder_ok,
    render_output_name,
    render_template,
    template_fields,
)

KEY = "fk1:0123456789abcdef0123456789abcdef"


def name(template: str, **row: str) -> str:
    """Render an output name with fixed output fields."""
    return render_output_name(
        template,
        row,
        technique="studio-shot",
        output_id="output_1",
        ext=".png",
        index=4,
        row_number=5,
        key=KEY,
    )


def test_fields_and_format_specs() -> None:
    """Columns and the six output fields fill the template; format specs apply."""
    template = "{technique}/{sku}-{output_id}-{index}-{row:03d}-{key:.8}{ext}"
    assert name(template, sku="A1") == "studio-shot/A1-output_1-4-005-01234567.png"


def test_key_field_is_twelve_hex_digits() -> None:
    """{key} is the first 12 digits of the digest, given the full key or a digest."""
    assert name("{key}") == "0123456789ab"
    assert (
        render_output_name(
            "{key}",
            {},
            technique="t",
            output_id="o",
            ext="",
            index=0,
            row_number=1,
            key="0123456789ab",
        )
        == "0123456789ab"
    )


def test_output_fields_win_over_columns() -> None:
    """A column called technique does not replace the technique field."""
    assert name("{technique}-{output_id}", technique="column value") == "studio-shot-output_1"


def test_dotdot_in_a_value_cannot_escape() -> None:
    """A value of ../../etc/passwd stays one harmless component."""
    assert name("{sku}/{output_id}{ext}", sku="../../etc/passwd") == ".._.._etc_passwd/output_1.png"


def test_dotdot_in_the_template_is_dropped() -> None:
    """.. and . written in the template are removed, never followed."""
    assert name("../../{sku}/./x{ext}", sku="a") == "a/x.png"


def test_absolute_paths_become_relative() -> None:
    """A leading slash, a drive letter or a UNC prefix gives a relative path."""
    assert name("/etc/{sku}{ext}", sku="a") == "etc/a.png"
    assert name("C:\\Windows\\{sku}{ext}", sku="a") == "C_/Windows/a.png"
    assert name("\\\\server\\share\\{sku}", sku="a") == "server/share/a"


def test_a_value_never_makes_folders() -> None:
    """Slashes inside a value become underscores; only template slashes separate."""
    assert name("{sku}{ext}", sku="shoes/red\\left") == "shoes_red_left.png"


def test_control_and_windows_characters_are_replaced() -> None:
    """NUL, newlines, bidi overrides and <>:"|?* become underscores."""
    assert name("{sku}{ext}", sku='a\x00b\nc\u202ed<e>f:g"h|i?j*k') == "a_b_c_d_e_f_g_h_i_j_k.png"


def test_trailing_dots_and_spaces_are_removed() -> None:
    """Windows drops trailing dots and spaces, so we do it first."""
    assert name("{sku}. ./x", sku="  name ") == "name/x"


@pytest.mark.parametrize("device", ["CON", "nul", "Com1", "LPT9", "aux.txt", "con .png"])
def test_reserved_device_names_get_a_prefix(device: str) -> None:
    """Windows device names, with any case or extension, are prefixed with an underscore."""
    assert name("{sku}", sku=device) == "_" + device


def test_long_components_are_cut_with_a_hash() -> None:
    """Over 200 bytes: cut at a character boundary, keep the extension, add a short hash."""
    long_a = name("{sku}{ext}", sku="é" * 300)
    long_b = name("{sku}{ext}", sku="é" * 299 + "e")
    for result in (long_a, long_b):
        assert len(result.encode()) <= MAX_COMPONENT_BYTES
        assert result.endswith(".png")
    assert long_a != long_b
    assert long_a == name("{sku}{ext}", sku="é" * 300)


def test_empty_result_falls_back_to_row_and_output() -> None:
    """If nothing is left, the name is row-<n>-<output><ext>."""
    assert name("{sku}", sku=" .. ") == "row-5-output_1.png"


def test_missing_column_is_an_error() -> None:
    """A placeholder naming no column or field raises a ManifestError."""
    with pytest.raises(ManifestError, match=r"uses \{nope\}, which is not a column"):
        name("{nope}")


@settings(max_examples=300, deadline=None)
@given(
    template=st.text(alphabet="{}/\\.a ", max_size=12).filter(
        lambda t: "{" not in t and "}" not in t
    ),
    values=st.lists(st.text(max_size=60), min_size=1, max_size=3),
)
def test_rendered_path_stays_under_the_root(template: str, values: list[str]) -> None:
    """Whatever the cells hold, root/name normalises to a path inside root."""
    row = {f"c{i}": v for i, v in enumerate(values)}
    full = template + "/".join("{" + c + "}" for c in row) + "{ext}"
    result = name(full, **row)
    assert result
    assert not PurePosixPath(result).is_absolute()
    assert ".." not in PurePosixPath(result).parts
    assert "\x00" not in result
    root = "/results/batch"
    joined = posixpath.normpath(posixpath.join(root, result))
    assert joined.startswith(root + "/")
    assert os.path.commonpath([root, joined]) == root
    assert all(len(part.encode()) <= MAX_COMPONENT_BYTES for part in result.split("/"))
    assert name(full, **row) == result


def test_templates_parse_and_render() -> None:
    """Fields are listed once, braces escape, and the whole brace text is the column name."""
    assert template_fields("{a} {{x}} {b} {a} {Image URL:>3}") == ("a", "b", "Image URL")
    assert render_template("{{{a}}} {price.eur}", {"a": "1", "price.eur": "2"}) == "{1} 2"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{a", "expected '}' before end of string"),
        ("a}", "Single '}' encountered"),
        ("{}", "has an empty {}"),
        ("{a!r}", "conversions like !r are not supported"),
        ("{a:{b}}", "nested placeholders are not supported"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    """Invalid templates raise a ManifestError that says why."""
    with pytest.raises(ManifestError, match=message):
        template_fields(template)


def test_format_spec_that_does_not_fit_is_an_error() -> None:
    """{title:d} on text is a ManifestError, not a ValueError."""
    with pytest.raises(ManifestError, match="format"):
        render_template("{title:d}", {"title": "x"})


def test_default_output_name() -> None:
    """With an id column it names files by id, else by row number and key prefix."""
    assert default_output_name("sku") == "{technique}/{sku}-{output_id}{ext}"
    fallback = "{technique}/row-{row}-{key:.8}-{output_id}{ext}"
    assert default_output_name(None) == fallback
    assert default_output_name("weird:name") == fallback
    assert not placeholder_ok("a{b")
    assert placeholder_ok("Image URL")


@pytest.mark.parametrize(
    ("output_type", "content_type", "ext"),
    [
        ("imageUrl", "image/png", ".png"),
        ("imageUrl", "image/jpeg; charset=binary", ".jpg"),
        ("imageUrl", "IMAGE/WEBP", ".webp"),
        ("imageUrl", "image/gif", ".gif"),
        ("videoUrl", "video/mp4", ".mp4"),
        ("videoUrl", "video/webm", ".webm"),
        ("audioUrl", "audio/mpeg", ".mp3"),
        ("audioUrl", "audio/wav", ".wav"),
        ("documentUrl", "application/pdf", ".pdf"),
        ("text", "text/plain; charset=utf-8", ".txt"),
        ("text", "text/csv", ".txt"),
        ("imageUrl", "application/octet-stream", ".png"),
        ("imageUrl", None, ".png"),
        ("videoUrl", None, ".mp4"),
        ("audioUrl", None, ".mp3"),
        ("documentUrl", None, ".pdf"),
        ("text", None, ".txt"),
        ("somethingNew", None, ".bin"),
    ],
)
def test_ext_for(output_type: str, content_type: str | None, ext: str) -> None:
    """The content type decides when known, else the output type."""
    assert ext_for(output_type, content_type) == ext
