"""The emulator on a real socket (uvicorn via ``start_server``) and the ``emulator`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from flora_batch.emulator import EmulatorConfig
from flora_batch.emulator.serve import ServerHandle, start_server


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    """A fast emulator on 127.0.0.1 and a free port."""
    with start_server(EmulatorConfig(speed=2000)) as handle:
        yield handle


def test_full_flow_over_a_socket(server: ServerHandle) -> None:
    """Create, poll via poll_url, download; drops and truncations break the socket for real."""
    assert server.base_url.startswith("http://127.0.0.1:") and server.port > 0
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {
        "inputs": [{"id": "face", "type": "imageUrl", "value": "https://media.flora.ai/a.png"}],
        "mode": "async",
        "idempotency_key": "k",
    }
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=5) as c:
        server.emulator.inject("drop_after_create")
        with pytest.raises(httpx.RemoteProtocolError):
            c.post("/techniques/cctv-cam/runs", json=body)
        created = c.post("/techniques/cctv-cam/runs", json=body)
        assert created.status_code == 200  # replayed: the dropped create made the run
        poll_url = created.json()["poll_url"]
        assert poll_url.startswith(server.base_url)
        deadline = time.monotonic() + 5
        while (run := c.get(poll_url).json())["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        url = run["outputs"][0]["url"]
        server.emulator.inject("truncate_media")
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(url)
        media = c.get(url)
    assert media.headers["content-type"] == "image/png"
    assert int(media.headers["content-length"]) == len(media.content)
    assert server.emulator.charges_by_key() == {"k": 1}
    state = httpx.get(f"{server.origin}/_emulator/state").json()
    assert state["charges_by_key"] == {"k": 1}


def test_stop_frees_the_port() -> None:
    """After ``stop()`` the server no longer answers."""
    handle = start_server(EmulatorConfig())
    url = f"{handle.origin}/_emulator/state"
    assert httpx.get(url).status_code == 200
    handle.stop()
    assert not handle.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=1)


def test_start_server_reports_a_taken_port(server: ServerHandle) -> None:
    """Binding a port in use fails with a clear error instead of hanging."""
    with pytest.raises(RuntimeError, match="did not start"):
        start_server(EmulatorConfig(), port=server.port)


def _read_banner(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Press Ctrl-C"):
        line = proc.stdout.readline()
        assert line, f"command exited early: {lines}"
        lines.append(line.rstrip("\n"))
    return lines


def test_emulator_command_serves_until_ctrl_c() -> None:
    """``python -m flora_batch.emulator`` prints URL, key and a curl line; SIGINT exits 0."""
    command = [
        sys.executable,
        "-m",
        "flora_batch.emulator",
        "--port",
        "0",
        "--speed",
        "20",
        "--faults",
        "seed=3,slow=0",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        banner = _read_banner(proc)
        base_url = banner[0].rsplit(" ", 1)[-1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        assert banner[1] == "API key: sk_test_emulator"
        assert banner[2] == "Workspace: ws_emulator (set FLORA_WORKSPACE_ID=ws_emulator)"
        assert any(
            "curl" in line and "Authorization: Bearer sk_test_emulator" in line for line in banner
        )
        r = httpx.get(
            f"{base_url}/techniques/icon-pack", headers={"Authorization": "Bearer sk_test_emulator"}
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err and "Emulator stopped." in out


def test_emulator_command_rejects_bad_faults() -> None:
    """A bad ``--faults`` string is a usage error (exit 2), not a traceback."""
    from click.testing import CliRunner

    from flora_batch.emulator.serve import emulator_command

    result = CliRunner().invoke(emulator_command, ["--faults", "nonsense=1"])
    assert result.exit_code == 2
    assert "unknown fault setting" in result.output
