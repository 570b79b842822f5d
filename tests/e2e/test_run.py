"""`flora-batch run` through the real CLI (a subprocess) against the emulator on a socket."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from e2e_helpers import FAST, cli_cmd, cli_env, wait_for

PRODUCTS = [
    {
        "sku": f"SKU-{i:03d}",
        "title": f"Ceramic mug {i}",
        "image_url": f"https://media.flora.ai/demo/mug-{i}.jpg",
    }
    for i in range(1, 9)
]


def write_batch(
    folder: Path,
    rows: list[dict[str, str]] | None = None,
    *,
    name: str = "mugs",
    rows_file: str = "products.csv",
    extra: str = "",
) -> Path:
    """A manifest over a CSV of products, through studio-shot."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows or PRODUCTS)
    target = folder / rows_file
    suffix = target.suffix
    if suffix == ".csv":
        frame.to_csv(target, index=False)
    elif suffix == ".xlsx":
        frame.to_excel(target, index=False)
    elif suffix == ".jsonl":
        frame.to_json(target, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(target, index=False)
    manifest = folder / f"{name}.yaml"
    manifest.write_text(
        f"name: {name}\n"
        "technique: studio-shot\n"
        f"rows: {rows_file}\n"
        "id: sku\n"
        "inputs:\n"
        '  product: "{image_url}"\n'
        '  backdrop: "seamless paper behind {title}"\n'
        "output:\n"
        "  dir: results\n"
        '  name: "{sku}/{technique}-{output_id}{ext}"\n' + extra
    )
    return manifest


def charges(server: Any) -> dict[str, int]:
    """Charges per idempotency key, from the emulator's own record."""
    return dict(server.emulator.charges_by_key())


def creates(server: Any) -> int:
    counts = server.emulator.request_counts
    return sum(v for k, v in counts.items() if k.startswith("POST") and "runs" in k)


def test_batch_runs_to_the_end_and_every_job_is_charged_once(emulator, run_cli, tmp_path):
    """A fresh batch finishes with exit 0, one file per row, one charge per job."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 0, res.text
    files = sorted((tmp_path / "b" / "results").rglob("*.png"))
    assert len(files) == len(PRODUCTS)
    assert (tmp_path / "b" / "results" / "SKU-001" / "studio-shot-output_1.png").is_file()
    assert sorted(charges(server).values()) == [1] * len(PRODUCTS)
    assert "8 of 8 jobs done" in res.out
    assert not list((tmp_path / "b" / "results" / ".flora-tmp").iterdir())


def test_second_run_buys_nothing(emulator, run_cli, tmp_path):
    """Re-running a finished batch sends no create at all."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    assert run_cli("run", str(manifest), *FAST, server=server).code == 0
    before = creates(server)
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 0, res.text
    assert creates(server) == before


def test_reordered_rows_change_no_job(emulator, run_cli, tmp_path):
    """Reordering rows and editing an unrelated column creates no new job."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    assert run_cli("run", str(manifest), *FAST, server=server).code == 0
    shuffled = [dict(r, note="edited") for r in reversed(PRODUCTS)]
    write_batch(tmp_path / "b", shuffled)
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 0, res.text
    assert len(charges(server)) == len(PRODUCTS)


def test_edited_row_makes_one_new_job(emulator, run_cli, tmp_path):
    """Editing one row's inputs buys exactly one new run; plan says it changed."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    assert run_cli("run", str(manifest), *FAST, server=server).code == 0
    edited = [dict(r) for r in PRODUCTS]
    edited[2]["title"] = "Stoneware mug"
    write_batch(tmp_path / "b", edited)
    plan = run_cli("plan", str(manifest), "--json", server=server)
    assert plan.code == 0, plan.text
    data = json.loads(plan.out)
    assert data["new"] == 1 and data["changed"] == 1
    assert run_cli("run", str(manifest), *FAST, server=server).code == 0
    assert len(charges(server)) == len(PRODUCTS) + 1


@pytest.mark.parametrize(
    "rows_file", ["products.csv", "products.xlsx", "products.jsonl", "products.parquet"]
)
def test_all_four_row_formats(emulator, run_cli, tmp_path, rows_file):
    """CSV, XLSX, JSONL and Parquet rows all run to the same files."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", PRODUCTS[:3], rows_file=rows_file)
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 0, res.text
    assert len(list((tmp_path / "b" / "results").rglob("*.png"))) == 3


@pytest.mark.parametrize(("dialect", "status"), [("snake", 201), ("camel", 200)])
def test_both_api_dialects(emulator, run_cli, tmp_path, dialect, status):
    """The snake_case/USD and camelCase/credits dialects both run to the end."""
    server = emulator(dialect=dialect, create_status=status)
    manifest = write_batch(tmp_path / "b", PRODUCTS[:3])
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 0, res.text
    assert len(list((tmp_path / "b" / "results").rglob("*.png"))) == 3
    assert sorted(charges(server).values()) == [1, 1, 1]


def test_invalid_rows_are_all_reported_and_nothing_is_spent(emulator, run_cli, tmp_path):
    """Bad rows give exit 2 with file:line:column for each, and not one create."""
    server = emulator()
    rows = [dict(r) for r in PRODUCTS[:4]]
    rows[1]["image_url"] = "http://media.flora.ai/insecure.jpg"
    rows[3]["image_url"] = "https://example.com/not-allowed.jpg"
    manifest = write_batch(tmp_path / "b", rows)
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 2, res.text
    assert "products.csv:3:image_url" in res.err
    assert "products.csv:5:image_url" in res.err
    assert "Traceback" not in res.text
    assert creates(server) == 0


def test_skip_invalid_runs_the_valid_rows(emulator, run_cli, tmp_path):
    """--skip-invalid buys only the valid rows and lists the skipped ones."""
    server = emulator()
    rows = [dict(r) for r in PRODUCTS[:3]]
    rows[1]["image_url"] = "ftp://nope"
    manifest = write_batch(tmp_path / "b", rows)
    res = run_cli("run", str(manifest), *FAST, "--skip-invalid", server=server)
    assert res.code == 0, res.text
    assert "skipped" in res.out
    assert len(charges(server)) == 2


def test_unknown_technique_is_a_manifest_error(emulator, run_cli, tmp_path):
    """A slug FLORA does not know is exit 2 at the manifest line, nothing spent."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    manifest.write_text(manifest.read_text().replace("studio-shot", "studio-shoot"))
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 2, res.text
    assert "studio-shoot" in res.err and "Traceback" not in res.text


def test_missing_key_is_a_clear_error(run_cli, tmp_path):
    """No FLORA_API_KEY: exit 2 and a message that says what to do."""
    manifest = write_batch(tmp_path / "b")
    res = run_cli("run", str(manifest), env=cli_env())
    assert res.code == 2
    assert "FLORA_API_KEY" in res.err and "Traceback" not in res.text


def test_budget_cap_stops_new_runs_with_exit_4(emulator, run_cli, tmp_path):
    """max_cost admits only what it covers; the rest waits, exit 4."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", extra="max_cost: 0.20\n")  # studio-shot is $0.06
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 4, res.text
    assert len(charges(server)) == 3
    assert server.emulator.total_charged() <= 0.20 + 1e-9


def test_out_of_credits_stops_with_exit_3_and_resumes(emulator, run_cli, tmp_path):
    """A 402 stops new submissions (exit 3); after a top-up the same command finishes."""
    server = emulator(balance=0.13)
    manifest = write_batch(tmp_path / "b", PRODUCTS[:4])
    res = run_cli("run", str(manifest), *FAST, "--concurrency", "1", server=server)
    assert res.code == 3, res.text
    assert "credits" in res.err
    assert len(charges(server)) == 2
    server.emulator.balance = 10.0
    res = run_cli("run", str(manifest), *FAST, server=server)
    assert res.code == 0, res.text
    assert sorted(charges(server).values()) == [1, 1, 1, 1]


def test_bad_key_stops_with_exit_3(emulator, run_cli, tmp_path):
    """A key FLORA refuses: exit 3, the message never shows the key."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    env = cli_env(server, FLORA_API_KEY="sk_live_wrongwrongwrong")
    res = run_cli("run", str(manifest), *FAST, env=env)
    assert res.code in (2, 3), res.text
    assert "sk_live_wrongwrongwrong" not in res.text


def test_unknown_http_stack_stops_before_any_ledger_exists(emulator, run_cli, tmp_path):
    """FLORA_BATCH_HTTP=curl: exit 2 naming the variable, no traceback, no ledger, no lock."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    res = run_cli("run", str(manifest), *FAST, env=cli_env(server, FLORA_BATCH_HTTP="curl"))
    assert res.code == 2, res.text
    assert "FLORA_BATCH_HTTP" in res.text and "Traceback" not in res.text
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["mugs.yaml", "products.csv"]
    assert sum(server.emulator.request_counts.values()) == 0


def test_sigint_then_rerun_finishes_without_paying_twice(emulator, tmp_path):
    """Ctrl-C mid-batch exits 130; the same command finishes; each job charged once."""
    server = emulator(speed=20.0)  # studio-shot takes ~1.5 s: runs are in flight when we stop
    manifest = write_batch(tmp_path / "b")
    cmd = cli_cmd("run", str(manifest), "--min-poll", "0.2", "--concurrency", "4")
    proc = subprocess.Popen(
        cmd, env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: creates(server) >= 2, timeout=30)
    proc.send_signal(2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "run the same command" in err
    started = len(charges(server))
    assert 0 < started < len(PRODUCTS)
    res = subprocess.run(cmd, env=cli_env(server), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(charges(server).values()) == [1] * len(PRODUCTS)


def test_second_runner_on_the_same_ledger_exits_5(emulator, tmp_path):
    """While one run holds the ledger, another exits 5 at once and touches nothing."""
    server = emulator(speed=5.0)
    manifest = write_batch(tmp_path / "b", PRODUCTS[:2])
    cmd = cli_cmd("run", str(manifest), "--min-poll", "0.5")
    first = subprocess.Popen(
        cmd, env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: creates(server) >= 1, timeout=30)
        t0 = time.monotonic()
        second = subprocess.run(
            cmd, env=cli_env(server), capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 5, second.stdout + second.stderr
        assert time.monotonic() - t0 < 20
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(2)
        first.communicate(timeout=60)


def test_csv_alone_with_technique_and_input_flags(emulator, run_cli, tmp_path):
    """`run rows.csv --technique studio-shot --input product=image_url` works without a manifest."""
    server = emulator()
    folder = tmp_path / "quick"
    folder.mkdir()
    pd.DataFrame(PRODUCTS[:2]).to_csv(folder / "rows.csv", index=False)
    res = run_cli(
        "run",
        str(folder / "rows.csv"),
        "--technique",
        "studio-shot",
        "--input",
        "product=image_url",
        "--results",
        str(folder / "out"),
        *FAST,
        server=server,
    )
    assert res.code == 0, res.text
    assert len(list((folder / "out").rglob("*.png"))) == 2


def test_demo_runs_with_no_key_and_no_network(run_cli, workdir):
    """The README's demo: a local FLORA, a finished batch, where the results are."""
    res = run_cli("run", str(workdir / "demo.yaml"), "--demo", env=cli_env(), timeout=180)
    assert res.code == 0, res.text
    assert "results" in res.out and "spent" in res.out
    assert list((workdir / "results" / "demo").rglob("*.png"))
