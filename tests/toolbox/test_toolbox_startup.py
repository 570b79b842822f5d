"""Start-up: `--help`, `--version` and `run --help` import nothing a command does not need
(bench/startup.py measures what that costs; no timing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
from e2e_helpers import cli_env

#: Heavy libraries and our own heavy stages: imported when a command runs, never for help.
HEAVY = (
    "sqlalchemy",
    "alembic",
    "aiohttp",
    "httpx",
    "yaml",
    "pandas",
    "numpy",
    "pyarrow",
    "av",
    "PIL",
    "openpyxl",
    "starlette",
    "uvicorn",
    "tenacity",
    "asyncio",
    "flora_batch.pipeline",
    "flora_batch.ledger",
    "flora_batch.remote",
    "flora_batch.worker",
    "flora_batch.manifest",
    "flora_batch.emulator",
    "flora_batch.cluster",
    "flora_batch.report",
)
PROBE = """
import json, sys
sys.argv = ["flora-batch", *sys.argv[1:]]
from flora_batch.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _imported(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [("--help",), ("--version",), ("run", "--help"), ("status", "--help"), ("worker", "--help")],
)
def test_help_and_version_import_nothing_heavy(args: tuple[str, ...]):
    """No database, HTTP, YAML, dataframe or emulator module is imported to print help."""
    loaded = _imported(*args)
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"flora-batch {' '.join(args)} imported {heavy[:12]}"


def test_version_is_the_installed_package_version(run_cli):
    """`flora-batch --version` prints the version pip installed: the wheel's metadata and
    the CLI read the one number in flora_batch/_version.py."""
    res = run_cli("--version")
    assert res.code == 0
    assert res.out.strip() == f"flora-batch, version {metadata.version('flora-batch')}"


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("run", "--help")])
def test_help_and_version_do_not_import_package_metadata(args: tuple[str, ...]):
    """importlib.metadata alone costs `--version` about 18 ms (docs/performance.md §7)."""
    assert "importlib.metadata" not in _imported(*args)


async def test_user_agent_names_the_installed_version():
    """Every request says `flora-batch/<installed version>`, not a hard-coded one."""
    import httpx

    from flora_batch.errors import NotFound
    from flora_batch.remote.client import FloraClient

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["user-agent"])
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})

    async with FloraClient(
        "https://app.flora.ai/api/v1", "sk_test_abcd", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(NotFound):
            await client.get_technique("nope")
    assert seen and set(seen) == {f"flora-batch/{metadata.version('flora-batch')}"}
