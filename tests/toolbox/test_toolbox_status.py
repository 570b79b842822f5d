"""`flora-batch status`: states, money, pace, failures by code, --watch, from the ledger alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import FAST, cli_cmd, wait_for
from toolbox_helpers import PRODUCTS, as_json, env, run_batch, write_batch

from flora_batch.emulator import FaultPlan
from flora_batch.ledger import Ledger
from flora_batch.report.status import WINDOW, compute, lines, throughput
from flora_batch.types import JobKey, JobRecord, JobState


def test_status_of_a_half_done_batch(emulator, run_cli, tmp_path: Path):
    """A batch stopped at max_cost shows done and waiting jobs and the money the ledger holds."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", extra="max_cost: 0.13\n")
    assert run_batch(run_cli, manifest, server).code == 4
    data = as_json(run_cli("status", str(manifest), "--json", env=env(tmp_path)))
    ledger = Ledger.open(manifest.parent / "shop.ledger.db")
    try:
        counts, (spent, reserved) = ledger.counts("shop"), ledger.money("shop")
    finally:
        ledger.close()
    assert data["states"] == {s.value: n for s, n in counts.items()}
    assert data["states"]["done"] == 2 and data["states"]["planned"] == 4
    assert data["total"] == 6 and data["finished"] is False
    assert data["spent"] == pytest.approx(spent) and data["reserved"] == pytest.approx(reserved)
    assert data["per_minute"] is not None and data["oldest_in_flight"] is None
    text = run_cli("status", str(manifest), env=env(tmp_path))
    assert text.code == 0
    assert "2 done · 4 planned" in text.out and "$0.12 spent" in text.out


def test_status_and_report_count_credits_for_a_credits_api(emulator, run_cli, tmp_path: Path):
    """Against FLORA's older dialect (costs in credits) status and the contact sheet say
    credits, as run's summary does, never dollars."""
    server = emulator(dialect="camel")
    manifest = write_batch(tmp_path / "b")
    assert run_batch(run_cli, manifest, server).code == 0
    data = as_json(run_cli("status", str(manifest), "--json", env=env(tmp_path)))
    assert data["cost_unit"] == "credits" and data["spent"] > 1
    text = run_cli("status", str(manifest), env=env(tmp_path))
    assert f"{data['spent']:,.0f} credits spent" in text.out and "$" not in text.out
    report = run_cli("report", str(manifest), env=env(tmp_path))
    assert report.code == 0, report.text
    html = (manifest.parent / "results" / "_report" / "index.html").read_text()
    assert "credits spent" in html and "$" not in html.split("<body", 1)[1]


def test_status_groups_failures_by_code_with_their_rows(emulator, run_cli, tmp_path: Path):
    """Every run failing: status lists each error code once, with the rows it hit."""
    server = emulator(faults=FaultPlan(run_failure=1.0, failure_codes=("provider_error",)))
    manifest = write_batch(tmp_path / "b")
    assert run_batch(run_cli, manifest, server).code == 1
    data = as_json(run_cli("status", str(manifest), "--json", env=env(tmp_path)))
    assert data["finished"] is True and data["states"]["failed"] == 6
    [group] = data["failures"]
    assert group["code"] == "provider_error" and group["count"] == 6
    assert "SKU-007 (" in group["rows"][0] and "products.csv:2" in group["rows"][0]
    text = run_cli("status", "--ledger", str(manifest.parent / "shop.ledger.db"), env=env(tmp_path))
    assert "provider_error x6" in text.out and "SKU-002" in text.out


def test_status_watch_follows_a_run_to_the_end(emulator, run_cli, tmp_path: Path):
    """--watch --json prints a line per refresh while the run goes, and stops once all finish."""
    server = emulator()
    rows = [{**p, "sku": f"{p['sku']}-{n}"} for n in range(2) for p in PRODUCTS]
    manifest = write_batch(tmp_path / "b", rows=rows)
    ledger = manifest.parent / "shop.ledger.db"
    command = cli_cmd("run", str(manifest), *FAST, "--rate", "1")  # ~12 s: outlasts a CLI start
    run = subprocess.Popen(command, env=env(tmp_path, server),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ledger.exists)
        watch = run_cli("status", str(manifest), "--watch", "--json", "--interval", "0.2",
                        env=env(tmp_path), timeout=120)
    finally:
        assert run.wait(timeout=120) == 0
    snapshots = [json.loads(line) for line in watch.out.splitlines()]
    assert watch.code == 0 and len(snapshots) >= 2
    assert snapshots[-1]["finished"] is True and snapshots[-1]["states"]["done"] == 12
    assert any(not s["finished"] for s in snapshots[:-1])


def test_status_needs_a_ledger(run_cli, tmp_path: Path):
    """Without MANIFEST or --ledger, or with no ledger yet, status exits 2 and creates nothing."""
    assert run_cli("status", env=env(tmp_path)).code == 2
    manifest = write_batch(tmp_path / "b")
    res = run_cli("status", str(manifest), env=env(tmp_path))
    assert res.code == 2 and "nothing has run yet" in res.err
    assert not (manifest.parent / "shop.ledger.db").exists()


def _events(*moves: tuple[str, str, float]) -> list[dict[str, object]]:
    return [{"job_key": k, "to_state": s, "at": t} for k, s, t in moves]


def test_throughput_and_eta_from_event_times():
    """Two jobs finished in 60 s since the first send: 2/min, and 4 left take 2 minutes."""
    events = _events(("a", "submitting", 1000.0), ("a", "done", 1030.0), ("b", "failed", 1060.0))
    per_minute, eta = throughput(events, remaining=4, now=1060.0)
    assert per_minute == pytest.approx(2.0) and eta == pytest.approx(120.0)


def test_throughput_only_counts_the_recent_window():
    """Finishes older than the window do not count; with nothing left the ETA is zero."""
    old = _events(("a", "submitting", 0.0), ("a", "done", 10.0))
    assert throughput(old, remaining=3, now=10.0 + 2 * WINDOW) == (0.0, None)
    assert throughput(old, remaining=0, now=5000.0)[1] == 0.0
    assert throughput(_events(("a", "planned", 1.0)), remaining=1, now=2.0) == (None, None)


def test_jobs_of_edited_rows_are_counted_apart_and_are_not_the_rows_failures():
    """Superseded jobs (``Plan.gone()``) leave the rows' counts and failures; one still in
    flight keeps the batch unfinished and says the next run finishes it."""
    def job(key: str, state: JobState) -> JobRecord:
        return JobRecord(
            key=JobKey(key), idempotency_key=key, batch="b", technique="t", row_index=0,
            row_id="a", state=state, inputs=(), row={}, output_name="", error_code="boom",
        )

    records = [job("new", JobState.DONE), job("1", JobState.FAILED), job("2", JobState.RUNNING)]
    status = compute("l.db", records, [], (0.0, 0.0), 10.0, superseded=frozenset({"1", "2"}))
    assert status.total == 1 and status.counts[JobState.DONE] == 1
    assert status.failures == () and status.in_flight == 1 and not status.finished
    assert status.as_dict()["superseded"] == {"failed": 1, "running": 1}
    assert (
        "  superseded  1 failed · 1 running (jobs of edited or removed rows; 1 in flight: "
        "the next run finishes them)"
    ) in lines(status)
