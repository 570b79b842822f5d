"""Local files and web images as inputs, through the real CLI against the emulator on a socket."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import FAST, cli_cmd, wait_for
from upload_helpers import (
    WEB,
    asset_creates,
    counts,
    env,
    image,
    manifest,
    mixed_batch,
    paid_requests,
    run,
    run_creates,
    write_rows,
)

from flora_batch.emulator import FaultPlan


def ledger_rows(path: Path, query: str) -> list[tuple[object, ...]]:
    """Rows of a query on a batch's SQLite ledger."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(query))
    finally:
        conn.close()


def test_mixed_batch_uploads_each_file_exactly_once(emulator, run_cli, tmp_path: Path):
    """Shared, large, absolute, file:// and web inputs: every job done, one asset per file."""
    server = emulator()
    batch = mixed_batch(tmp_path / "b", techniques=("studio-shot", "palette-pull"))
    res = run(run_cli, batch.manifest, server)
    assert res.code == 0, res.text
    assert "22 of 22 jobs done" in res.out
    by_content = server.emulator.assets_by_sha256()
    assert set(by_content.values()) == {1}
    assert set(batch.files.values()) <= set(by_content)
    assert len(server.emulator.assets) == batch.uploads == 6
    seen = counts(server)
    assert seen["POST /api/v1/assets"] == 6  # 3 direct, 1 signed, 2 fetched by FLORA
    assert seen["POST /_storage/{token}"] == 1
    assert seen["POST /api/v1/assets/{asset_id}/complete"] == 1
    assert sorted(server.emulator.charges_by_key().values()) == [1] * 22
    assert "uploads 6 input file(s): 6 uploaded now" in res.out
    sent = {a.uploaded_via for a in server.emulator.assets.values()}
    assert sent == {"direct", "signed_url", "url"}
    assert {a.folder for a in server.emulator.assets.values()} == {"batch-inputs"}


def test_rerun_uploads_nothing_and_buys_nothing(emulator, run_cli, tmp_path: Path):
    """A second run of a finished batch sends no asset request and no create at all."""
    server = emulator()
    batch = mixed_batch(tmp_path / "b")
    assert run(run_cli, batch.manifest, server).code == 0
    before = counts(server)
    res = run(run_cli, batch.manifest, server)
    assert res.code == 0, res.text
    after = counts(server)
    assert {k: v for k, v in after.items() if "assets" in k or "storage" in k} == {
        k: v for k, v in before.items() if "assets" in k or "storage" in k
    }
    assert run_creates(server) == 11


def test_same_file_in_two_techniques_uploads_once(emulator, run_cli, tmp_path: Path):
    """One image used by two techniques and three rows is one asset and one upload."""
    server = emulator()
    folder = tmp_path / "b"
    image(folder / "one.png", seed=4)
    write_rows(folder / "rows.csv", [{"sku": s, "image": "one.png"} for s in ("a", "b", "c")])
    path = manifest(folder, techniques=("studio-shot", "product-motion"))
    res = run(run_cli, path, server)
    assert res.code == 0, res.text
    assert asset_creates(server) == 1 and len(server.emulator.assets) == 1
    assert run_creates(server) == 6


def test_bad_files_are_reported_at_plan_time(emulator, run_cli, tmp_path: Path):
    """An unsupported type, a missing file and http:// are each located; exit 2, no upload."""
    server = emulator()
    folder = tmp_path / "b"
    image(folder / "ok.png", seed=5)
    image(folder / "scan.bmp", seed=6, fmt="BMP")
    (folder / "notes.png").write_text("not an image at all\n")
    rows = [
        {"sku": "a", "image": "ok.png"},
        {"sku": "b", "image": "scan.bmp"},
        {"sku": "c", "image": "missing.png"},
        {"sku": "d", "image": "notes.png"},
        {"sku": "e", "image": "http://example.com/x.png"},
        {"sku": "f", "image": "https://example.com/readme.txt"},
    ]
    write_rows(folder / "rows.csv", rows)
    path = manifest(folder)
    for command in ("plan", "run"):
        flags = FAST if command == "run" else ()
        res = run_cli(command, str(path), *flags, env=env(folder, server))
        assert res.code == 2, res.text
        err = res.err
        assert "rows.csv:3:image: input 'product': 'scan.bmp' is image/bmp" in err
        assert "rows.csv:4:image: input 'product': 'missing.png' file not found" in err
        assert "rows.csv:5:image: input 'product': 'notes.png' is not a file type" in err
        assert "rows.csv:6:image:" in err and "http://" in err
        assert "rows.csv:7:image:" in err and "text/plain" in err
        assert "5 problem(s); nothing was submitted." in err
    assert paid_requests(server) == 0


def test_missing_workspace_is_a_clear_error_before_any_upload(emulator, run_cli, tmp_path: Path):
    """Without a workspace id, a local file is an exit-2 error naming the fixes; nothing sent."""
    server = emulator()
    folder = tmp_path / "b"
    image(folder / "one.png", seed=4)
    write_rows(folder / "rows.csv", [{"sku": "a", "image": "one.png"}])
    path = manifest(folder, assets=None)
    res = run(run_cli, path, server, "--skip-invalid")
    assert res.code == 2, res.text
    assert "rows.csv:2:image:" in res.err and "FLORA_WORKSPACE_ID" in res.err
    assert "workspace_id: ws_" in res.err
    assert paid_requests(server) == 0
    ok = run(run_cli, path, server, FLORA_WORKSPACE_ID="ws_emulator")
    assert ok.code == 0, ok.text
    bad = run(run_cli, path, server, FLORA_WORKSPACE_ID="emulator")
    assert bad.code == 2 and "not a FLORA workspace id" in bad.err


def test_demo_uploads_into_the_emulator_workspace(run_cli, tmp_path: Path):
    """--demo sets the embedded emulator's workspace: local files need no assets: block."""
    folder = tmp_path / "b"
    image(folder / "one.png", seed=4)
    write_rows(folder / "rows.csv", [{"sku": "a", "image": "one.png"}])
    path = manifest(folder, assets="ws_someone_else")
    res = run_cli("run", str(path), "--demo", *FAST, env=env(folder))
    assert res.code == 0, res.text
    assert "uploads 1 input file(s): 1 uploaded now" in res.out


@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize("kill_after", [1, 3])
def test_sigkill_mid_upload_then_rerun(emulator, run_cli, tmp_path: Path, mode, kill_after):
    """kill -9 once the emulator saw asset creates; the re-run finishes with no duplicate."""
    server = emulator(asset_idempotency=mode, faults=FaultPlan(slow_seconds=0.3))
    server.emulator.inject("slow", times=40)  # every request waits: the kill lands mid-upload
    batch = mixed_batch(tmp_path / "b")
    proc = subprocess.Popen(cli_cmd("run", str(batch.manifest), *FAST),
                            env=env(batch.folder, server), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: asset_creates(server) >= kill_after, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ready = [a for a in server.emulator.assets.values() if a.status == "ready"]
    assert len(ready) < batch.uploads, "the kill should land before every file is uploaded"
    server.emulator.dice.clear()
    res = run(run_cli, batch.manifest, server)
    assert res.code == 0, res.text
    assert len(server.emulator.assets) == batch.uploads
    assert set(server.emulator.assets_by_sha256().values()) == {1}
    assert sorted(server.emulator.charges_by_key().values()) == [1] * 11
    states = ledger_rows(batch.folder / "pics.ledger.db", "SELECT state FROM uploads")
    assert sorted(s for (s,) in states) == ["ready"] * batch.uploads


def test_job_keys_do_not_change_when_the_asset_url_changes(emulator, run_cli, tmp_path: Path):
    """An asset FLORA lost is uploaded again (new URL) without changing any job's key."""
    server = emulator()
    folder = tmp_path / "b"
    image(folder / "one.png", seed=4)
    write_rows(folder / "rows.csv", [{"sku": "a", "image": "one.png"}])
    path = manifest(folder)
    assert run(run_cli, path, server).code == 0
    ledger = folder / "pics.ledger.db"
    keys_before = ledger_rows(ledger, "SELECT key, inputs FROM jobs")
    (url_before,) = ledger_rows(ledger, "SELECT url FROM uploads")[0]
    server.emulator.assets.clear()  # FLORA no longer has the asset
    write_rows(folder / "rows.csv", [{"sku": "a", "image": "one.png"},
                                     {"sku": "b", "image": "one.png"}])
    plan = json.loads(run_cli("plan", str(path), "--json", env=env(folder, server)).out)
    assert (plan["new"], plan["done"], plan["changed"]) == (1, 1, 0)
    size = (folder / "one.png").stat().st_size
    assert plan["uploads"] == {"files": 1, "bytes": size, "web": 0, "uploaded": 1,
                               "to_upload": 0, "bytes_to_upload": 0, "failed": 0,
                               "items": [{"source": str(folder / "one.png"), "size": size,
                                          "state": "uploaded"}]}
    res = run(run_cli, path, server)
    assert res.code == 0, res.text
    (url_after,) = ledger_rows(ledger, "SELECT url FROM uploads")[0]
    assert url_after != url_before and len(server.emulator.assets) == 1
    keys_after = ledger_rows(ledger, "SELECT key, inputs FROM jobs")
    assert set(keys_before) < set(keys_after) and len(keys_after) == 2
    assert all("asset:sha256:" in inputs for _, inputs in keys_after)
    (new_run,) = [r for r in server.emulator.runs.values()
                  if r.idempotency_key not in {k for k, _ in keys_before}]
    assert [i.value for i in new_run.inputs] == [url_after]


def test_plan_status_and_report_show_the_uploads(emulator, run_cli, tmp_path: Path):
    """plan counts files and bytes to upload; status and report show them after the run."""
    server = emulator()
    batch = mixed_batch(tmp_path / "b")
    e = env(batch.folder, server)
    plan = run_cli("plan", str(batch.manifest), env=e)
    assert plan.code == 0, plan.text
    assert "uploads 6 input file(s) (" in plan.out and "2 from the web" in plan.out
    assert "0 already uploaded, 6 to upload" in plan.out
    assert paid_requests(server) == 0
    assert run(run_cli, batch.manifest, server).code == 0
    data = json.loads(run_cli("plan", str(batch.manifest), "--json", env=e).out)
    assert (data["uploads"]["uploaded"], data["uploads"]["to_upload"]) == (6, 0)
    status = run_cli("status", str(batch.manifest), env=e)
    assert "uploads  6 input files: 6 ready" in status.out, status.text
    as_json = json.loads(run_cli("status", str(batch.manifest), "--json", env=e).out)
    assert as_json["uploads"] == {"ready": 6}
    report = run_cli("report", str(batch.manifest), env=e)
    assert report.code == 0, report.text
    table = (batch.folder / "results" / "_report" / "uploads.csv").read_text(encoding="utf-8-sig")
    assert table.count("\n") == 7 and WEB[0] in table and "huge.png" in table
    sidecar = json.loads(next((batch.folder / "results" / "A").glob("*.json")).read_text())
    assert sidecar["inputs"]["product"].startswith("asset:sha256:")
    assert sidecar["uploaded_inputs"]["product"]["url"].startswith("https://media.flora.ai/")


def test_readme_local_files_section_runs_verbatim(tmp_path: Path):
    """The README's "Local files as inputs" commands work as written."""
    import os
    import re

    from e2e_helpers import REPO

    readme = (REPO / "README.md").read_text()
    script = re.search(r"```bash\n(.*?)```", readme.split("## Local files as inputs")[1], re.S)
    assert script is not None
    bin_dir = Path(os.sys.executable).parent
    user = env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script.group(1)], cwd=tmp_path,
                          env=user, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "uploads 3 input file(s) (" in done.stdout and "3 to upload" in done.stdout
    assert done.stdout.count("6 of 6 jobs done") == 2
    assert "uploads 3 input file(s): 3 uploaded now" in done.stdout


def test_workspace_precedence_flag_env_manifest_config(emulator, run_cli, tmp_path: Path):
    """Flag/env beat the manifest, which beats the config file; a refused workspace exits 3."""
    server = emulator()
    folder = tmp_path / "b"
    image(folder / "one.png", seed=4)
    write_rows(folder / "rows.csv", [{"sku": "a", "image": "one.png"}])
    config = folder / "xdg" / "flora-batch" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('workspace_id = "ws_from_config"\n')
    path = manifest(folder)  # assets.workspace_id: ws_emulator
    assert run(run_cli, path, server).code == 0  # the manifest beats the config file
    write_rows(folder / "rows.csv", [{"sku": "b", "image": "one.png"}])
    path = manifest(folder, techniques=("palette-pull",))
    res = run(run_cli, path, server, FLORA_WORKSPACE_ID="ws_not_mine")
    assert res.code == 3, res.text  # the environment beats the manifest: FLORA says 403
    assert "no access to this workspace" in res.text
    assert run_creates(server) == 1
    bare = manifest(folder, techniques=("palette-pull",), assets=None)
    config.write_text('workspace_id = "ws_emulator"\n')
    assert run(run_cli, bare, server).code == 0  # the config file, when nothing else says
    csv_mode = run_cli("run", str(folder / "rows.csv"), "--technique", "studio-shot",
                       "--input", "product=image", "--workspace-id", "ws_emulator", *FAST,
                       env=env(folder, server))
    assert csv_mode.code == 0, csv_mode.text
    # Creates: ws_emulator, the refused ws_not_mine, ws_emulator again (attempt 3: a row holds
    # one workspace's asset), and the CSV batch's own ledger, whose attempt-1 key is the first
    # run's: FLORA hands back that asset, so two assets in all.
    assert asset_creates(server) == 4 and len(server.emulator.assets) == 2
