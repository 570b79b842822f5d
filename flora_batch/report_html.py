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

from .types import OutputRecord

if TYPE_CHECKING:
    from .report import Line

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
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:16px;
 padding:0 24px 24px}
.card{background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 3px rgba(0,0,0,.12);
 border-top:4px solid #999}
.card[hidden]{display:none}
.card.succeeded{border-top-color:#2e8b57}.card.failed{border-top-color:#c0392b}
.media{background:#e9e9e4;display:flex;flex-wrap:wrap;gap:2px}
.media img,.media video{display:block;width:100%;height:200px;object-fit:contain;background:#e9e9e4}
.media .none{padding:24px;color:#777;width:100%;text-align:center}
.media pre{margin:0;padding:8px;max-height:200px;overflow:auto;white-space:pre-wrap;
 font:12px/1.35 ui-monospace,monospace;width:100%;background:#fbfbf8}
.body{padding:10px 12px}
.body h2{font-size:15px;margin:0 0 4px;overflow-wrap:anywhere}
.badge{display:inline-block;font-size:11px;padding:1px 8px;border-radius:10px;background:#ddd}
.succeeded .badge{background:#d6f0e0}.failed .badge{background:#f7d8d4}
.meta{color:#555;margin:4px 0;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 8px;margin:6px 0 0;font-size:12px}
dt{color:#777}dd{margin:0;overflow-wrap:anywhere}
.error{color:#a52a1f;margin:6px 0 0;overflow-wrap:anywhere}
.outputs{margin:6px 0 0;padding:0;list-style:none;font-size:12px}
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


def _media(out: OutputRecord, out_dir: Path, texts: Mapping[str, str]) -> str:
    if not out.path:
        return f'<div class="none">{esc(out.output_id)}: not downloaded</div>'
    src = esc(href(out.path, out_dir))
    label = esc(out.output_id)
    if out.type == "imageUrl":
        return f'<a href="{src}"><img src="{src}" alt="{label}" loading="lazy"></a>'
    if out.type == "videoUrl":
        return f'<video src="{src}" controls muted preload="metadata" title="{label}"></video>'
    if out.type == "text":
        return f'<pre title="{label}">{esc(texts.get(out.path, ""))}</pre>'
    return f'<div class="none"><a href="{src}">{label}</a></div>'


def _fields(row: Mapping[str, Any]) -> str:
    items = list(row.items())[:CARD_FIELDS]
    cells = "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(_clip(str(v)))}</dd>" for k, v in items if str(v).strip()
    )
    return f"<dl>{cells}</dl>" if cells else ""


def _clip(text: str) -> str:
    return text if len(text) <= FIELD_CHARS else text[: FIELD_CHARS - 1] + "…"


def _money(value: float | None) -> str:
    return "" if value is None else f"${value:,.2f}"


def card(line: Line, out_dir: Path, texts: Mapping[str, str]) -> str:
    """One line of the report as a card."""
    rec = line.record
    group = group_of(line.status)
    outputs = rec.outputs if rec else ()
    media = "".join(_media(o, out_dir, texts) for o in outputs) or (
        f'<div class="none">{esc(line.status)}</div>'
    )
    name = rec.row_id if rec and rec.row_id else f"row {line.number}"
    meta = " · ".join(
        p
        for p in (
            esc(line.technique),
            _money(rec.charged_cost if rec else None),
            esc(rec.run_id if rec else ""),
        )
        if p
    )
    error = (
        f'<p class="error">{esc(rec.error_code)}: {esc(rec.error_message)}</p>'
        if rec and (rec.error_code or rec.error_message)
        else ""
    )
    return (
        f'<article class="card {group}" data-group="{group}" data-status="{esc(line.status)}">'
        f'<div class="media">{media}</div><div class="body">'
        f'<h2>#{line.number} · {esc(name)}</h2><span class="badge">{esc(line.status)}</span>'
        f'<p class="meta">{meta}</p>{_fields(line.row)}{error}</div></article>'
    )


def _nav(lines: Sequence[Line]) -> str:
    counts = {"all": len(lines), "succeeded": 0, "failed": 0, "other": 0}
    for line in lines:
        counts[group_of(line.status)] += 1
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
) -> str:
    """The whole self-contained HTML page."""
    statuses = ", ".join(f"{n} {s}" for s, n in summary["statuses"].items()) or "no jobs"
    cards = "\n".join(card(line, out_dir, texts) for line in lines)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}: flora-batch report</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{len(lines)} lines: {esc(statuses)} · "
        f"{esc(_money(summary['spent']))} spent · generated {esc(generated)} · "
        '<a href="results.csv">CSV</a> · <a href="results.xlsx">XLSX</a> · '
        '<a href="results.jsonl">JSONL</a></p></header>'
        f"{_nav(lines)}<main>\n{cards}\n</main><script>{SCRIPT}</script></body></html>\n"
    )
