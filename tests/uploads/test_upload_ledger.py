"""The ledger's uploads table: guarded moves, one asset per row, new keys only by reopening."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_support import pg_schema

from flora_batch.errors import LedgerConflict
from flora_batch.ledger import Ledger
from flora_batch.manifest.sources import UploadSource, upload_idempotency_key
from flora_batch.types import UploadState

SHA = "0f" * 32


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger (a SQLite file, or a private PostgreSQL schema) with one planned upload."""
    source = UploadSource(SHA, "asset:sha256:" + SHA, "file", "/a.png", "a.png", 10, "image/png")
    if request.param == "sqlite":
        with Ledger.open(tmp_path / "u.ledger.db") as led:
            assert led.record_uploads([source.planned("ws_a", 1.0)]) == 1
            yield led
        return
    with pg_schema() as url, Ledger.open(url) as led:
        assert led.record_uploads([source.planned("ws_a", 1.0)]) == 1
        yield led


def test_the_happy_path(ledger: Ledger):
    """planned -> uploading (sent_at set once) -> asset noted -> ready."""
    rec = ledger.begin_upload(SHA, via="direct", now=2.0)
    assert (rec.state, rec.via, rec.sent_at) == (UploadState.UPLOADING, "direct", 2.0)
    ledger.note_asset(SHA, "asset_1", url="https://m/a.png", step=None, now=3.0)
    rec = ledger.mark_upload_ready(SHA, asset_id="asset_1", url="https://m/a.png", size=None,
                                   content_type=None, now=4.0)
    assert (rec.state, rec.asset_id, rec.size) == (UploadState.READY, "asset_1", 10)
    assert rec.ready_at == 4.0


def test_recording_again_changes_nothing(ledger: Ledger):
    """A row already in the ledger is left as it is, whatever its state."""
    ledger.begin_upload(SHA, via="direct", now=2.0)
    source = UploadSource(SHA, "asset:sha256:" + SHA, "file", "/b.png", "b.png", 10)
    assert ledger.record_uploads([source.planned("ws_a", 5.0)]) == 0
    assert ledger.upload(SHA).state is UploadState.UPLOADING
    assert ledger.upload(SHA).source == "/a.png"


def test_illegal_moves_raise_and_change_nothing(ledger: Ledger):
    """Ready before uploading, noting an asset on a planned row, a second asset: all refused."""
    with pytest.raises(LedgerConflict, match="it is planned, expected uploading"):
        ledger.mark_upload_ready(SHA, asset_id="a", url="u", size=1, content_type=None, now=2)
    with pytest.raises(LedgerConflict):
        ledger.note_asset(SHA, "asset_1", url=None, step=None, now=2)
    ledger.begin_upload(SHA, via="signed_url", now=2)
    with pytest.raises(LedgerConflict):
        ledger.begin_upload(SHA, via="signed_url", now=3)
    ledger.note_asset(SHA, "asset_1", url=None, step="reserved", now=3)
    with pytest.raises(LedgerConflict, match="it has asset_1"):
        ledger.note_asset(SHA, "asset_2", url=None, step="reserved", now=4)
    with pytest.raises(LedgerConflict, match="it has asset_1"):
        ledger.mark_upload_ready(SHA, asset_id="asset_2", url="u", size=1, content_type=None, now=5)
    rec = ledger.mark_upload_ready(SHA, asset_id="asset_2", url="u", size=1, content_type=None,
                                   now=5, replaces="asset_1")
    assert rec.asset_id == "asset_2"
    with pytest.raises(LedgerConflict):
        ledger.mark_upload_failed(SHA, error="x", now=6)
    with pytest.raises(LedgerConflict, match="no such upload"):
        ledger.upload("nope")


def test_reopen_is_a_new_attempt_with_a_new_key(ledger: Ledger):
    """failed -> planned: attempt 2, key -r2, the old asset and send time forgotten."""
    ledger.begin_upload(SHA, via="direct", now=2)
    ledger.note_asset(SHA, "asset_1", url="u", step=None, now=3)
    ledger.mark_upload_failed(SHA, error="refused", now=4)
    key = upload_idempotency_key(SHA, "ws_a", 2)
    rec = ledger.reopen_upload(SHA, workspace_id="ws_a", idempotency_key=key, reason="again", now=5)
    assert (rec.state, rec.attempt, rec.idempotency_key) == (UploadState.PLANNED, 2, key)
    assert (rec.asset_id, rec.url, rec.sent_at, rec.via) == (None, None, None, None)
    assert rec.error == "again"
    assert set(ledger.uploads()) == {SHA} and ledger.uploads([]) == {}
