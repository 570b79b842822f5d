"""The contact sheet (``_report/index.html``): one card per report line, pure HTML.

It opens from disk with no server and loads nothing remote: CSS and the little filter
script are inline, thumbnails and previews are relative file paths, and a
Content-Security-Policy forbids anything else.  Every value from a row, the ledger
or an output goes through ``html.escape`` (a product title ``<script>`` stays text).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..types import OutputRecord, money

if TYPE_CHECKING:
    from .lines import Line

#: Row fields shown on a card, at most, and how many characters of each.
CARD_FIELDS = 6
FIELD_CHARS = 160
CSP = (
    "default-src 'none'; img-src 'self' data: file:; media-src 'self' file:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)
GROUPS = {"done": "succeeded", "failed": "failed", "unresolved": "failed"}

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 background:#f4f4f2;color:#1d1d1b}
header{padding:16px 24px;background:#1d1d1b;color:#fafaf7}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:0;color:#c9c9c2}
header a{color:#fafaf7}
nav{display:flex;gap:8px;padding:12px 24px;flex-wrap:wrap}
nav button{border:1px solid #bbb;background:#fff;border-radius:16px;padding:4px 12px;cursor:pointer}
nav button[aria-pressed=true]{background:#1d1d1b;color:#fff;border-color:#1d1d1b}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px;
 padding:0 24px 24px}
.card{background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 3px rgba(0,0,0,.12);
 border-top:4px solid #999}
.card[hidden]{display:none}
.card.succeeded{border-top-color:#2e8b57}.card.failed{border-top-color:#c0392b}
.media{background:#e9e9e4;display:grid;grid-template-columns:repeat(auto-fit,minmax(120px,1fr));
 gap:2px}
.media figure{margin:0;background:#e9e9e4;min-width:0}
.media a{display:block}
.media img,.media video{display:block;width:100%;height:170px;object-fit:contain}
.media pre{margin:0;padding:8px;height:170px;overflow:auto;white-space:pre-wrap;
 font:12px/1.35 ui-monospace,monospace;background:#fbfbf8}
.media figcaption{font-size:11px;color:#555;padding:2px 6px;overflow-wrap:anywhere}
.media .none{padding:24px;color:#777;text-align:center;grid-column:1/-1}
.body{padding:10px 12px}
.body h2{font-size:15px;margin:0 0 4px;overflow-wrap:anywhere}
.badge{display:inline-block;font-size:11px;padding:1px 8px;border-radius:10px;background:#ddd}
.badge.succeeded{background:#d6f0e0}.badge.failed{background:#f7d8d4}
.jobs{margin:6px 0 0;padding:0;list-style:none;font-size:12px}
.jobs li{margin:2px 0;overflow-wrap:anywhere}
code{font-size:11px;color:#666}
.meta{color:#555;margin:4px 0;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 8px;margin:6px 0 0;font-size:12px}
dt{color:#777}dd{margin:0;overflow-wrap:anywhere}
.error{color:#a52a1f;margin:2px 0 0}
"""

SCRIPT = """
(function(){
  var buttons=document.querySelectorAll('nav button');
  function show(group){
    document.querySelectorAll('.card').forEach(function(card){
      card.hidden=group!=='all'&&card.dataset.group!==group;
    });
    buttons.forEach(function(b){b.setAttribute('aria-pressed',String(b.dataset.filter===group));});
  }
  buttons.forEach(function(b){b.addEventListener('click',function(){show(b.dataset.filter);});});
  var start=location.hash.slice(1);
  show(['succeeded','failed','other'].indexOf(start)>=0?start:'all');
})();
"""


def esc(value: Any) -> str:
    """Text safe in HTML content and in quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def href(path: str, out_dir: Path) -> str:
    """A relative, percent-encoded URL from the report folder to a file."""
    rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
    return quote(rel, safe="/")


def group_of(status: str) -> str:
    """The filter group of a status: succeeded, failed or other."""
    return GROUPS.get(status, "other")


def _media(out: OutputRecord, out_dir: Path, texts: Mapping[str, str], caption: str) -> str:
    label = esc(caption)
    if not out.path:
        return f'<figure class="none">{label}: not downloaded</figure>'
    src = esc(href(out.path, out_dir))
    if out.type == "imageUrl":
        body = f'<a href="{src}"><img src="{src}" alt="{label}" loading="lazy"></a>'
    elif out.type == "videoUrl":
        body = f'<video src="{src}" controls muted preload="metadata" title="{label}"></video>'
    elif out.type == "text":
        body = f"<pre>{esc(texts.get(out.path, ''))}</pre>"
    else:
        body = f'<a href="{src}">open file</a>'
    return f"<figure>{body}<figcaption>{label}</figcaption></figure>"


def _fields(row: Mapping[str, Any]) -> str:
    items = [(k, str(v)) for k, v in row.items() if str(v).strip()][:CARD_FIELDS]
    cells = "".join(f"<dt>{esc(k)}</dt><dd>{esc(_clip(v))}</dd>" for k, v in items)
    return f"<dl>{cells}</dl>" if cells else ""


def _clip(text: str) -> str:
    return text if len(text) <= FIELD_CHARS else text[: FIELD_CHARS - 1] + "…"


def _money(value: float | None, unit: str) -> str:
    return "" if value is None else money(value, unit)


def _job(line: Line, unit: str) -> str:
    """One technique's line on a card: status, cost, run id, error."""
    rec = line.record
    parts = [
        f"<b>{esc(line.technique)}</b>",
        f'<span class="badge {group_of(line.status)}">{esc(line.status)}</span>',
    ]
    if rec is not None:
        parts += [esc(_money(rec.charged_cost, unit)), f"<code>{esc(rec.run_id or '')}</code>"]
    error = ""
    if rec is not None and (rec.error_code or rec.error_message):
        error = f'<div class="error">{esc(rec.error_code)}: {esc(rec.error_message)}</div>'
    return f"<li>{' '.join(p for p in parts if p)}{error}</li>"


def row_group(lines: Sequence[Line]) -> str:
    """The filter group of a row: failed if any job failed, succeeded if all are done."""
    groups = {group_of(line.status) for line in lines}
    if "failed" in groups:
        return "failed"
    return "succeeded" if groups == {"succeeded"} else "other"


def card(lines: Sequence[Line], out_dir: Path, texts: Mapping[str, str], unit: str) -> str:
    """One input row (all its techniques) as a card; ``unit`` is what costs count."""
    first = lines[0]
    group = row_group(lines)
    media = (
        "".join(
            _media(o, out_dir, texts, f"{line.technique} · {o.output_id}")
            for line in lines
            for o in (line.record.outputs if line.record else ())
        )
        or f'<figure class="none">{esc(first.status)}</figure>'
    )
    row_id = next((ln.record.row_id for ln in lines if ln.record and ln.record.row_id), None)
    name = row_id or f"row {first.number}"
    cost = sum(ln.record.charged_cost or 0.0 for ln in lines if ln.record)
    statuses = ", ".join(sorted({ln.status for ln in lines}))
    return (
        f'<article class="card {group}" data-group="{group}" data-status="{esc(statuses)}">'
        f'<div class="media">{media}</div><div class="body">'
        f"<h2>#{first.number} · {esc(name)}</h2>"
        f'<p class="meta">{esc(_money(cost, unit))} · {len(lines)} job(s)</p>'
        f'<ul class="jobs">{"".join(_job(ln, unit) for ln in lines)}</ul>{_fields(first.row)}'
        "</div></article>"
    )


def by_row(lines: Sequence[Line]) -> list[list[Line]]:
    """Lines grouped per input row, in order of first appearance."""
    rows: dict[str, list[Line]] = {}
    for line in lines:
        rows.setdefault(line.group or str(id(line)), []).append(line)
    return list(rows.values())


def _nav(cards: Sequence[Sequence[Line]]) -> str:
    counts = {"all": len(cards), "succeeded": 0, "failed": 0, "other": 0}
    for lines in cards:
        counts[row_group(lines)] += 1
    return (
        "<nav>"
        + "".join(
            f'<button type="button" data-filter="{g}" aria-pressed="false">'
            f"{g.capitalize()} ({n})</button>"
            for g, n in counts.items()
        )
        + "</nav>"
    )


def contact_sheet(
    lines: Sequence[Line],
    *,
    out_dir: Path,
    title: str,
    summary: Mapping[str, Any],
    texts: Mapping[str, str],
    generated: str,
    unit: str = "usd",
) -> str:
    """The whole self-contained HTML page; ``unit`` is what its costs count (usd, credits)."""
    statuses = ", ".join(f"{n} {s}" for s, n in summary["statuses"].items()) or "no jobs"
    rows = by_row(lines)
    cards = "\n".join(card(row, out_dir, texts, unit) for row in rows)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}: flora-batch report</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{len(rows)} rows, {len(lines)} jobs: {esc(statuses)} · "
        f"{esc(_money(summary['spent'], unit))} spent · generated {esc(generated)} · "
        '<a href="results.csv">CSV</a> · <a href="results.xlsx">XLSX</a> · '
        '<a href="results.jsonl">JSONL</a></p></header>'
        f"{_nav(rows)}<main>\n{cards}\n</main><script>{SCRIPT}</script></body></html>\n"
    )
