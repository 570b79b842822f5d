"""Untrusted responses: a compromised or buggy FLORA/CDN never crashes a batch, never gets
a file kept that is not what was bought, never reaches into the local network, and never
makes a job be bought twice.

The batches run in-process (``pipeline.run_batch``) against ``HostileFlora`` behind
``httpx.MockTransport``; one test drives the real CLI against it on a loopback socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from security_helpers import (
    FAST,
    PNG,
    HostileFlora,
    body,
    cli_env,
    completed,
    json_bytes,
    products,
    redirect,
    run_cli,
    serve,
    write_batch,
)

from flora_batch.config import Settings
from flora_batch.errors import ResponseRefused
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch
from flora_batch.remote.sniff import media_problem
from flora_batch.remote.url_policy import check_fetch_url, is_local
from flora_batch.types import JobState

BASE = "https://flora.test/api/v1"
CDN = "https://cdn.test"
GIF = b"GIF89a" + b"\x00" * 30
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 30
HTML = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"

pytestmark = pytest.mark.usefixtures("retry_fast")


async def go(tmp_path: Path, flora: HostileFlora, **settings: Any) -> BatchResult:
    """One row through studio-shot against ``flora``; fast polls, a short outage limit."""
    manifest = load_manifest(write_batch(tmp_path / "b", products(1)))
    defaults: dict[str, Any] = dict(
        min_poll=0.01, max_poll=0.05, submit_rate=0, outage_limit=3, timeout=1.0
    )
    s = Settings(base_url=BASE, api_key="sk_test_hostile", **{**defaults, **settings})
    return await run_batch(manifest, s, transport=flora.transport())


def saved(tmp_path: Path) -> list[Path]:
    """Every output file in the results folder (the temporary area excluded)."""
    root = tmp_path / "b" / "results"
    return [p for p in root.rglob("*") if p.is_file() and ".flora-tmp" not in p.parts]


def states(result: BatchResult) -> list[JobState]:
    """The batch's job states, read back from the ledger."""
    with Ledger.open(result.ledger_url) as ledger:
        return [job.state for job in ledger.jobs(batch="b")]


def refused(result: BatchResult, words: str) -> None:
    """The job is kept for a later run (paid, not lost) with ``words`` in its reason."""
    assert states(result) == [JobState.DOWNLOADING]
    assert any(words in line for line in result.outcome.stuck), result.outcome.stuck


# --- URLs and redirects ------------------------------------------------------------------


async def test_plain_http_output_url_is_never_fetched(tmp_path: Path) -> None:
    """An output URL on plain HTTP is refused before any request; the job is kept, not lost."""
    flora = HostileFlora(create=completed("http://cdn.test/a.png"))
    result = await go(tmp_path, flora)
    refused(result, "not HTTPS")
    assert flora.fetched == [] and saved(tmp_path) == [] and flora.creates == 1


async def test_redirect_down_to_plain_http_is_not_followed(tmp_path: Path) -> None:
    """An HTTPS output that redirects to http:// is refused at the redirect."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = redirect("http://cdn.test/b.png")
    flora.media["/b.png"] = body(PNG)
    result = await go(tmp_path, flora)
    refused(result, "not HTTPS")
    assert flora.fetched and set(flora.fetched) == {f"{CDN}/a.png"} and saved(tmp_path) == []


@pytest.mark.parametrize(
    "target",
    [
        "https://127.0.0.1/x.png",
        "https://localhost/x.png",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.7/x.png",
        "https://[::1]/x.png",
        "https://2130706433/x.png",
    ],
)
async def test_redirect_into_the_local_network_is_not_followed(tmp_path: Path, target: str) -> None:
    """A public output redirecting to loopback, private or metadata addresses is refused."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = redirect(target)
    result = await go(tmp_path, flora)
    refused(result, "not a public host")
    assert flora.fetched and set(flora.fetched) == {f"{CDN}/a.png"}


async def test_output_url_on_a_private_address_is_never_fetched(tmp_path: Path) -> None:
    """An output URL naming a private address (SSRF) is refused before any request."""
    flora = HostileFlora(create=completed("https://192.168.1.1/a.png"))
    result = await go(tmp_path, flora)
    refused(result, "not a public host")
    assert flora.fetched == []


async def test_https_redirect_is_followed(tmp_path: Path) -> None:
    """The control: an HTTPS redirect to another public host is followed and saved."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = redirect("https://cdn2.test/b.png")
    flora.media["/b.png"] = body(PNG)
    result = await go(tmp_path, flora)
    assert states(result) == [JobState.DONE]
    assert [p.read_bytes() for p in saved(tmp_path)] == [PNG]


async def test_redirect_loop_is_cut(tmp_path: Path) -> None:
    """A redirect loop ends after 5 hops with a clear reason, not a hang."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = redirect(f"{CDN}/a.png")
    result = await go(tmp_path, flora)
    refused(result, "too many redirects")


def test_url_rules() -> None:
    """check_fetch_url: HTTPS anywhere, HTTP only on loopback, no downgrade, no local hosts."""
    check_fetch_url("https://cdn.test/a.png", local_ok=False)
    check_fetch_url("http://127.0.0.1:9/a.png")
    for url, kw in [
        ("http://cdn.test/a.png", {}),
        ("ftp://cdn.test/a.png", {}),
        ("file:///etc/passwd", {}),
        ("http://127.0.0.1/a.png", {"previous": "https://cdn.test/a.png"}),
        ("https://0x7f.1/a.png", {"local_ok": False}),
        ("https://metadata.localhost/", {"local_ok": False}),
    ]:
        with pytest.raises(ResponseRefused):
            check_fetch_url(url, **kw)
    assert not is_local("cdn.test") and is_local("172.16.0.1") and is_local("fe80::1")


# --- size caps -----------------------------------------------------------------------------


async def test_declared_oversized_output_is_refused(tmp_path: Path) -> None:
    """A Content-Length over the cap is refused before the body is read."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = body(PNG + b"\x00" * 5000)
    result = await go(tmp_path, flora, max_download_bytes=1000)
    refused(result, "over the 1,000-byte cap")
    assert saved(tmp_path) == []


async def test_streamed_oversized_output_is_cut_off(tmp_path: Path) -> None:
    """A body with no Content-Length is cut off at the cap; nothing is kept."""

    async def endless() -> Any:
        yield PNG
        while True:
            yield b"\x00" * 65536

    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = lambda request: httpx.Response(
        200, content=endless(), headers={"content-type": "image/png"}
    )
    result = await go(tmp_path, flora, max_download_bytes=300_000)
    refused(result, "larger than the 300,000-byte cap")
    assert saved(tmp_path) == []
    assert not list((tmp_path / "b" / "results" / ".flora-tmp").iterdir())


def test_max_download_mb_flag_caps_a_real_run(tmp_path: Path) -> None:
    """`run --max-download-mb 1` refuses a 2 MiB output; without the flag it is saved."""
    flora = HostileFlora(create=completed(""))
    flora.media["/big.png"] = body(PNG + b"\x00" * (2 * 1024 * 1024))
    with serve(flora) as base:
        flora.create = completed(base.removesuffix("/api/v1") + "/big.png")
        env = {**cli_env(home=tmp_path), "FLORA_BASE_URL": base, "FLORA_API_KEY": "sk_test_x1234"}
        manifest = write_batch(tmp_path / "b", products(1))
        capped = run_cli("run", str(manifest), *FAST, "--max-download-mb", "1", env=env)
        assert capped.code == 1 and "over the 1,048,576-byte cap" in capped.text, capped.text
        assert not list((tmp_path / "b" / "results").rglob("*.png"))
        again = run_cli("run", str(manifest), *FAST, env=env)
    assert again.code == 0, again.text
    assert flora.creates == 1  # the second run downloaded the same run's output, nothing re-bought
    assert len(list((tmp_path / "b" / "results").rglob("*.png"))) == 1


# --- the body must be what the output type promises ----------------------------------------


@pytest.mark.parametrize(
    ("output_type", "content_type", "head", "ok"),
    [
        ("imageUrl", "image/png", PNG, True),
        ("imageUrl", "image/jpeg; charset=binary", b"\xff\xd8\xff\xe0" + b"\x00" * 20, True),
        ("imageUrl", "image/webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ", True),
        ("imageUrl", "application/octet-stream", PNG, True),
        ("imageUrl", None, GIF, True),
        ("imageUrl", "text/html", HTML, False),
        ("imageUrl", "image/png", HTML, False),
        ("imageUrl", "image/png", b"MZ\x90\x00 an executable", False),
        ("imageUrl", "application/octet-stream", b"#!/bin/sh\nrm -rf ~\n", False),
        ("imageUrl", "application/json", b'{"error": "expired"}', False),
        ("imageUrl", None, b"", False),
        ("videoUrl", "video/mp4", MP4, True),
        ("videoUrl", "image/gif", GIF, True),
        ("videoUrl", None, MP4, True),
        ("videoUrl", "image/png", PNG, False),
        ("videoUrl", "text/plain", b"hello", False),
        ("audioUrl", "audio/mpeg", b"ID3\x03", True),
        ("audioUrl", "text/html; charset=utf-8", b"<html>", False),
        ("documentUrl", "application/pdf", b"  \n<!doctype html>", False),
    ],
)
def test_media_kind_rules(
    output_type: str, content_type: str | None, head: bytes, ok: bool
) -> None:
    """media_problem accepts real media and refuses HTML, wrong types and wrong magic bytes."""
    assert (media_problem(output_type, content_type, head) is None) is ok


async def test_image_output_that_is_an_html_page_is_not_kept(tmp_path: Path) -> None:
    """A CDN answering 200 with an HTML page for an imageUrl output keeps no file."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png"))
    flora.media["/a.png"] = body(HTML, "image/png")
    result = await go(tmp_path, flora)
    refused(result, "HTML page")
    assert saved(tmp_path) == []


async def test_video_output_served_as_text_is_not_kept(tmp_path: Path) -> None:
    """A videoUrl output whose Content-Type is text/plain is refused."""
    flora = HostileFlora(create=completed(f"{CDN}/a.mp4", output_type="videoUrl"))
    flora.media["/a.mp4"] = body(b"not a video", "text/plain")
    result = await go(tmp_path, flora)
    refused(result, "is text/plain, not video/ or image/gif")


# --- malformed, oversized and odd JSON -------------------------------------------------------


async def test_oversized_and_malformed_polls_do_not_crash_or_rebuy(tmp_path: Path) -> None:
    """9 MB, broken, wrongly shaped and field-less poll answers are survived; one run bought."""
    flora = HostileFlora(create={"run_id": "run_1", "status": "pending"})
    flora.polls = [
        b"{" + b" " * (9 * 1024 * 1024) + b"}",
        b"{not json",
        b"[]",
        json_bytes({"status": "completed"}),
        json_bytes({"run_id": "run_1", "status": "completed", "outputs": "all of them"}),
        json_bytes({"run_id": "run_1", "status": "completed", "outputs": [{"type": "imageUrl"}]}),
        json_bytes({"run_id": "run_1", "status": None, "progress": "lots", "created_at": "x"}),
    ]
    flora.final = completed(f"{CDN}/a.png")
    flora.media["/a.png"] = body(PNG)
    result = await go(tmp_path, flora)
    assert states(result) == [JobState.DONE] and flora.creates == 1


async def test_malformed_create_answer_is_repeated_only_with_the_same_key(tmp_path: Path) -> None:
    """A create answered with junk may have landed: it is repeated with the same key only."""
    flora = HostileFlora(create=b"<html>502</html>")
    flora.final = completed(f"{CDN}/a.png")
    flora.media["/a.png"] = body(PNG)
    result = await go(tmp_path, flora, outage_limit=1)
    assert flora.creates >= 2 and len(set(flora.keys)) == 1
    assert states(result) == [JobState.SUBMITTING]  # kept for the next run, never re-keyed
    flora.create = {"run_id": "run_1", "status": "pending"}
    result = await go(tmp_path, flora)
    assert states(result) == [JobState.DONE] and len(set(flora.keys)) == 1


async def test_camel_case_dialect_is_understood(tmp_path: Path) -> None:
    """The older camelCase dialect (runId, outputId, chargedCost) runs to the end."""
    flora = HostileFlora(create=completed(f"{CDN}/a.png", camel=True))
    flora.media["/a.png"] = body(PNG)
    result = await go(tmp_path, flora)
    assert states(result) == [JobState.DONE]


@pytest.mark.parametrize("outputs", [[], None])
async def test_completed_without_outputs_is_a_failure(tmp_path: Path, outputs: Any) -> None:
    """A run that claims completed but lists no outputs is a failed job, not a done one."""
    run = {"run_id": "run_1", "status": "completed", "charged_cost": 0.06}
    if outputs is not None:
        run["outputs"] = outputs
    result = await go(tmp_path, HostileFlora(create=run))
    assert states(result) == [JobState.FAILED]
    assert [job.error_code for job in result.failed] == ["no_outputs"]


async def test_unknown_status_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    """A run stuck in an unknown status is left (kept, not re-bought) after the limit."""
    flora = HostileFlora(create={"run_id": "run_1", "status": "\x1b[2Jquantum"})
    result = await go(tmp_path, flora, unknown_status_limit=0.3)
    assert states(result) == [JobState.RUNNING] and flora.creates == 1
    [reason] = result.outcome.stuck
    assert "unknown status '?[2Jquantum'" in reason and "\x1b" not in reason


async def test_server_text_cannot_inject_terminal_escapes(tmp_path: Path) -> None:
    """A failed run's error text loses escapes and newlines before the ledger or the screen."""
    run = {
        "run_id": "run_1",
        "status": "failed",
        "error_code": "provider_error\n",
        "error_message": "\x1b]0;pwned\x07\nFAKE: all jobs done\u202e" + "x" * 10_000,
    }
    result = await go(tmp_path, HostileFlora(create=run))
    [job] = result.failed
    assert job.error_code == "provider_error?"
    message = job.error_message or ""
    assert len(message) == 2000 and not any(c in message for c in "\x1b\x07\n\u202e")


async def test_output_ids_cannot_make_one_job_overwrite_another(tmp_path: Path) -> None:
    """FLORA's output ids making two jobs' names equal: one file is kept, never overwritten."""
    rows = [
        {"sku": "a", "title": "one", "image_url": "https://media.flora.ai/1.jpg"},
        {"sku": "a-x", "title": "two", "image_url": "https://media.flora.ai/2.jpg"},
    ]
    manifest = load_manifest(write_batch(tmp_path / "b", rows, name="{sku}-{output_id}{ext}"))
    flora = HostileFlora(
        create=[
            completed(f"{CDN}/1.png", output_id="x-shot", run_id="run_1"),
            completed(f"{CDN}/2.png", output_id="shot", run_id="run_2"),
        ]
    )
    flora.final = completed(f"{CDN}/1.png")
    flora.media["/1.png"] = body(PNG + b"one")
    flora.media["/2.png"] = body(PNG + b"two")
    s = Settings(base_url=BASE, api_key="sk_test_hostile", min_poll=0.01, submit_rate=0)
    result = await run_batch(manifest, s, transport=flora.transport())
    assert sorted(states(result)) == sorted([JobState.DONE, JobState.DOWNLOADING])
    [reason] = result.outcome.stuck
    assert "'a-x-shot.png'" in reason and "not overwritten" in reason
    [kept] = saved(tmp_path)
    assert kept.name == "a-x-shot.png" and kept.read_bytes() in (PNG + b"one", PNG + b"two")
    with Ledger.open(result.ledger_url) as ledger:
        done = [j for j in ledger.jobs(batch="b") if j.state is JobState.DONE]
    assert kept.read_bytes() == (PNG + b"one" if done[0].row_id == "a" else PNG + b"two")
    # A later run loads the saved file's name from the ledger: still refused, still one file.
    again = await run_batch(manifest, s, transport=flora.transport())
    [reason] = again.outcome.stuck
    assert "not overwritten" in reason
    assert [p.read_bytes() for p in saved(tmp_path)] == [kept.read_bytes()]
