"""build_jobs: rows times techniques into JobSpecs, every problem at file:line[:column]."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from unit_support import CATALOG, MANIFEST, PRODUCTS_CSV, located

from flora_batch.keys import BY_ROW_ID, job_key
from flora_batch.manifest import (
    Manifest,
    TechniqueUse,
    build_jobs,
    check_manifest,
    load_manifest,
    manifest_from_rows,
    send_type,
)
from flora_batch.manifest.rows import RowsSource, load_rows
from flora_batch.types import IOSlot, JobSpec, RunInput

Jobs = Callable[..., tuple[Manifest, list[JobSpec], list[str]]]
Write = Callable[[str, str | bytes], Path]


def test_jobs_from_a_manifest(jobs_for: Jobs, tmp_path: Path) -> None:
    """Each row becomes a JobSpec with inputs in slot order, its id, source and naming template."""
    m, specs, errors = jobs_for()
    assert errors == []
    assert [s.row_id for s in specs] == ["A1", "B2", "C3"]
    first = specs[0]
    assert first.batch == "spring"
    assert first.technique == "studio-shot"
    assert first.inputs == (
        RunInput("product", "imageUrl", "https://media.flora.ai/p/a1.jpg"),
        RunInput("backdrop", "text", "peach paper"),
    )
    assert (first.row_index, first.occurrence) == (0, 0)
    assert first.row == {
        "sku": "A1",
        "title": "Mug",
        "image_url": "https://media.flora.ai/p/a1.jpg",
        "colour": "peach",
    }
    assert first.source == f"{tmp_path}/products.csv:2"
    assert first.output_name == m.output_name


def test_values_are_stripped_before_sending(jobs_for: Jobs) -> None:
    """A template that renders with surrounding spaces sends the stripped text."""
    _, specs, _ = jobs_for(MANIFEST.replace('"{colour} paper"', '"  {colour}  "'))
    assert specs[0].inputs[1].value == "peach"


def test_optional_input_that_renders_empty_is_left_out(jobs_for: Jobs) -> None:
    """B2 has no colour: its optional backdrop is omitted, not sent as ''."""
    _, specs, errors = jobs_for(MANIFEST.replace('"{colour} paper"', '"{colour}"'))
    assert errors == []
    assert [i.id for i in specs[1].inputs] == ["product"]


def test_missing_column_is_one_error_per_template(jobs_for: Jobs) -> None:
    """A placeholder naming no column is reported once, at the input's manifest line."""
    _, specs, errors = jobs_for(MANIFEST.replace("{colour} paper", "{color} paper"))
    assert specs == []
    assert errors == [
        "m.yaml:7: unknown column 'color' (input 'backdrop' uses {color}); did you mean 'colour'?"
    ]


def test_unknown_input_id_suggests_a_slot(jobs_for: Jobs) -> None:
    """An input id the technique lacks gets a did-you-mean at its line."""
    _, _, errors = jobs_for(MANIFEST.replace("  backdrop:", "  backdrops:"))
    assert errors == [
        "m.yaml:7: unknown input 'backdrops' for studio-shot; did you mean 'backdrop'?"
    ]


def test_required_input_missing_from_the_manifest(jobs_for: Jobs) -> None:
    """A required slot the manifest does not fill is reported at the technique line."""
    _, _, errors = jobs_for(MANIFEST.replace('  product: "{image_url}"\n', ""))
    assert errors == ["m.yaml:2: studio-shot needs input 'product' (imageUrl); add it under inputs"]


def test_unknown_technique_voids_the_batch(jobs_for: Jobs) -> None:
    """An unknown technique is a manifest problem: no jobs at all, a did-you-mean."""
    _, specs, errors = jobs_for(
        MANIFEST.replace("technique: studio-shot", "technique: studio-shoot")
    )
    assert specs == []
    assert errors == ["m.yaml:2: unknown technique 'studio-shoot'; did you mean 'studio-shot'?"]


def test_required_input_rendering_empty_is_a_row_error(jobs_for: Jobs) -> None:
    """An empty required input drops that row only, located at file:line:column."""
    csv = PRODUCTS_CSV.replace("https://media.flora.ai/p/b2.jpg", "")
    _, specs, errors = jobs_for(csv=csv)
    assert [s.row_id for s in specs] == ["A1", "C3"]
    assert errors == ["products.csv:3:image_url: input 'product' is required but empty"]


def test_media_urls_are_checked(jobs_for: Jobs) -> None:
    """http:// and hosts FLORA refuses are row errors at the source column."""
    csv = PRODUCTS_CSV.replace("https://media.flora.ai/p/a1.jpg", "http://media.flora.ai/a.jpg")
    csv = csv.replace("https://media.flora.ai/p/c3.jpg", "https://example.com/c3.jpg")
    _, specs, errors = jobs_for(csv=csv)
    assert [s.row_id for s in specs] == ["B2"]
    assert errors[0] == (
        "products.csv:2:image_url: input 'product': 'http://media.flora.ai/a.jpg' must be an "
        "https:// URL (FLORA refuses http:// and local paths)"
    )
    assert errors[1].startswith(
        "products.csv:4:image_url: input 'product': 'https://example.com/c3.jpg' host 'example.com'"
    )


def test_allowed_hosts_can_be_widened(jobs_for: Jobs) -> None:
    """allowed_hosts replaces the default allowlist (the emulator serves its own host)."""
    csv = PRODUCTS_CSV.replace("media.flora.ai", "127.0.0.1")
    _, specs, errors = jobs_for(csv=csv, allowed_hosts=("127.0.0.1",))
    assert errors == []
    assert len(specs) == 3


def test_text_too_long(jobs_for: Jobs) -> None:
    """Text over 10,000 characters is refused at its row."""
    csv = PRODUCTS_CSV.replace(",sand", "," + "s" * 10_001)
    _, specs, errors = jobs_for(MANIFEST.replace('"{colour} paper"', '"{colour}"'), csv=csv)
    assert len(specs) == 2
    assert errors == [
        "products.csv:4:colour: input 'backdrop' is 10,001 characters; FLORA takes at most 10,000"
    ]


def test_audio_and_document_slots_cannot_be_filled(jobs_for: Jobs) -> None:
    """audioUrl and documentUrl slots have no run-input type: an error at the input line."""
    text = MANIFEST.replace("technique: studio-shot", "technique: voice-over").replace(
        'inputs:\n  product: "{image_url}"\n  backdrop: "{colour} paper"',
        'inputs:\n  script: "{title}"\n  voice: "{image_url}"',
    )
    _, specs, errors = jobs_for(text)
    assert specs == []
    assert errors == [
        "m.yaml:7: input 'voice' of voice-over takes audioUrl, which FLORA's create endpoint "
        "cannot send (it takes text, imageUrl and videoUrl; CONTRACT.md §3)"
    ]


def test_send_type_matches_aliases() -> None:
    """image_url, IMAGE_URL and imageUrl are one type; audio and documents have none."""
    assert send_type(IOSlot("a", "image_url")) == "imageUrl"
    assert send_type(IOSlot("a", "VIDEO_URL")) == "videoUrl"
    assert send_type(IOSlot("a", "TEXT")) == "text"
    assert send_type(IOSlot("a", "audioUrl")) is None
    assert send_type(IOSlot("a", "documentUrl")) is None
    assert send_type(IOSlot("a", "hologram")) is None


def test_slot_alias_is_sent_with_the_canonical_type(jobs_for: Jobs) -> None:
    """A slot declared as image_url is sent as imageUrl."""
    text = (
        "name: m\ntechnique: mood\nrows: products.csv\n"
        'inputs:\n  photo: "{image_url}"\noutput:\n  name: "{sku}-{output_id}"\n'
    )
    _, specs, errors = jobs_for(text)
    assert errors == []
    assert specs[0].inputs == (RunInput("photo", "imageUrl", "https://media.flora.ai/p/a1.jpg"),)


def test_row_with_every_input_empty(jobs_for: Jobs) -> None:
    """A run needs at least one input: a row whose inputs all render empty is an error."""
    text = (
        "name: m\ntechnique: mood\nrows: products.csv\n"
        'inputs:\n  hint: "{colour}"\noutput:\n  name: "{sku}-{output_id}"\n'
    )
    _, specs, errors = jobs_for(text)
    assert [s.row_id for s in specs] == [None, None]
    assert errors == ["products.csv:3: every input of this row is empty"]


def test_identical_rows_are_told_apart_by_id_else_numbered(jobs_for: Jobs) -> None:
    """Rows with the same inputs are told apart by their ids (BY_ROW_ID), or without an id
    column get occurrence 0, 1, 2 in row order: distinct keys either way."""
    csv = (
        "sku,title,image_url,colour\n"
        "A1,Mug,https://media.flora.ai/p/a.jpg,red\n"
        "B2,Lamp,https://media.flora.ai/p/b.jpg,red\n"
        "C3,Mug again,https://media.flora.ai/p/a.jpg,red\n"
        "D4,Mug thrice,https://media.flora.ai/p/a.jpg, red \n"
    )
    _, specs, errors = jobs_for(csv=csv)
    assert errors == []
    told = [(s.row_id, s.occurrence) for s in specs]
    assert told == [("A1", BY_ROW_ID), ("B2", 0), ("C3", BY_ROW_ID), ("D4", BY_ROW_ID)]
    assert len({job_key(s) for s in specs}) == 4
    _, specs, errors = jobs_for(MANIFEST.replace("id: sku\n", ""), csv=csv)
    assert errors == []
    assert [s.occurrence for s in specs] == [0, 0, 1, 2]
    assert len({job_key(s) for s in specs}) == 4


def test_id_column_problems(jobs_for: Jobs) -> None:
    """A missing id column is a manifest problem; blank or repeated ids are row problems."""
    _, specs, errors = jobs_for(MANIFEST.replace("id: sku", "id: SKU"))
    assert specs == []
    assert errors == ["m.yaml:4: unknown id column 'SKU'; did you mean 'sku'?"]
    csv = PRODUCTS_CSV.replace("B2,", ",").replace("C3,", "A1,")
    _, specs, errors = jobs_for(csv=csv)
    assert [s.row_id for s in specs] == ["A1"]
    assert errors == [
        "products.csv:3:sku: the id column 'sku' is empty",
        "products.csv:4:sku: id 'A1' is also the id of line 2; ids must be unique",
    ]


def test_output_name_problems(jobs_for: Jobs) -> None:
    """output.name must use {output_id} and only known placeholders."""
    _, _, errors = jobs_for(MANIFEST.replace("{sku}/{technique}-{output_id}{ext}", "{sku}{ext}"))
    assert errors == [
        "m.yaml:10: output.name must use {output_id}: one run can return several outputs"
    ]
    _, _, errors = jobs_for(MANIFEST.replace("{sku}/{technique}", "{skus}/{technique}"))
    assert errors == ["m.yaml:10: unknown placeholder {skus} in output.name; did you mean 'sku'?"]


def test_case_only_output_collision_drops_the_later_job(jobs_for: Jobs) -> None:
    """Names equal but for case clash (macOS and Windows fold case); the later job is dropped."""
    csv = PRODUCTS_CSV.replace("C3,Tote", "a1,Tote")
    _, specs, errors = jobs_for(csv=csv)
    assert [s.row_id for s in specs] == ["A1", "B2"]
    assert len(errors) == 1
    assert errors[0].startswith("products.csv:4: output file 'a1/studio-shot-shot.png' of ")
    assert "products.csv:4 (studio-shot output 'shot') clashes with " in errors[0]
    assert "products.csv:2 (studio-shot output 'shot')" in errors[0]


def test_collisions_are_checked_across_techniques(jobs_for: Jobs) -> None:
    """Two techniques writing the same name clash too."""
    text = (
        "name: two\nrows: products.csv\nid: sku\n"
        "techniques:\n"
        '  - technique: studio-shot\n    inputs:\n      product: "{image_url}"\n'
        '  - technique: palette-pull\n    inputs:\n      image: "{image_url}"\n'
        'output:\n  name: "{sku}-{output_id}"\n'
    )
    _, specs, errors = jobs_for(text)
    assert errors == []  # shot and palette differ
    _, specs, errors = jobs_for(text.replace("{sku}-{output_id}", "{sku}-{output_id:.0}x"))
    assert len(specs) == 3
    assert len(errors) == 3
    assert all("clashes with" in e for e in errors)


def test_file_and_folder_with_one_name_clash(jobs_for: Jobs) -> None:
    """A file named like another job's folder is a clash too (empty components drop)."""
    csv = (
        "dir,name,image_url\n"
        ",x,https://media.flora.ai/a.png\n"
        "x,y,https://media.flora.ai/b.png\n"
        "y,x,https://media.flora.ai/c.png\n"
    )
    text = (
        "name: t\ntechnique: palette-pull\nrows: products.csv\n"
        'inputs:\n  image: "{image_url}"\noutput:\n  name: "{dir}/{name}{output_id:.0}"\n'
    )
    _, specs, errors = jobs_for(text, csv=csv)
    assert [s.row["name"] for s in specs] == ["x", "x"]
    assert len(errors) == 1
    assert errors[0].startswith("products.csv:3: output file 'x/y' of ")
    assert errors[0].endswith(
        "(names are compared ignoring case): make output.name unique, "
        "e.g. with the id column or {row}"
    )


def test_inline_rows_are_located_in_the_manifest(tmp_path: Path) -> None:
    """Row problems of inline rows point at the manifest line of the item."""
    text = (
        "name: inline\ntechnique: palette-pull\n"
        'inputs:\n  image: "{url}"\n'
        'output:\n  name: "{row}-{output_id}"\n'
        "rows:\n  - url: https://media.flora.ai/a.png\n  - url: ftp://x\n"
    )
    m = load_manifest(tmp_path / "m.yaml", text)
    columns, rows = load_rows(m.rows, m.path)
    specs, errors = build_jobs(m, columns, rows, CATALOG)
    assert len(specs) == 1
    assert specs[0].source == f"{tmp_path}/m.yaml:8"
    assert located(errors, tmp_path) == [
        "m.yaml:9:url: input 'image': 'ftp://x' must be an https:// URL "
        "(FLORA refuses http:// and local paths)"
    ]


def test_manifest_from_rows_builds_the_same_jobs(write: Write) -> None:
    """A bare CSV with --input pairs gives the jobs a YAML manifest would."""
    path = write("products.csv", PRODUCTS_CSV)
    m = manifest_from_rows(path, "studio-shot", {"product": "image_url"}, name="spring")
    columns, rows = load_rows(m.rows, m.path)
    specs, errors = build_jobs(m, columns, rows, CATALOG)
    assert errors == []
    assert [s.inputs[0].value for s in specs] == [
        "https://media.flora.ai/p/a1.jpg",
        "https://media.flora.ai/p/b2.jpg",
        "https://media.flora.ai/p/c3.jpg",
    ]


def test_check_manifest_on_a_hand_built_manifest(tmp_path: Path) -> None:
    """check_manifest works on a Manifest built in code (no line numbers known)."""
    m = Manifest(
        path=tmp_path / "m.yaml",
        name="x",
        uses=(TechniqueUse("nope", {"a": "{b}"}),),
        rows=RowsSource(),
        id_column=None,
        output_dir=tmp_path,
        output_name="{zzz}",
    )
    assert located(check_manifest(m, ["b"], CATALOG), tmp_path) == [
        "m.yaml: output.name must use {output_id}: one run can return several outputs",
        "m.yaml: unknown placeholder {zzz} in output.name; expected one of: "
        "b, technique, output_id, ext, index, row, key",
        "m.yaml: unknown technique 'nope'; expected one of: doc-reader, mood, palette-pull, "
        "product-animator, studio-shot, voice-over",
    ]


def test_format_spec_failures_are_row_errors(jobs_for: Jobs) -> None:
    """A format spec that does not fit a cell fails that row, in an input or in output.name."""
    _, specs, errors = jobs_for(MANIFEST.replace('"{colour} paper"', '"{colour:d}"'))
    assert specs == []
    assert errors[0] == (
        "products.csv:2:colour: template '{colour:d}': format {colour:d} failed: "
        "Unknown format code 'd' for object of type 'str'"
    )
    _, specs, errors = jobs_for(MANIFEST.replace("{sku}/{technique}", "{sku:d}/{technique}"))
    assert specs == []
    assert errors[0].startswith("products.csv:2: output.name: template '{sku:d}/")
