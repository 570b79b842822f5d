"""The user's config file: defaults for every command, below flags and the environment.

``$XDG_CONFIG_HOME/flora-batch/config.toml`` (else ``~/.config/flora-batch/config.toml``;
``FLORA_CONFIG`` names another file).  Keys::

    base_url = "https://app.flora.ai/api/v1"
    api_key = "sk_live_..."      # only from a file nobody else can read (chmod 600)
    concurrency = 8
    ledger = "~/flora/ledger.db"  # a SQLite path or a SQLAlchemy URL
    workspace_id = "ws_..."      # where local input files are uploaded (below a manifest's)
    asset_folder = "batch-inputs"  # the workspace library folder for them

Precedence is flags > environment (``FLORA_BASE_URL``, ``FLORA_API_KEY``,
``FLORA_WORKSPACE_ID``, ``FLORA_LEDGER``) > this file > the manifest > built-in
defaults, except that a manifest's ``assets:`` (``workspace_id``, ``asset_folder``)
ranks above this file; ``cli.settings.resolve`` ranks them, for the commands whose
options take each key (``cli.options``: ``config=True``).  A ledger path's ``~`` is
expanded (``locations.ledger_for``, which every command asks).  An API key in a file
that its group or others can read is refused (exit 2), never used.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Each key and the type its value must have.
KEYS: dict[str, type] = {
    "base_url": str,
    "api_key": str,
    "concurrency": int,
    "ledger": str,
    "workspace_id": str,
    "asset_folder": str,
}


@dataclass(frozen=True, slots=True)
class UserConfig:
    """What the config file said (every value optional)."""

    path: Path | None = None
    values: Mapping[str, Any] | None = None

    def get(self, key: str) -> Any:
        """One value, or None."""
        return (self.values or {}).get(key)


def config_path(env: Mapping[str, str]) -> Path:
    """Where the config file is looked for."""
    if env.get("FLORA_CONFIG"):
        return Path(env["FLORA_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "flora-batch" / "config.toml"


def load(env: Mapping[str, str]) -> UserConfig:
    """Read and check the config file; an absent file is an empty config.

    Raises:
        ConfigError: the file is not valid TOML, has an unknown key or a value of the
            wrong type, or holds an API key while its group or others can read it.
    """
    path = config_path(env)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return UserConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        values = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    _check(values, path)
    if "api_key" in values:
        _check_private(path)
    return UserConfig(path, values)


def _check(values: Mapping[str, Any], path: Path) -> None:
    for key, value in values.items():
        if key not in KEYS:
            known = ", ".join(KEYS)
            raise ConfigError(f"config file {path}: unknown key {key!r} (known: {known})")
        wanted = KEYS[key]
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise ConfigError(
                f"config file {path}: {key} must be {'a number' if wanted is int else 'text'}"
            )


def _check_private(path: Path) -> None:
    """Refuse an API key in a file that its group or others can read."""
    if os.name != "posix":
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"config file {path} holds an API key but its group or others can read it "
            f"(mode {stat.filemode(mode)}): run `chmod 600 {path}`, or remove api_key "
            "and use FLORA_API_KEY"
        )


def api_key(env: Mapping[str, str], config: UserConfig | None) -> str | None:
    """``FLORA_API_KEY``, else the config file's ``api_key``."""
    return env.get("FLORA_API_KEY") or (config.get("api_key") if config else None)
