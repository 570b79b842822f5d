"""The pure half: classifying media cells, placeholders, keys, names, and the plan's counts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flora_batch.errors import ManifestProblems
from flora_batch.keys import job_key
from flora_batch.manifest import load_manifest
from flora_batch.manifest.sources import (
    DIRECT_UPLOAD_LIMIT,
    FileFacts,
    MediaInputs,
    UploadSource,
    classify,
    is_placeholder,
    needed_sources,
    normalise_url,
    sniff,
    summarise,
    type_problem,
    upload_idempotency_key,
    upload_key,
    upload_name,
)
from flora_batch.types import JobSpec, RunInput, UploadState

SHA = "ab" * 32


def facts(path: str = "/data/a.png", **kw: object) -> FileFacts:
    """What a probe would say of a small PNG."""
    base: dict[str, object] = {"path": path, "sha256": SHA, "size": 1000,
                               "content_type": "image/png", "pixels": 100}
    return FileFacts(**{**base, **kw})  # type: ignore[arg-type]


def resolver(found: FileFacts | str | None = None, *, uploads: bool = True) -> MediaInputs:
    """A MediaInputs whose probe answers ``found`` for every path."""
    return MediaInputs(lambda raw: found if found is not None else facts(), uploads=uploads)


@pytest.mark.parametrize(
    ("cell", "how"),
    [
        ("https://media.flora.ai/a.png", "url"),
        ("https://bucket.s3.amazonaws.com/a.png", "url"),
        ("https://example.com/a.png", "remote"),
        ("HTTPS://Example.COM:443/a.png#top", "remote"),
        ("img/a.png", "file"),
        ("/abs/a.png", "file"),
        ("~/a.png", "file"),
        ("C:\\photos\\a.png", "file"),
        ("file:///abs/a%20b.png", "file"),
        ("file://localhost/abs/a.png", "file"),
        ("http://example.com/a.png", "error"),
        ("ftp://example.com/a.png", "error"),
        ("data:image/png;base64,AAAA", "error"),
        ("file://server/share/a.png", "error"),
        ("https:///nohost.png", "error"),
    ],
)
def test_classify(cell: str, how: str):
    """Allowed hosts pass, other https is fetched, paths and file:// upload, the rest errs."""
    assert classify(cell)[0] == how


def test_file_urls_become_paths():
    """file:///x%20y.png is the path /x y.png."""
    assert classify("file:///abs/a%20b.png") == ("file", "/abs/a b.png")


def test_normalised_urls():
    """Scheme and host lower-cased, :443 and the fragment dropped, path and query kept."""
    assert normalise_url("HTTPS://Example.COM:443/A.png?x=1#f") == "https://example.com/A.png?x=1"
    assert normalise_url("https://example.com:8443/a") == "https://example.com:8443/a"
    assert normalise_url("https://example.com") == "https://example.com/"


@given(st.sampled_from(["https://Example.com/a.png", "https://example.com:443/a.png#x",
                        "https://EXAMPLE.COM/a.png"]))
def test_one_web_image_one_placeholder(url: str):
    """Spellings of one URL give one placeholder, and normalising is idempotent."""
    value, problem = resolver()("imageUrl", url)
    assert problem is None and value == "asset:url:https://example.com/a.png"
    assert normalise_url(normalise_url(url)) == normalise_url(url)


def test_local_file_becomes_its_content_hash():
    """A file becomes asset:sha256:<hex>; the source keeps path, size, type and a tagged name."""
    media = resolver()
    value, problem = media("imageUrl", "a.png")
    assert (value, problem) == (f"asset:sha256:{SHA}", None)
    source = media.sources[value]
    assert (source.kind, source.source, source.size) == ("file", "/data/a.png", 1000)
    assert source.file_name == f"a.{SHA[:12]}.png" and upload_key(value) == SHA


@pytest.mark.parametrize(
    ("found", "kind", "says"),
    [
        ("file not found (/x/m.png)", "imageUrl", "file not found"),
        (facts(size=0), "imageUrl", "empty file"),
        (facts(content_type="image/bmp"), "imageUrl", "is image/bmp; imageUrl inputs take"),
        (facts(content_type=None), "imageUrl", "not a file type FLORA accepts"),
        (facts(content_type="video/mp4"), "imageUrl", "is video/mp4"),
        (facts(content_type="image/png"), "videoUrl", "videoUrl inputs take a video"),
        (facts(pixels=200_000_000), "imageUrl", "FLORA takes images up to 150,000,000"),
    ],
)
def test_bad_files_are_problems(found: FileFacts | str, kind: str, says: str):
    """Missing, empty, unsupported, mismatched and oversized files are refused at plan time."""
    value, problem = resolver(found)(kind, "m.png")
    assert value == "m.png" and problem is not None and says in problem


def test_web_urls_with_a_non_media_extension_are_refused():
    """https://host/readme.txt is not an image: refused before any request."""
    _, problem = resolver()("imageUrl", "https://example.com/readme.txt")
    assert problem is not None and "text/plain" in problem
    value, problem = resolver()("imageUrl", "https://example.com/render?id=3")
    assert problem is None and is_placeholder(value)


def test_without_a_workspace_uploads_are_a_problem():
    """No workspace id: a file or web image is an error naming the three ways to give one."""
    media = resolver(uploads=False)
    _, problem = media("imageUrl", "a.png")
    assert problem is not None and "FLORA_WORKSPACE_ID" in problem and media.needs_workspace
    hosted = "https://media.flora.ai/a.png"
    assert media("imageUrl", hosted) == (hosted, None)


def test_the_probe_runs_once_per_path():
    """A file used by many rows is read once."""
    calls: list[str] = []

    def probe(raw: str) -> FileFacts:
        calls.append(raw)
        return facts()

    media = MediaInputs(probe)
    for _ in range(5):
        media("imageUrl", "a.png")
    assert calls == ["a.png"]


def test_job_key_follows_content_not_path_or_asset_url():
    """Two paths to the same bytes give one key; other bytes give another."""
    one = resolver(facts("/x/a.png"))("imageUrl", "x/a.png")[0]
    two = resolver(facts("/y/b.png"))("imageUrl", "/y/b.png")[0]
    other = resolver(facts(sha256="cd" * 32))("imageUrl", "x/a.png")[0]

    def key(value: str) -> str:
        return job_key(JobSpec("b", "studio-shot", (RunInput("product", "imageUrl", value),), 0))

    assert key(one) == key(two) != key(other)


def test_upload_keys_and_names():
    """Idempotency keys depend on file, workspace and attempt; names keep a safe stem."""
    first = upload_idempotency_key(SHA, "ws_a")
    assert first.startswith("fu1:") and first != upload_idempotency_key(SHA, "ws_b")
    assert upload_idempotency_key(SHA, "ws_a", 2) == first + "-r2"
    assert upload_name("My Photo (1).JPG", SHA, "image/jpeg") == f"My-Photo-1.{SHA[:12]}.jpg"
    assert upload_name("render", SHA, "image/png") == f"render.{SHA[:12]}.png"


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x18ftypheic", "image/heic"),
        (b"\x00\x00\x00\x18ftypisom", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  ", "video/quicktime"),
        (b"\x1a\x45\xdf\xa3", "video/webm"),
        (b"hello", None),
    ],
)
def test_sniff(head: bytes, kind: str | None):
    """The first bytes decide the type."""
    assert sniff(head) == kind


def test_type_problem_names_what_is_taken():
    """The message lists what an image input takes."""
    assert type_problem("imageUrl", "image/png") is None
    assert "JPEG, PNG, WEBP, GIF, AVIF, HEIC, HEIF" in (type_problem("imageUrl", "image/bmp") or "")


def test_summary_counts_against_the_ledger():
    """plan's upload counts: ready rows of this workspace count as uploaded."""
    small = UploadSource("a" * 64, "asset:sha256:" + "a" * 64, "file", "/a.png", "a.png", 10)
    big = UploadSource("b" * 64, "asset:sha256:" + "b" * 64, "file", "/b.png", "b.png",
                       DIRECT_UPLOAD_LIMIT + 1)
    web = UploadSource("url:https://x.org/c.png", "asset:url:https://x.org/c.png", "url",
                       "https://x.org/c.png", "c.png")
    sources = {s.sha256: s for s in (small, big, web)}
    known = {small.sha256: replace(small.planned("ws_a", 1.0), state=UploadState.READY),
             big.sha256: replace(big.planned("ws_a", 1.0), state=UploadState.FAILED)}
    summary = summarise(sources, known, "ws_a")
    assert summary.as_dict() == {
        "files": 3, "bytes": 10 + DIRECT_UPLOAD_LIMIT + 1, "web": 1, "uploaded": 1,
        "to_upload": 2, "bytes_to_upload": DIRECT_UPLOAD_LIMIT + 1, "failed": 1,
        "items": [{"source": "/a.png", "size": 10, "state": "uploaded"},
                  {"source": "/b.png", "size": DIRECT_UPLOAD_LIMIT + 1, "state": "failed"},
                  {"source": "https://x.org/c.png", "size": None, "state": "to upload"}],
    }
    assert summarise(sources, known, "ws_other").uploaded == 0
    used = needed_sources([[RunInput("p", "imageUrl", small.placeholder)]], {
        s.placeholder: s for s in sources.values()})
    assert list(used) == [small.sha256]


def write(tmp_path: Path, assets: str) -> Path:
    """A manifest with an assets block."""
    (tmp_path / "rows.csv").write_text("image\na.png\n")
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\ntechnique: studio-shot\nrows: rows.csv\ninputs:\n  product: '{image}'\n" + assets
    )
    return path


def test_manifest_assets_block(tmp_path: Path):
    """assets: gives the workspace and folder; bad ones are located errors."""
    m = load_manifest(write(tmp_path, "assets:\n  workspace_id: ws_abc\n  folder: inputs\n"))
    assert (m.workspace_id, m.asset_folder) == ("ws_abc", "inputs")
    assert load_manifest(write(tmp_path, "assets:\n")).workspace_id is None
    with pytest.raises(ManifestProblems) as bad:
        load_manifest(write(tmp_path, "assets:\n  workspace_id: abc\n  folders: x\n"))
    text = str(bad.value)
    assert "m.yaml:7: assets.workspace_id 'abc' is not a FLORA workspace id" in text
    assert "m.yaml:8: unknown key 'folders' in assets; did you mean 'folder'?" in text


def test_progress_line_shows_the_uploads():
    """The progress line leads with the input files uploaded so far."""
    from collections import Counter

    from flora_batch.cli.progress import line
    from flora_batch.types import JobState
    from flora_batch.worker import Snapshot

    snap = Snapshot(total=4, counts=Counter({JobState.PLANNED: 4}), spent=0.0, in_flight_limit=4,
                    started=0.0, now=1.0, done_this_run=0, uploads=(2, 1, 5))
    assert line(snap).startswith("files 2/5 uploaded (1 failed) · 0/4 done")
    assert line(Snapshot(4, Counter(), 0.0, 4, 0.0, 1.0, 0)).startswith("0/4 done")
