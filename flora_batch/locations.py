"""Where a batch's things are: its ledger, its results folder, its upload workspace.

Every command that opens a ledger (``run``, ``plan``, ``status``, ``report``, ``submit``,
``worker``) finds it with ``ledger_location`` (``ledger_for``), so they all read the one
``run`` writes, whatever spelling the user chose.  Light to import: no HTTP, no database.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import check_workspace_id
from .errors import UsageError

if TYPE_CHECKING:  # the CLI imports this module before it needs the manifest's parser
    from .config import Settings
    from .manifest import Manifest


def ledger_location(manifest: Manifest | None, settings: Settings) -> str:
    """Where a command's ledger is: every command that opens one asks this function.

    ``settings.ledger`` first (``cli.settings.resolve`` ranks the ``--ledger`` flag,
    ``FLORA_LEDGER`` and the config file's ``ledger`` into it, and makes it a location
    with ``ledger_for``); then the manifest's.  See ``ledger_for``.

    Raises:
        UsageError: no manifest and no ledger named anywhere.
    """
    return ledger_for(manifest, settings.ledger)


def ledger_for(manifest: Manifest | None, written: str | None) -> str:
    """The ledger location for a ledger ``written`` by the user (flag, environment or
    config file), else ``manifest``'s.

    ``written`` first; then the manifest's ``ledger:``, relative to the manifest's
    folder; then ``<name>.ledger.db`` beside the manifest.  A path's ``~`` is expanded
    wherever it was written (a config file or a quoted flag is not expanded by any
    shell); a URL is used as given.  A location given again comes back unchanged.

    Raises:
        UsageError: no manifest and no ledger named anywhere.
    """
    if written:
        return ledger_path(written)
    if manifest is None:
        raise UsageError(
            "give a MANIFEST or --ledger URL (the ledger of a batch; or FLORA_LEDGER, or "
            "ledger in the config file)"
        )
    if manifest.ledger:
        return ledger_path(manifest.ledger, manifest.path.parent)
    return str(manifest.path.parent / f"{manifest.name}.ledger.db")


def ledger_path(written: str, base: Path | None = None) -> str:
    """A ledger as written, made a location: ``~`` expanded, a relative path under ``base``.

    A URL (``postgresql://``, ``sqlite:///...``, ``sqlite:...``) and ``:memory:`` are kept
    as they are: ``Ledger.open`` reads them (and expands ``~`` in a SQLite URL's path).
    """
    if "://" in written or written.startswith("sqlite:") or written == ":memory:":
        return written
    path = Path(written).expanduser()
    return str(base / path if base is not None else path)


def ledger_exists(location: str) -> bool:
    """Whether a ledger is there to read: a URL is assumed to be; a file must exist."""
    return "://" in location or (location != ":memory:" and Path(location).exists())


def workspace_location(manifest: Manifest, settings: Settings) -> str | None:
    """The workspace input files are uploaded to: flag or environment, then manifest."""
    return check_workspace_id(settings.workspace_id) or manifest.workspace_id


def results_location(manifest: Manifest, settings: Settings) -> Path:
    """Flag, then the manifest's ``output.dir``."""
    return settings.results or manifest.output_dir
