"""What a person sees while a batch runs and when it ends.

On a terminal: one status line, redrawn in place.  Elsewhere (cron, CI, a pipe): a
plain log line every ``interval`` seconds, so a log file tells the story too.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from ..types import JobState, money

if TYPE_CHECKING:
    from ..worker import Snapshot


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def line(snap: Snapshot, unit: str = "usd") -> str:
    """One line: done / in flight / failed, money spent, ETA."""
    c = snap.counts
    in_flight = c[JobState.SUBMITTING] + c[JobState.RUNNING] + c[JobState.DOWNLOADING]
    parts = [
        f"{c[JobState.DONE]}/{snap.total} done",
        f"{in_flight} in flight",
        f"{c[JobState.PLANNED]} waiting",
    ]
    if snap.uploads and snap.uploads[2]:
        ready, missing, files = snap.uploads
        not_yet = f" ({missing} failed)" if missing else ""
        parts.insert(0, f"files {ready}/{files} uploaded{not_yet}")
    if c[JobState.FAILED]:
        parts.append(f"{c[JobState.FAILED]} failed")
    if c[JobState.NEEDS_RECONCILE] + c[JobState.UNRESOLVED]:
        parts.append(f"{c[JobState.NEEDS_RECONCILE] + c[JobState.UNRESOLVED]} to reconcile")
    parts.append(f"{money(snap.spent, unit)} spent")
    parts.append(f"ETA {duration(snap.eta)}")
    return " · ".join(parts)


class Progress:
    """A callable progress hook for ``Worker``."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        unit: str = "usd",
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.unit = unit
        self.enabled = enabled
        self._last = 0.0
        self._width = 0

    def __call__(self, snap: Snapshot) -> None:
        if not self.enabled:
            return
        text = f"[{self.label}] {line(snap, self.unit)}"
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self, snap: Snapshot | None = None) -> None:
        """Draw the final state and end the line so the summary starts on its own line."""
        if not self.enabled:
            return
        if snap is not None:
            self._last = 0.0
            self(snap)
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
