"""Packaging: the wheel holds every module (a .gitignore line once left one out), and an
extra that is not installed is a clear message, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from e2e_helpers import REPO
from toolbox_helpers import env

#: Run the real CLI with these top-level modules unimportable (as if never installed).
WITHOUT = """
import sys
for name in sys.argv.pop(1).split(","):
    sys.modules[name] = None  # `import name` now raises ImportError
sys.argv[0] = "flora-batch"
from flora_batch.cli import main
main()
"""


def test_the_wheel_holds_every_module_and_the_license(tmp_path: Path):
    """Every tracked flora_batch file, the migrations and LICENSE are in the built wheel."""
    builders = pytest.importorskip("hatchling.builders.wheel", reason="the [test] extra has it")
    wheel = next(iter(builders.WheelBuilder(str(REPO)).build(directory=str(tmp_path))))
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "flora_batch"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    missing = [p for p in tracked if p not in names]
    assert missing == []
    assert any(n.startswith("flora_batch/_migrations/versions/") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_a_parquet_rows_file_without_pyarrow_names_the_extra(run_cli, tmp_path: Path):
    """No pyarrow: `plan rows.parquet` exits 2 at the file, naming flora-batch[parquet]."""
    import pandas as pd

    rows = tmp_path / "rows.parquet"
    pd.DataFrame({"image_url": ["https://media.flora.ai/t/a.jpg"]}).to_parquet(rows)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT,
            "pyarrow",
            "plan",
            str(rows),
            "--technique",
            "studio-shot",
            "--input",
            "product=image_url",
            "--demo",
        ],
        capture_output=True,
        text=True,
        env=env(tmp_path),
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{rows}: reading Parquet needs pyarrow" in done.stderr
    assert "pip install 'flora-batch[parquet]'" in done.stderr
    assert "Traceback" not in done.stderr
