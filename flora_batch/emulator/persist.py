"""The emulator's state as a JSON file, so a restarted emulator remembers what it answered.

``flora-batch run --demo`` embeds an emulator in the batch's own process: without a file
its runs, keys and charges die with the process, and a re-run after Ctrl-C or ``kill -9``
would poll runs nobody remembers.  With ``EmulatorConfig.state_file`` the state is loaded
at start, and the app rewrites the file after every request that may change it, before
the answer leaves (``app.PersistMiddleware``).

What is kept: runs with their absolute timelines (clock seconds), keys, charges and
refunds (booked and due), the balance, request counts and which media were served (as of
the last changing request: reads alone do not rewrite the file), and assets with their
bytes (base64), reservation tokens and keys.  What is not: faults a
test forced with ``inject`` and the media cache (outputs are redrawn from their inputs).

Writes are atomic (a temporary file beside the target, then ``os.replace``), so a reader
or a killed writer never leaves half a file.  No ``fsync``: the file must outlive a killed
process, which the page cache already ensures, not a power cut.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from flora_batch.types import RunInput

from .runs import RunRecord

#: Tag of the file layout; a file with another tag is refused, not misread.
FORMAT = "flora-emulator-state/1"


def run_data(run: RunRecord) -> dict[str, Any]:
    """A run as JSON-ready data (its inputs as ``{id, type, value}`` objects)."""
    data = asdict(run)
    data["inputs"] = [{"id": i.id, "type": i.type, "value": i.value} for i in run.inputs]
    return data


def run_record(data: dict[str, Any]) -> RunRecord:
    """The run ``run_data`` wrote."""
    known = {f.name for f in fields(RunRecord)}
    values = {k: v for k, v in data.items() if k in known}
    values["inputs"] = tuple(RunInput(**i) for i in data["inputs"])
    return RunRecord(**values)


def check_format(data: Any) -> None:
    """Refuse data that is not a state file this version wrote.

    Raises:
        ValueError: with what was found instead.
    """
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found != FORMAT:
        raise ValueError(f"not an emulator state file ({FORMAT}): format is {found!r}")


def read(path: Path) -> dict[str, Any]:
    """The state saved in ``path``.

    Raises:
        ValueError: the file is not JSON or not a state file.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the emulator state file {path}: {exc}") from exc
    check_format(data)
    result: dict[str, Any] = data
    return result


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
