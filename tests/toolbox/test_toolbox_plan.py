"""`flora-batch plan`: validation, job counts against the ledger, cost against max_cost."""

from __future__ import annotations

from pathlib import Path

from toolbox_helpers import PRODUCTS, as_json, creates, env, run_batch, write_batch, write_csv


def test_plan_of_a_half_done_batch_counts_every_group(emulator, run_cli, tmp_path: Path):
    """After a run stopped at the cap with a failure, plan shows done/failed/in flight/changed."""
    server = emulator()
    server.emulator.inject("run_failure", times=1, code="provider_error")
    manifest = write_batch(tmp_path / "b", extra="max_cost: 0.19\nconcurrency: 1\n")
    assert run_batch(run_cli, manifest, server).code == 4
    edited = [dict(p) for p in PRODUCTS]
    edited[-1]["title"] = "a new title"
    write_csv(manifest.parent / "products.csv", edited)
    before = creates(server)
    data = as_json(run_cli("plan", str(manifest), "--json", env=env(tmp_path, server)))
    assert creates(server) == before
    assert (data["jobs"], data["done"], data["failed"]) == (6, 2, 1)
    assert (data["new"], data["in_flight"], data["changed"]) == (1, 2, 1)
    assert data["cost_by_technique"] == {"studio-shot": 0.18}
    assert data["spent"] > 0 and data["max_cost"] == 0.19 and data["over_budget"] is True
    assert data["results"] == str(manifest.parent / "results")
    text = run_cli("plan", str(manifest), env=env(tmp_path, server))
    assert text.code == 4
    assert "2 done, 2 in flight, 1 failed, 1 changed" in text.out
    assert "Over budget" in text.out and "spent before" in text.out


def test_plan_reports_every_problem_at_once_and_buys_nothing(emulator, run_cli, tmp_path: Path):
    """Two bad rows and a bad column are all reported; exit 2; the emulator sees no create."""
    server = emulator()
    rows = [dict(p) for p in PRODUCTS]
    rows[1]["image_url"] = "http://example.com/x.jpg"
    rows[3]["image_url"] = ""
    manifest = write_batch(tmp_path / "b", rows=rows)
    res = run_cli("plan", str(manifest), env=env(tmp_path, server))
    assert res.code == 2
    assert "products.csv:3" in res.err and "products.csv:5" in res.err
    assert "2 problem(s)" in res.err
    data = as_json(run_cli("plan", str(manifest), "--json", env=env(tmp_path, server)))
    assert len(data["problems"]) == 2
    assert creates(server) == 0


def test_plan_over_budget_exits_4_like_run(emulator, run_cli, tmp_path: Path):
    """An estimate above max_cost exits 4 (run would stop at the cap) and buys nothing."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", extra="max_cost: 0.10\n")
    res = run_cli("plan", str(manifest), env=env(tmp_path, server))
    assert res.code == 4, res.text
    assert "estimated cost $0.36 (max_cost $0.10)" in res.out
    assert "studio-shot: $0.36" in res.out and str(manifest.parent / "results") in res.out
    assert creates(server) == 0
    assert not (manifest.parent / "shop.ledger.db").exists()


def test_plan_in_budget_exits_0(emulator, run_cli, tmp_path: Path):
    """A valid batch within budget plans with exit 0 and every job new."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", extra="max_cost: 1.00\n")
    data = as_json(run_cli("plan", str(manifest), "--json", env=env(tmp_path, server)))
    assert (data["jobs"], data["new"], data["over_budget"]) == (6, 6, False)
    assert creates(server) == 0
