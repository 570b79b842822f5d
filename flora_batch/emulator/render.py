"""Techniques and runs as JSON, in either dialect (CONTRACT.md §1, §4, §12.1).

``snake`` is the OpenAPI files' dialect: snake_case keys, costs in USD.  ``camel`` is the
older docs' dialect: camelCase keys, costs in integer credits (USD × 1000).  Both are
built from one snake_case rendering, converted key by key, so they cannot drift apart.
List envelopes (``techniques``, ``technique_runs``, ``meta.next_cursor``) are the same
in both dialects.  Timestamps are unix milliseconds, as in FLORA's webhooks, shifted by
``clock_skew`` (``Wire.stamp``): what a server with a clock that is off would send.

Money: a poll's ``charged_cost`` is the bill (cost × ``bill_factor``, absent during
``late_charge``); the technique's ``run_cost`` and a fresh create's ``charged_cost`` are
the quote, which ``quote`` makes exact, zero or missing (CONTRACT.md §3: "a quote, not
the bill").

Output URLs are absolute, built from the request's own base URL, so they work on any
port and through ``httpx.ASGITransport``.  With ``media_ttl`` each URL carries a signed
issue time (``?token=``); every read of a run hands out a fresh one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Any

from flora_batch.types import RunInput

from .catalog import SlotDef, TechniqueDef
from .config import PROJECT_ID, EmulatorConfig
from .media import OutputSpec, plan_outputs, render_text
from .runs import RunRecord

CREDITS_PER_USD = 1000
MEDIA_PREFIX = "/_media"
_SECRET = secrets.token_bytes(16)
_MONEY_KEYS = ("run_cost", "charged_cost")


def to_camel(name: str) -> str:
    """``charged_cost`` → ``chargedCost``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camelize(data: Any) -> Any:
    """A snake_case JSON value in the camelCase dialect: keys renamed, USD turned into credits."""
    if isinstance(data, list):
        return [camelize(item) for item in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _MONEY_KEYS and isinstance(value, int | float):
            value = round(value * CREDITS_PER_USD)
        out[to_camel(key)] = camelize(value)
    return out


def millis(seconds: float) -> int:
    """Clock seconds as unix milliseconds."""
    return round(seconds * 1000)


def slot_body(slot: SlotDef) -> dict[str, Any]:
    """A slot as the API shows it; emulator-only keys stay home."""
    body: dict[str, Any] = {"id": slot.id, "name": slot.name, "type": slot.type}
    if slot.description:
        body["description"] = slot.description
    if slot.optional:
        body["optional"] = True
    if slot.specified_aspect_ratio:
        body["specified_aspect_ratio"] = slot.specified_aspect_ratio
    if slot.specified_duration is not None:
        body["specified_duration"] = slot.specified_duration
    return body


def media_token(run_id: str, output_id: str, issued_ms: int) -> str:
    """``<issued ms>-<signature>``: when a media URL was handed out, unforgeable."""
    message = f"{run_id}/{output_id}/{issued_ms}".encode()
    signature = hmac.new(_SECRET, message, hashlib.sha256).hexdigest()[:16]
    return f"{issued_ms}-{signature}"


def token_issued(run_id: str, output_id: str, token: str) -> int | None:
    """The issue time (ms) a genuine token carries, or None for a forged or garbled one."""
    issued, _, _ = token.partition("-")
    if not issued.isdigit():
        return None
    expected = media_token(run_id, output_id, int(issued))
    return int(issued) if hmac.compare_digest(expected, token) else None


class Wire:
    """Renders one response's objects for one emulator config and request base URL."""

    def __init__(self, config: EmulatorConfig, base_url: str) -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")

    def finish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply the dialect to a snake_case object."""
        return camelize(body) if self.config.dialect == "camel" else body

    def stamp(self, seconds: float) -> int:
        """A server timestamp as rendered: unix ms on the server's (perhaps skewed) clock."""
        return millis(seconds + self.config.clock_skew)

    def quote(self, technique: TechniqueDef) -> float | None:
        """The cost the server quotes for a run (``quote``); None leaves the field out."""
        mode = self.config.quote
        if mode == "missing":
            return None
        return 0.0 if mode == "zero" else technique.run_cost

    def technique(self, technique: TechniqueDef) -> dict[str, Any]:
        """A technique object (CONTRACT.md §1)."""
        return self.finish(self._technique(technique))

    def _technique(self, technique: TechniqueDef) -> dict[str, Any]:
        body: dict[str, Any] = {
            "technique_id": technique.technique_id,
            "name": technique.name,
            "description": technique.description,
            "run_cost": self.quote(technique),
            "inputs": [slot_body(s) for s in technique.inputs],
            "outputs": [slot_body(s) for s in technique.outputs],
        }
        if body["run_cost"] is None:
            del body["run_cost"]
        return body

    def poll_url(self, run: RunRecord) -> str:
        """Where to poll a run: the nested technique route on this server."""
        return f"{self.base_url}/api/v1/techniques/{run.technique}/runs/{run.run_id}"

    def media_url(self, run_id: str, spec: OutputSpec, now: float) -> str:
        """The download URL of one output, with a fresh token when URLs expire."""
        url = f"{self.base_url}{MEDIA_PREFIX}/{run_id}/{spec.output_id}{spec.ext}"
        if self.config.media_ttl is None:
            return url
        return f"{url}?token={media_token(run_id, spec.output_id, millis(now))}"

    def run(self, run: RunRecord, technique: TechniqueDef, now: float) -> dict[str, Any]:
        """A run object (CONTRACT.md §4) as of ``now``."""
        return self.finish(self._run(run, technique, now))

    def created(self, run: RunRecord, technique: TechniqueDef, now: float) -> dict[str, Any]:
        """A fresh create's answer: the run object, with the quote as ``charged_cost``."""
        body = self._run(run, technique, now)
        body.pop("charged_cost", None)
        quote = self.quote(technique)
        if quote is not None:
            body["charged_cost"] = quote
        return self.finish(body)

    def run_item(self, run: RunRecord, technique: TechniqueDef, now: float) -> dict[str, Any]:
        """A ``/technique-runs`` item: the run object plus its history fields."""
        body = self._run(run, technique, now)
        body["technique_run_id"] = run.run_id
        body["project_id"] = PROJECT_ID
        body["workspace_id"] = self.config.workspace_id
        body["technique"] = {"technique_id": technique.technique_id, "name": technique.name}
        return self.finish(body)

    def _run(self, run: RunRecord, technique: TechniqueDef, now: float) -> dict[str, Any]:
        status = run.status_at(now)
        body: dict[str, Any] = {
            "run_id": run.run_id,
            "status": status,
            "progress": run.progress_at(now),
            "created_at": self.stamp(run.created_at),
        }
        if status != "pending":
            body["started_at"] = self.stamp(run.started_at)
        if status in ("completed", "failed"):
            body["completed_at"] = self.stamp(run.ended_at)
        cost = run.charged_cost_at(now, self.config.late_charge)
        if cost is not None:
            body["charged_cost"] = cost
        if status == "failed":
            body["error_code"] = run.error_code
            body["error_message"] = run.error_message
        if status == "completed":
            body["outputs"] = self._outputs(run, technique, now)
        body["poll_url"] = self.poll_url(run)
        return body

    def _outputs(self, run: RunRecord, technique: TechniqueDef, now: float) -> list[dict[str, Any]]:
        return [
            self._output(run.run_id, run.inputs, technique, s, now) for s in plan_outputs(technique)
        ]

    def _output(
        self,
        run_id: str,
        inputs: Sequence[RunInput],
        technique: TechniqueDef,
        spec: OutputSpec,
        now: float,
    ) -> dict[str, Any]:
        if spec.type == "text":
            url = render_text(technique, spec, inputs)
        else:
            url = self.media_url(run_id, spec, now)
        return {"output_id": spec.output_id, "type": spec.type, "url": url}
