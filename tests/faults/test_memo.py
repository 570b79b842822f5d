"""The plan memo (``flora_batch/memo.py``): a resume planned from it is the resume planned
the long way, and any change to what makes the keys plans the long way again.

Money is judged from the emulator's books: an edited row is bought once, nothing else
twice, and a memo can never hide a job from the plan.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import creates, ledger_path, rows, write_batch
from hypothesis import given
from hypothesis import strategies as st
from inproc import CrashingTransport, fast_settings, run_once
from support import pg_schema

from flora_batch import memo
from flora_batch.config import Settings
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import Prepared, fetch_techniques, plan_batch, prepare
from flora_batch.plan import Plan
from flora_batch.remote.client import FloraClient
from flora_batch.types import JobKey, JobState

pytestmark = pytest.mark.usefixtures("retry_fast")


def emulator(**kw: object) -> Emulator:
    """An in-process emulator, fast."""
    kw.setdefault("speed", 1000.0)
    return Emulator(EmulatorConfig(**kw))  # type: ignore[arg-type]


def write_rows(manifest: Path, products: list[dict[str, str]]) -> None:
    """Rewrite the batch's products.csv."""
    with open(manifest.parent / "products.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sku", "title", "image_url"])
        writer.writeheader()
        writer.writerows(products)


def ledger_of(manifest: Path, settings: Settings) -> str:
    """The batch's ledger: ``settings.ledger`` (PostgreSQL), else the file beside it."""
    return settings.ledger or str(ledger_path(manifest))


async def prepared(manifest: Path, emu: Emulator, settings: Settings) -> Prepared:
    """``prepare`` as ``run`` calls it, against the batch's ledger (a fresh read)."""
    m = load_manifest(manifest)
    transport = CrashingTransport(emu)
    async with FloraClient(settings.base_url, settings.api_key, transport=transport) as c:
        with Ledger.open(ledger_of(manifest, settings)) as ledger:
            return await prepare(m, c, ledger, settings, remember=True)


def forget(manifest: Path, settings: Settings, name: str = "mugs") -> None:
    """Drop the batch's memo, so the next ``prepare`` goes the long way."""
    with Ledger.open(ledger_of(manifest, settings)) as ledger:
        ledger.set_meta(memo.memo_name(name), None)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (a SQLite file beside the manifest) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
    else:
        with pg_schema() as url:
            yield url


def same_plan(a: Plan, b: Plan) -> None:
    """Every field of two plans, named in the failure."""
    for f in dataclasses.fields(Plan):
        assert getattr(a, f.name) == getattr(b, f.name), f.name


async def test_a_resume_from_the_memo_plans_what_the_long_way_plans(
    tmp_path: Path, ledger_url: str | None
):
    """Done, failed and retired jobs, with and without --retry-failed: the same plan both
    ways, on SQLite and on PostgreSQL."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 8)
    settings = fast_settings(emu, ledger=ledger_url)
    emu.inject("run_failure", times=2, code="provider_error")
    await run_once(manifest, settings, CrashingTransport(emu))
    write_rows(manifest, rows(6))  # two rows removed: their jobs retire
    await run_once(manifest, settings, CrashingTransport(emu))
    for config in (settings, dataclasses.replace(settings, retry_failed=True)):
        quick = await prepared(manifest, emu, config)
        forget(manifest, config)
        slow = await prepared(manifest, emu, config)  # and it remembers again
        assert (quick.memo, slow.memo) == (True, False)
        same_plan(quick.plan, slow.plan)
        assert len(quick.plan.retired) == 2 and quick.plan.failed
        assert quick.new_jobs() == slow.new_jobs() == []
        assert quick.skipped == slow.skipped == []


async def test_an_edited_row_is_planned_the_long_way_and_bought_once(tmp_path: Path):
    """After an edit, the memo of the old rows is not used; the edited row's job is paid once."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 8)
    settings = fast_settings(emu)
    first = await run_once(manifest, settings, CrashingTransport(emu))
    assert not first.prepared.memo and creates(emu) == 8
    edited = rows(8)
    edited[3]["title"] = "Ceramic mug, blue glaze"
    write_rows(manifest, edited)
    second = await run_once(manifest, settings, CrashingTransport(emu))
    assert not second.prepared.memo
    assert len(second.prepared.plan.new) == 1 and len(second.prepared.plan.changed) == 1
    assert creates(emu) == 9
    third = await run_once(manifest, settings, CrashingTransport(emu))
    assert third.prepared.memo and third.prepared.plan.new == ()
    assert creates(emu) == 9
    assert set(emu.charges_by_key().values()) == {1} and len(emu.charges_by_key()) == 9


async def test_a_memo_naming_a_job_the_ledger_lacks_is_not_used(tmp_path: Path):
    """A memo with a key the ledger never recorded (or a cut-off one) plans the long way."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 3)
    settings = fast_settings(emu)
    await run_once(manifest, settings, CrashingTransport(emu))
    with Ledger.open(ledger_path(manifest)) as ledger:
        text = ledger.get_meta(memo.memo_name("mugs"))
    assert text is not None
    digest, _, rest = text.partition("\n")
    keys = rest.split("\n")[1:]
    stranger = JobKey("fk1:" + "0" * 32)
    for bad in (memo.encode(digest, [*keys, stranger]), text[: len(text) - 5], "garbage"):
        with Ledger.open(ledger_path(manifest)) as ledger:
            ledger.set_meta(memo.memo_name("mugs"), bad)
        got = await prepared(manifest, emu, settings)
        assert not got.memo
        assert len(got.plan.done) == 3 and got.plan.new == ()
    assert creates(emu) == 3


async def test_no_memo_is_left_by_plan_or_by_a_batch_with_a_bad_row(tmp_path: Path):
    """`plan` writes nothing; a batch run with --skip-invalid past a bad row keeps no memo
    (the bad row's fate depends on more than the digest reads)."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 4)
    settings = fast_settings(emu)
    await run_once(manifest, settings, CrashingTransport(emu))
    forget(manifest, settings)
    await plan_batch(load_manifest(manifest), settings, transport=CrashingTransport(emu))
    with Ledger.open(ledger_path(manifest)) as ledger:
        assert ledger.get_meta(memo.memo_name("mugs")) is None
    bad = rows(4)
    bad[1]["image_url"] = "http://example.com/not-https.jpg"
    write_rows(manifest, bad)
    skip = dataclasses.replace(settings, skip_invalid=True)
    for _ in range(2):
        result = await run_once(manifest, skip, CrashingTransport(emu))
        assert not result.prepared.memo and len(result.prepared.skipped) == 1
    with Ledger.open(ledger_path(manifest)) as ledger:
        assert ledger.get_meta(memo.memo_name("mugs")) is None
        assert {j.state for j in ledger.jobs()} == {JobState.DONE}
    assert creates(emu) == 4


async def test_every_input_of_the_keys_changes_the_digest(tmp_path: Path):
    """Manifest, rows bytes, schemas, the uploads switch and the code each change the digest."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 3)
    m = load_manifest(manifest)
    settings = fast_settings(emu)
    transport = CrashingTransport(emu)
    async with FloraClient(settings.base_url, settings.api_key, transport=transport) as c:
        techniques = await fetch_techniques(c, m)
    base = memo.batch_digest(m, techniques, uploads=False)
    assert base is not None and base == memo.batch_digest(m, techniques, uploads=False)
    text = manifest.read_text()
    variants = {
        "batch name": text.replace("name: mugs", "name: cups"),
        "input template": text.replace("behind {title}", "under {title}"),
        "output name": text.replace("{sku}/", "{sku}-"),
        "id column": text.replace("id: sku", "id: title"),
    }
    for what, changed in variants.items():
        other = tmp_path / "v" / f"{what.replace(' ', '-')}.yaml"
        other.parent.mkdir(exist_ok=True)
        shutil.copy(manifest.parent / "products.csv", other.parent / "products.csv")
        other.write_text(changed)
        assert memo.batch_digest(load_manifest(other), techniques, uploads=False) != base, what
    cheaper = {"studio-shot": dataclasses.replace(techniques["studio-shot"], run_cost=0.01)}
    assert memo.batch_digest(m, cheaper, uploads=False) != base
    assert memo.batch_digest(m, techniques, uploads=True) != base
    assert memo.batch_digest(m, techniques, uploads=False, code="another version") != base
    (manifest.parent / "products.csv").write_bytes(
        (manifest.parent / "products.csv").read_bytes() + b"\n"
    )
    assert memo.batch_digest(m, techniques, uploads=False) != base
    (manifest.parent / "products.csv").unlink()
    assert memo.batch_digest(m, techniques, uploads=False) is None


def test_the_manifest_s_repr_names_no_object_address(tmp_path: Path):
    """The digest reads ``repr(manifest)``: an ``at 0x...`` in it would change every run."""
    m = load_manifest(write_batch(tmp_path / "b", 2))
    assert " at 0x" not in repr(m)


_keys = st.lists(st.from_regex(r"fk1:[0-9a-f]{32}", fullmatch=True), unique=True, max_size=20)


@given(keys=_keys, digest=st.from_regex(r"[0-9a-f]{40}", fullmatch=True))
def test_a_memo_reads_back_only_whole_and_under_its_own_digest(keys: list[str], digest: str):
    """encode/decode round-trip; another digest or a cut-off text reads as no memo."""
    text = memo.encode(digest, [JobKey(k) for k in keys])
    assert memo.decode(text, digest) == keys
    assert memo.decode(text, "f" * 39 + "0" if digest != "f" * 39 + "0" else "0" * 40) is None
    if keys:
        assert memo.decode(text[: text.rfind("\n")], digest) is None
