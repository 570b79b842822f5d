"""Where a command's ``Settings`` come from: one function, ``resolve``, ranks them all.

Flags, the environment, the config file (``userconfig``), the manifest and ``--demo``'s
embedded emulator each say something about a run; ``resolve`` merges them once into one
frozen ``Settings`` that the command passes down.  Every command calls it, through
``settings_for`` (which reads the click context, ``os.environ`` and the config file) or
``flora`` (which also starts ``--demo``'s emulator), so no command ranks sources itself.

Light to import: the manifest, the emulator and the HTTP client are imported when a
command runs, never for ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import Settings, check_api_key, check_workspace_id
from ..errors import ConfigError, UsageError
from . import userconfig
from .options import OPTIONS, Declared

if TYPE_CHECKING:
    from ..manifest import Manifest

#: ``--demo``'s request timeout (the embedded emulator is on loopback), unless one is given.
DEMO_TIMEOUT = 5.0
#: ``--demo``'s emulator runs this many times faster than FLORA.
DEMO_SPEED = 30.0

#: What a manifest says for a setting (it ranks below flag, environment and config file).
FROM_MANIFEST: Mapping[str, Callable[[Manifest], Any]] = {
    "results": lambda m: m.output_dir,
    "concurrency": lambda m: m.concurrency,
    "max_cost": lambda m: m.max_cost,
    "skip_invalid": lambda m: m.skip_invalid or None,
    "workspace_id": lambda m: m.workspace_id,
    "asset_folder": lambda m: m.asset_folder,
}
#: Settings whose manifest value ranks above the config file: a batch's own ``assets:``
#: (the workspace its files belong in) beats a personal default.
MANIFEST_OVER_FILE = frozenset({"workspace_id", "asset_folder"})


@dataclass(frozen=True)
class Parsed:
    """A command's options as click parsed them: every value (defaults too), and the
    names of those typed on the command line."""

    values: Mapping[str, Any]
    typed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Emulated:
    """``--demo``'s embedded FLORA: its URL, key and workspace stand in for FLORA's."""

    base_url: str
    api_key: str
    workspace_id: str


def resolve(
    parsed: Parsed,
    *,
    env: Mapping[str, str],
    config: userconfig.UserConfig,
    manifest: Manifest | None = None,
    emulator: Emulated | None = None,
    needs_key: bool = False,
) -> Settings:
    """The command's ``Settings``, each one from the first source that says it.

    Precedence, highest first:

    1. ``--demo``'s emulator, for the base URL, the API key and the workspace;
    2. a flag typed on the command line;
    3. the environment (``FLORA_BASE_URL``, ``FLORA_LEDGER``, ``FLORA_WORKSPACE_ID``,
       ``FLORA_ASSET_FOLDER``, ``FLORA_BATCH_S3_ENDPOINT``; ``FLORA_API_KEY``);
    4. the config file (``base_url``, ``ledger``, ``concurrency``, ``workspace_id``,
       ``asset_folder``; ``api_key``);
    5. the manifest (``ledger:``, ``output.dir``, ``concurrency``, ``max_cost``,
       ``skip_invalid``, ``assets:``);
    6. the defaults (``config.py``; ``--demo``: a 5-second request timeout).

    One exception: a manifest's ``assets:`` (workspace and folder) ranks above the config
    file.  The environment and the config file reach only the settings of options the
    command takes (``FLORA_LEDGER`` means nothing to ``techniques``).  The ledger, from
    wherever it came, is made a location by ``locations.ledger_for`` (``~`` expanded, a
    manifest's relative to its folder), the one place every command finds it.

    Raises:
        ConfigError: a value from the environment or the config file is out of range, a
            workspace id is malformed, or ``needs_key`` and no usable API key is set.
    """
    chosen = {
        setting: _first_said(declared, parsed, env, config, manifest)
        for setting, declared in _taken(parsed)
    }
    for name, read in FROM_MANIFEST.items():
        if manifest is not None and chosen.get(name) is None:
            chosen[name] = read(manifest)
    chosen["ledger"] = _ledger(chosen.get("ledger"), manifest)
    chosen["workspace_id"] = check_workspace_id(chosen.get("workspace_id"))
    chosen["api_key"] = (userconfig.api_key(env, config) or "").strip()
    if emulator is not None:
        chosen["timeout"] = chosen.get("timeout") or DEMO_TIMEOUT
        chosen.update(
            base_url=emulator.base_url,
            api_key=emulator.api_key,
            workspace_id=emulator.workspace_id,
        )
    elif needs_key:
        check_api_key(chosen["api_key"])
    return Settings(**{k: v for k, v in chosen.items() if v is not None})


def _taken(parsed: Parsed) -> Iterator[tuple[str, Declared]]:
    """The declared options of this command that set a ``Settings`` field, by field."""
    for name in parsed.values:
        declared = OPTIONS.get(name)
        if declared is not None and declared.setting is not None:
            yield declared.setting, declared


def _first_said(
    declared: Declared,
    parsed: Parsed,
    env: Mapping[str, str],
    config: userconfig.UserConfig,
    manifest: Manifest | None,
) -> Any:
    """The option's setting from flag, environment, config file and manifest, in rank
    order (None: none of them says it)."""
    said = [
        parsed.values[declared.name] if declared.name in parsed.typed else None,
        _typed(declared, env.get(declared.env) if declared.env else None, declared.env),
        _from_file(declared, config),
    ]
    if declared.convert is not None:
        said = [None if v is None else declared.convert(v) for v in said]
    read = FROM_MANIFEST.get(declared.setting or "")
    if read is not None and manifest is not None:
        said.insert(2 if declared.setting in MANIFEST_OVER_FILE else 3, read(manifest))
    return next((value for value in said if value is not None), None)


def _from_file(declared: Declared, config: userconfig.UserConfig) -> Any:
    if not declared.config:
        return None
    where = f"config file {config.path}: {declared.name}"
    return _typed(declared, config.get(declared.name), where)


def _typed(declared: Declared, value: Any, where: str | None) -> Any:
    """``value`` checked as the option's click type would check it on the command line."""
    if value is None or value == "":
        return None
    try:
        return click.types.convert_type(declared.attrs.get("type")).convert(value, None, None)
    except click.BadParameter as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _ledger(written: str | None, manifest: Manifest | None) -> str | None:
    if not written and manifest is None:
        return None  # status and report say so, naming --ledger
    from ..locations import ledger_for

    return ledger_for(manifest, written)


# --- from a click context ----------------------------------------------------------------


def parsed(ctx: click.Context) -> Parsed:
    """The options of ``ctx``'s command and of the groups above it (a group's option, such
    as ``techniques --demo``, reaches its subcommands unless they give their own)."""
    values: dict[str, Any] = {}
    typed: set[str] = set()
    for level in _chain(ctx):  # the command first, then its groups
        for name, value in level.params.items():
            said = level.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
            if said and name not in typed:
                values[name] = value
                typed.add(name)
            values.setdefault(name, value)
    return Parsed(values, frozenset(typed))


def _chain(ctx: click.Context) -> Iterator[click.Context]:
    level: click.Context | None = ctx
    while level is not None:
        yield level
        level = level.parent


def settings_for(
    ctx: click.Context,
    *,
    manifest: Manifest | None = None,
    emulator: Emulated | None = None,
    needs_key: bool = False,
) -> Settings:
    """``resolve`` for the running command: its options, ``os.environ`` and the config
    file (read once per process, and only by a command that runs, never by ``--help``)."""
    root = ctx.find_root()
    root.ensure_object(dict)
    if "config" not in root.obj:
        from ..remote.client import http_stack

        http_stack()  # a bad FLORA_BATCH_HTTP stops here, before any ledger is created
        root.obj["config"] = userconfig.load(os.environ)
    return resolve(
        parsed(ctx),
        env=os.environ,
        config=root.obj["config"],
        manifest=manifest,
        emulator=emulator,
        needs_key=needs_key,
    )


@contextmanager
def flora(
    ctx: click.Context,
    manifest: Manifest | None = None,
    *,
    demo: bool,
    keep_state: bool = False,
) -> Iterator[Settings]:
    """The command's ``Settings`` for talking to FLORA, or, with ``demo``, to an embedded
    emulator on a loopback port that lives as long as this block.

    With ``keep_state`` the emulator keeps its state beside the ledger
    (``demo_state_file``), so runs it made outlive this process and a re-run after Ctrl-C
    or ``kill -9`` finds them.
    """
    if not demo:
        yield settings_for(ctx, manifest=manifest, needs_key=True)
        return
    from ..emulator import EmulatorConfig
    from ..emulator.serve import start_server

    state_file = None
    if keep_state and manifest is not None:
        state_file = demo_state_file(manifest, settings_for(ctx, manifest=manifest).ledger)
    config = EmulatorConfig(speed=DEMO_SPEED, state_file=state_file)
    handle = start_server(config, host="127.0.0.1", port=0)
    try:
        here = Emulated(handle.base_url, handle.api_key, handle.emulator.config.workspace_id)
        yield settings_for(ctx, manifest=manifest, emulator=here)
    finally:
        handle.stop()


def demo_state_file(manifest: Manifest, ledger: str | None) -> Path:
    """Where ``run --demo``'s emulator keeps its state: ``<ledger>.demo-emulator.json``
    beside a SQLite ledger file, else ``<batch>.demo-emulator.json`` beside the manifest."""
    from ..ledger.connect import resolve as connect

    path = connect(ledger).sqlite_path if ledger else None
    if path is None:
        return Path(manifest.path).parent / f"{manifest.name}.demo-emulator.json"
    return path.with_name(f"{path.name}.demo-emulator.json")


def load_manifest_arg(source: Path, technique: str | None, inputs: tuple[str, ...]) -> Manifest:
    """The manifest a command was given: a YAML manifest, or a rows file with
    ``--technique`` and ``--input`` pairs (quick mode).

    Raises:
        UsageError: a manifest with ``--technique``/``--input``, or a rows file without.
    """
    from ..manifest import load_manifest, manifest_from_rows

    if source.suffix.lower() in (".yaml", ".yml"):
        if technique or inputs:
            raise UsageError("--technique/--input are for a rows file; a manifest names its own")
        return load_manifest(source)
    if not technique:
        raise UsageError(
            f"{source} is not a manifest (.yaml): give --technique SLUG and --input ID=COLUMN"
        )
    mapping: dict[str, str] = {}
    for item in inputs:
        if "=" not in item:
            raise UsageError(f"--input {item!r}: expected ID=COLUMN, e.g. product=image_url")
        key, _, value = item.partition("=")
        mapping[key.strip()] = value.strip()
    return manifest_from_rows(source, technique, mapping)
