"""Uploads under faults, crashes and API variants: in process, against the emulator app."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from inproc_uploads import TravelClock, WebTransport, run_crashing, run_once, settings
from PIL import Image
from upload_helpers import big_png, image, manifest, write_rows

from flora_batch import memo, retrying
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.ledger import Ledger
from flora_batch.types import JobState, UploadState


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    """No backoff waits in process."""
    with retrying.set_testing():
        yield


def three_files(folder: Path, *, web: str | None = None) -> Path:
    """A batch of four rows over two small images and one over 4 MiB (one shared)."""
    image(folder / "a.png", seed=1)
    image(folder / "b.png", seed=2)
    big_png(folder / "big.png")
    cells = ["a.png", "b.png", "big.png", "a.png"] + ([web] if web else [])
    write_rows(folder / "rows.csv", [{"sku": f"s{i}", "image": c} for i, c in enumerate(cells)])
    return manifest(folder)


def check_once(emu: Emulator, files: int, jobs: int) -> None:
    """Every file one asset (and no other asset), every job charged once."""
    assert len(emu.assets) == files, [a.summary(0) for a in emu.assets.values()]
    assert set(emu.assets_by_sha256().values()) == {1}
    assert sorted(emu.charges_by_key().values()) == [1] * jobs


def png_bytes(seed: int) -> bytes:
    """A small PNG, as a web host would serve it."""
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (seed, 200, 10)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize(
    "fault", ["drop_after_asset_create", "error_after_asset_create", "error_before_asset_create"]
)
async def test_lost_create_answers_never_make_two_assets(tmp_path: Path, mode, fault):
    """A create whose answer is lost is resent with its key; 409 is settled by listing."""
    emu = Emulator(EmulatorConfig(speed=2000, asset_idempotency=mode))
    emu.inject(fault, times=3)
    path = three_files(tmp_path)
    result = await run_once(path, settings(emu), WebTransport(emu))
    assert result.outcome.counts[JobState.DONE] == 4, result.outcome
    check_once(emu, 3, 4)
    assert emu.request_counts["POST /api/v1/assets"] > 3  # lost answers were resent


async def test_storage_errors_are_retried_on_the_same_reservation(tmp_path: Path):
    """A 5xx from the storage host is retried; still one asset for the large file."""
    emu = Emulator(EmulatorConfig(speed=2000))
    emu.inject("storage_error", times=2)
    result = await run_once(three_files(tmp_path), settings(emu), WebTransport(emu))
    assert result.outcome.counts[JobState.DONE] == 4
    check_once(emu, 3, 4)
    assert emu.request_counts["POST /_storage/{token}"] == 3


async def test_failed_ingest_gets_one_fresh_reservation(tmp_path: Path):
    """A signed upload that ends ``failed`` is reserved again once, re-sent and completed."""
    emu = Emulator(EmulatorConfig(speed=2000))
    emu.inject("ingest_failure", times=1)
    result = await run_once(three_files(tmp_path), settings(emu), WebTransport(emu))
    assert result.outcome.counts[JobState.DONE] == 4
    check_once(emu, 3, 4)
    assert emu.request_counts["POST /api/v1/assets/{asset_id}/retry"] == 1


@pytest.mark.parametrize("how", ["refused_host", "fetch_failed"])
async def test_web_image_falls_back_to_download_and_upload(tmp_path: Path, how):
    """When FLORA will not fetch a web image, it is downloaded and uploaded as a file."""
    config = {"refuse_fetch_hosts": ("example.com",)} if how == "refused_host" else {}
    emu = Emulator(EmulatorConfig(speed=2000, **config))
    if how == "fetch_failed":
        emu.inject("fetch_refused", times=1)
    web = {"/p/lamp.png": png_bytes(3)}
    path = three_files(tmp_path, web="https://example.com/p/lamp.png")
    result = await run_once(path, settings(emu), WebTransport(emu, web))
    assert result.outcome.counts[JobState.DONE] == 5, result.outcome
    ready = [a for a in emu.assets.values() if a.status == "ready"]
    assert len(ready) == 4 and set(emu.assets_by_sha256().values()) == {1}
    assert any(a.data == web["/p/lamp.png"] and a.uploaded_via == "direct" for a in ready)
    with Ledger.open(path.parent / "pics.ledger.db") as ledger:
        rows = ledger.uploads()
    assert {r.state for r in rows.values()} == {UploadState.READY}
    assert rows["url:https://example.com/p/lamp.png"].url in {a.url for a in ready}


async def test_downloaded_web_image_equal_to_a_local_file_is_one_asset(tmp_path: Path):
    """A fallback download with the bytes of a local file reuses that file's asset."""
    emu = Emulator(EmulatorConfig(speed=2000, refuse_fetch_hosts=("example.com",)))
    path = three_files(tmp_path, web="https://example.com/same.png")
    web = {"/same.png": (tmp_path / "a.png").read_bytes()}
    result = await run_once(path, settings(emu), WebTransport(emu, web))
    assert result.outcome.counts[JobState.DONE] == 5
    check_once(emu, 3, 5)


async def test_unreachable_web_image_waits_unpaid(tmp_path: Path):
    """A refused fetch whose download fails too: its job is not submitted, the rest run."""
    emu = Emulator(EmulatorConfig(speed=2000, refuse_fetch_hosts=("example.com",)))
    path = three_files(tmp_path, web="https://example.com/gone.png")
    result = await run_once(path, settings(emu), WebTransport(emu))
    out = result.outcome
    assert out.counts[JobState.DONE] == 4 and out.counts[JobState.PLANNED] == 1
    assert len(out.stuck) == 1 and "downloading it failed" in out.stuck[0]
    assert result.uploads is not None and len(result.uploads.failed) == 1


ROUTES = [
    ("POST /api/v1/assets", 1),
    ("POST /api/v1/assets", 3),
    ("POST /_storage/", 1),
    ("/complete", 1),
    ("GET /api/v1/assets/", 1),
    ("POST /api/v1/techniques/", 1),
]


@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize(("route", "nth"), ROUTES)
async def test_crash_at_any_upload_step_then_resume(tmp_path: Path, route, nth, phase, mode):
    """kill -9 at any upload request (sent or not, answered or not): no duplicate asset or run."""
    emu = Emulator(EmulatorConfig(speed=2000, asset_idempotency=mode))
    path = three_files(tmp_path)
    transport = WebTransport(emu)
    died = await run_crashing(path, settings(emu), transport, (route, nth, phase))
    # An asset is read only when FLORA's answer said "pending" (at this speed, nearly always).
    assert (died is None and transport.crashed) or route == "GET /api/v1/assets/"
    resumed_from = len(transport.seen)
    result = await run_once(path, settings(emu), transport)
    assert result.outcome.counts[JobState.DONE] == 4, result.outcome
    check_once(emu, 3, 4)
    if (route, phase, mode) == ("POST /api/v1/assets", "after", "conflict"):
        assert "GET /api/v1/assets" in transport.seen[resumed_from:]  # 409, found by listing


@pytest.mark.parametrize("shape", ["camel", "serialized"])
async def test_every_instruction_shape_is_followed(tmp_path: Path, shape):
    """Signed-upload instructions in camelCase or as a serialized policy both work."""
    emu = Emulator(EmulatorConfig(speed=2000, upload_shape=shape))
    result = await run_once(three_files(tmp_path), settings(emu), WebTransport(emu))
    assert result.outcome.counts[JobState.DONE] == 4
    check_once(emu, 3, 4)


async def test_a_bare_upload_url_is_refused_not_guessed(tmp_path: Path):
    """A bare upload_url is not PUT to: that file fails clearly, its job is not bought."""
    emu = Emulator(EmulatorConfig(speed=2000, upload_shape="bare"))
    result = await run_once(three_files(tmp_path), settings(emu), WebTransport(emu))
    out = result.outcome
    assert out.counts[JobState.DONE] == 3 and out.counts[JobState.PLANNED] == 1
    assert "bare upload_url" in out.stuck[0]
    assert emu.request_counts.get("POST /_storage/{token}", 0) == 0


async def test_expired_key_is_looked_up_before_creating_again(tmp_path: Path):
    """After FLORA's key window, a lost create is found by listing, never created twice."""
    clock = TravelClock()
    emu = Emulator(EmulatorConfig(speed=2000, asset_idempotency="conflict", key_window=7200,
                                  clock=clock))
    path = three_files(tmp_path)
    transport = WebTransport(emu)
    assert await run_crashing(path, settings(emu), transport, ("POST /api/v1/assets", 1, "after"),
                              clock=clock) is None
    clock.travel(3 * 3600)
    result = await run_once(path, settings(emu), transport, clock=clock)
    assert result.outcome.counts[JobState.DONE] == 4
    check_once(emu, 3, 4)
    assert emu.request_counts["GET /api/v1/assets"] >= 1


async def test_another_workspace_uploads_again(tmp_path: Path):
    """Assets belong to a workspace: a batch moved to another one uploads its files there."""
    emu = Emulator(EmulatorConfig(speed=2000))
    path = three_files(tmp_path)
    await run_once(path, settings(emu), WebTransport(emu))
    other = Emulator(EmulatorConfig(speed=2000, workspace_id="ws_other"))
    write_rows(tmp_path / "rows.csv", [{"sku": "new", "image": "a.png"}])
    manifest(tmp_path, techniques=("palette-pull",))  # a job not bought yet, same file
    result = await run_once(path, settings(other, workspace_id="ws_other"), WebTransport(other))
    assert result.outcome.counts[JobState.DONE] == 1
    assert [a.workspace_id for a in other.assets.values()] == ["ws_other"]
    with Ledger.open(tmp_path / "pics.ledger.db") as ledger:
        row = ledger.uploads()[next(iter(other.assets_by_sha256()))]
    assert (row.workspace_id, row.attempt) == ("ws_other", 2)


@pytest.mark.postgres
async def test_uploads_on_a_postgresql_ledger(tmp_path: Path):
    """The same batch, crash and resume with the ledger on PostgreSQL."""
    from ledger_support import pg_schema

    emu = Emulator(EmulatorConfig(speed=2000, asset_idempotency="conflict"))
    path = three_files(tmp_path)
    transport = WebTransport(emu)
    with pg_schema() as url:
        config = settings(emu, ledger=url)
        assert await run_crashing(path, config, transport, ("/complete", 1, "after")) is None
        result = await run_once(path, config, transport)
    assert result.outcome.counts[JobState.DONE] == 4
    check_once(emu, 3, 4)


async def test_a_batch_of_local_files_keeps_no_plan_memo_and_sees_an_edited_file(
    tmp_path: Path,
):
    """The plan memo does not read input files, so a batch with any is never planned from
    one: a file changed in place makes new jobs for the rows that use it."""
    emu = Emulator(EmulatorConfig(speed=2000))
    path = three_files(tmp_path)
    first = await run_once(path, settings(emu), WebTransport(emu))
    again = await run_once(path, settings(emu), WebTransport(emu))
    assert not first.prepared.memo and not again.prepared.memo
    assert again.prepared.plan.new == ()
    with Ledger.open(str(tmp_path / "pics.ledger.db")) as ledger:
        assert ledger.get_meta(memo.memo_name("pics")) is None
    image(tmp_path / "a.png", seed=9)
    edited = await run_once(path, settings(emu), WebTransport(emu))
    assert len(edited.prepared.plan.new) == 2  # the two rows of a.png
    assert edited.outcome.counts[JobState.DONE] == 4
    assert sorted(emu.charges_by_key().values()) == [1] * 6
