"""``state_file``: the whole state in a JSON file, written before each changing request is
answered, so a new emulator on the same file carries on where the old one died."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from emulator_helpers import (
    client_for,
    create,
    create_asset,
    finish,
    png_bytes,
    send_to_storage,
    signed_upload,
    upload_direct,
)

from flora_batch.emulator import Emulator, EmulatorConfig, ManualClock
from flora_batch.emulator.serve import start_server


async def test_the_file_holds_a_create_before_its_answer_arrives(
    make_emu: Callable[..., Emulator], tmp_path: Path
) -> None:
    """Once a create is answered, the file already has its run, charge and key."""
    path = tmp_path / "state.json"
    emu = make_emu(state_file=path)
    async with client_for(emu) as c:
        assert not path.exists()
        await c.get("/techniques/icon-pack")  # a read writes nothing
        assert not path.exists()
        run_id = (await create(c, key="a")).json()["run_id"]
        saved = json.loads(path.read_text())
    assert [r["run_id"] for r in saved["runs"]] == [run_id]
    assert saved["keys"]["a"]["run_id"] == run_id
    assert [(c["idempotency_key"], c["kind"]) for c in saved["charges"]] == [("a", "charge")]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


async def test_a_new_emulator_on_the_file_remembers_everything(
    make_emu: Callable[..., Emulator], clock: ManualClock, tmp_path: Path
) -> None:
    """Runs (timelines, keys, charges, due refunds), foreign runs, the balance and assets
    survive a restart: keys replay, runs finish on time, outputs and assets download."""
    path = tmp_path / "state.json"
    settings = {
        "state_file": path,
        "refund_failed": True,
        "balance": 5.0,
        "other_clients": 1.0,
    }
    old = make_emu(**settings)
    old.inject("run_failure")
    async with client_for(old) as c:
        failing = (await create(c, key="a")).json()["run_id"]
        done = (await create(c, "cctv-cam", key="b")).json()["run_id"]
        asset = (await upload_direct(c, png_bytes(colour="blue"))).json()
        assert (await c.get("/techniques/cctv-cam")).status_code == 200
    new = make_emu(**settings)
    assert new.snapshot()["runs"] == old.snapshot()["runs"]
    assert new.balance == pytest.approx(old.balance)
    # counts as of the last changing request: the technique read after it was not saved
    assert new.request_counts["POST /api/v1/techniques/{slug}/runs"] == 2
    assert new.request_counts["GET /api/v1/techniques/{slug}"] == 0
    async with client_for(new) as c:
        replay = await create(c, key="a")
        finished = await finish(c, clock, done)
        media = await c.get(finished["outputs"][0]["url"])
        stored = await c.get(f"/assets/{asset['asset_id']}")
        got = await c.get(asset["url"].replace("https://media.flora.ai", "http://testserver"))
    assert replay.status_code == 200 and replay.json()["run_id"] == failing
    assert finished["status"] == "completed" and media.status_code == 200
    assert stored.json()["status"] == "ready" and got.content == png_bytes(colour="blue")
    assert new.charges_by_key() == {"a": 1, "b": 1}
    assert [c.kind for c in new.charges if not c.foreign] == ["charge", "charge", "refund"]
    assert sum(r.foreign for r in new.runs.values()) == 2


async def test_signed_upload_reservations_survive_a_restart(
    make_emu: Callable[..., Emulator], clock: ManualClock, tmp_path: Path
) -> None:
    """A reservation made before a restart is sent to storage and completed after it."""
    path = tmp_path / "state.json"
    async with client_for(make_emu(state_file=path)) as c:
        reserved = (await create_asset(c, "signed-url")).json()
    new = make_emu(state_file=path)
    async with client_for(new) as c:
        sent = await send_to_storage(c, reserved["upload"], png_bytes())
        done = await c.post(f"/assets/{reserved['asset_id']}/complete")
        clock.advance(60)
        body = (await c.get(f"/assets/{reserved['asset_id']}")).json()
    assert (sent.status_code, done.status_code, body["status"]) == (204, 200, "ready")
    assert list(new.assets_by_sha256().values()) == [1]


def test_a_file_that_is_not_a_state_is_refused(tmp_path: Path) -> None:
    """A corrupt or foreign file stops the emulator at construction, with the path named."""
    path = tmp_path / "state.json"
    path.write_text('{"runs": []}')
    with pytest.raises(ValueError, match="not an emulator state file"):
        Emulator(EmulatorConfig(state_file=path))
    path.write_text("{half")
    with pytest.raises(ValueError, match=r"state\.json"):
        Emulator(EmulatorConfig(state_file=path))


def test_a_restarted_server_on_the_same_file_carries_on(tmp_path: Path) -> None:
    """Over a socket: a run made by one server is polled from a second one on the file."""
    path = tmp_path / "state.json"
    headers = {"Authorization": "Bearer sk_test_emulator"}
    body = {
        "inputs": [{"id": "face", "type": "imageUrl", "value": "https://media.flora.ai/a.png"}],
        "mode": "async",
        "idempotency_key": "k",
    }
    config = EmulatorConfig(speed=2000, state_file=path)
    with start_server(config) as first:
        with httpx.Client(base_url=first.base_url, headers=headers, timeout=5) as c:
            run_id = c.post("/techniques/cctv-cam/runs", json=body).json()["run_id"]
    with start_server(config) as second:
        with httpx.Client(base_url=second.base_url, headers=headers, timeout=5) as c:
            polled = c.get(f"/runs/{run_id}")
            again = c.post("/techniques/cctv-cam/runs", json=body)
        assert second.emulator.charges_by_key() == {"k": 1}
    assert polled.status_code == 200 and polled.json()["run_id"] == run_id
    assert again.json()["run_id"] == run_id


async def test_reset_is_saved_too(make_emu: Callable[..., Emulator], tmp_path: Path) -> None:
    """``POST /_emulator/reset`` empties the file as well as the memory."""
    path = tmp_path / "state.json"
    emu = make_emu(state_file=path)
    async with client_for(emu) as c:
        await create(c, key="a")
        await c.post("http://testserver/_emulator/reset")
    assert json.loads(path.read_text())["runs"] == []
    assert make_emu(state_file=path).runs == {}


async def test_signed_upload_helper_still_works_with_a_state_file(
    make_emu: Callable[..., Emulator], clock: ManualClock, tmp_path: Path
) -> None:
    """Uploads through the fake storage are saved like API requests (one asset, its bytes)."""
    path = tmp_path / "state.json"
    async with client_for(make_emu(state_file=path)) as c:
        body = await signed_upload(c, png_bytes(), clock)
    saved = json.loads(path.read_text())["assets"]["records"]
    assert [a["asset_id"] for a in saved] == [body["asset_id"]] and saved[0]["data"]
