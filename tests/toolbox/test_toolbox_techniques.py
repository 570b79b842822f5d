"""`flora-batch techniques` and `techniques show` against the emulator and a 404ing list."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from toolbox_helpers import as_json, env

from flora_batch.cli.techniques import seed_techniques
from flora_batch.emulator.catalog import load_catalog


class _NoList(BaseHTTPRequestHandler):
    """A FLORA without the list endpoint: every request answers 404 in the error envelope."""

    def do_GET(self) -> None:
        body = json.dumps({"error": {"code": "not_found", "message": "no such route"}}).encode()
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def no_list_server() -> Iterator[str]:
    """A loopback server whose every route answers 404; yields its API base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoList)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    server.shutdown()
    server.server_close()


def test_list_uses_the_list_endpoint(emulator, run_cli, tmp_path: Path):
    """`techniques --json` lists every technique from the API, with its cost, as plain JSON."""
    server = emulator()
    data = as_json(run_cli("techniques", "--json", env=env(tmp_path, server)))
    assert data["source"] == "api"
    assert len(data["techniques"]) == len(load_catalog())  # 38 seed + the emulator's extras
    shot = next(t for t in data["techniques"] if t["slug"] == "studio-shot")
    assert shot == {
        "slug": "studio-shot", "name": "Studio Shot", "run_cost": 0.06, "cost_unit": "usd",
        "description": shot["description"],
    }
    assert server.emulator.request_counts["GET /api/v1/techniques"] == 1


def test_list_falls_back_to_the_seed_document_on_404(no_list_server, run_cli, tmp_path: Path):
    """When the list endpoint answers 404, the 38 seed techniques are listed (without costs)."""
    key = {"FLORA_API_KEY": "sk_test_emulator", "FLORA_BASE_URL": no_list_server}
    res = run_cli("techniques", "--json", env=env(tmp_path, **key))
    assert res.code == 0, res.text
    data = as_json(res)
    assert data["source"] == "seed"
    assert [t["slug"] for t in data["techniques"]] == [t.slug for t in seed_techniques()]
    assert all(t["run_cost"] is None for t in data["techniques"])
    text = run_cli("techniques", env=env(tmp_path, **key))
    assert text.code == 0 and "seed document" in text.out and "studio-shot" in text.out


def test_seed_file_holds_the_38_catalog_techniques():
    """The shipped seed list has the slug, name and description of each of the 38 techniques."""
    catalog = {t.slug: t for t in load_catalog().seed}
    seed = seed_techniques()
    assert len(seed) == 38
    assert {t.slug: (t.name, t.description) for t in seed} == {
        s: (t.name, t.description) for s, t in catalog.items()
    }


@pytest.mark.parametrize("order", [("techniques", "show", "studio-shot", "--demo", "--json"),
                                   ("techniques", "--demo", "--json", "show", "studio-shot")])
def test_show_json_is_plain_data(order, run_cli, tmp_path: Path):
    """`show --json` gives each input's id, type, required flag and constraints (no reprs)."""
    data = as_json(run_cli(*order, env=env(tmp_path)))
    assert data["slug"] == "studio-shot" and data["run_cost"] == 0.06
    product, backdrop = data["inputs"]
    assert product["id"] == "product" and product["type"] == "imageUrl"
    assert product["required"] is True and backdrop["required"] is False
    assert any("media.flora.ai" in c for c in product["constraints"])
    assert data["outputs"][0]["aspect_ratio"] == "1:1"
    assert "IOSlot(" not in json.dumps(data)


def test_show_text_lists_inputs_outputs_and_cost(run_cli, tmp_path: Path):
    """`show` prints each input with required/optional and constraints, the outputs and cost."""
    res = run_cli("techniques", "show", "studio-shot", "--demo", env=env(tmp_path))
    assert res.code == 0, res.text
    assert "$0.06 per run" in res.out
    assert "product" in res.out and "required" in res.out and "optional" in res.out
    assert "Outputs:" in res.out and "aspect ratio 1:1" in res.out


def test_show_unknown_slug_is_a_usage_error(run_cli, tmp_path: Path):
    """An unknown slug exits 2 and suggests the closest technique."""
    res = run_cli("techniques", "show", "studio-shoot", "--demo", env=env(tmp_path))
    assert res.code == 2
    assert "did you mean 'studio-shot'" in res.err
