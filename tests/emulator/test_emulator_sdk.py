"""FLORA's official TypeScript SDK (``@flora-ai/flora``) works against the emulator.

The SDK is installed once with ``npm ci`` into ``tests/emulator/sdk/node_modules`` (git
ignored) from the committed ``package.json`` / ``package-lock.json``; the committed
``check.mjs`` then drives it against an emulator on a real socket and prints JSON.
Skipped, with the reason, when ``node``/``npm`` are missing or the install fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flora_batch.emulator import EmulatorConfig, load_catalog
from flora_batch.emulator.serve import start_server

SDK_DIR = Path(__file__).parent / "sdk"
SDK_PACKAGE = SDK_DIR / "node_modules" / "@flora-ai" / "flora" / "package.json"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to run FLORA's TypeScript SDK",
)


def _locked_version() -> str:
    lock = json.loads((SDK_DIR / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/@flora-ai/flora"]["version"])


def _installed_version() -> str | None:
    if not SDK_PACKAGE.exists():
        return None
    return str(json.loads(SDK_PACKAGE.read_text())["version"])


@pytest.fixture(scope="module")
def sdk_installed() -> None:
    """``npm ci`` the locked SDK unless that exact version is already installed."""
    if _installed_version() == _locked_version():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or _installed_version() != _locked_version():
        pytest.skip(f"could not install @flora-ai/flora with npm ci: {result.stderr[-500:]}")


def _run_check(base_url: str, api_key: str) -> dict[str, Any]:
    env = {**os.environ, "FLORA_BASE_URL": base_url, "FLORA_API_KEY": api_key}
    result = subprocess.run(
        ["node", "check.mjs"], cwd=SDK_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def test_typescript_sdk_against_the_emulator(sdk_installed: None) -> None:
    """Retrieve, list, create, poll to completion, list runs, and typed errors via the SDK."""
    with start_server(EmulatorConfig(speed=2000)) as server:
        out = _run_check(server.base_url, server.api_key)
        charges = server.emulator.charges_by_key()
    assert out["technique"] == {
        "technique_id": "tech_cctv-cam",
        "run_cost": 0.05,
        "inputs": ["face"],
    }
    assert out["listedTechniques"] == len(load_catalog())
    assert out["created"]["status"] == "pending"
    assert out["created"]["poll_url"].startswith(server.base_url)
    assert out["run"] == {"status": "completed", "progress": 100, "outputs": ["imageUrl"]}
    assert out["genericStatus"] == "completed"
    assert out["history"] == [{"id": out["created"]["run_id"], "technique": "tech_cctv-cam"}]
    errors = out["errors"]
    assert errors["badKey"]["name"] == "AuthenticationError"
    assert (errors["badKey"]["status"], errors["badKey"]["code"]) == (401, "invalid_api_key")
    assert errors["badInput"]["name"] == "BadRequestError"
    assert errors["badInput"]["code"] == "input_validation_error"
    assert errors["badInput"]["fields"] == ["face"]
    assert errors["unknownSlug"]["name"] == "NotFoundError"
    assert (errors["unknownSlug"]["status"], errors["unknownSlug"]["code"]) == (404, "not_found")
    assert all(e["isAPIError"] and e["requestId"].startswith("req_") for e in errors.values())
    assert charges == {"sdk-check-1": 1}
