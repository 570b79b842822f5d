"""The config file: flags > environment > file > defaults, and no API key from a readable file."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import FAST
from toolbox_helpers import as_json, env, run_batch, write_batch

from flora_batch.cli.settings import Parsed, resolve
from flora_batch.cli.userconfig import UserConfig, config_path, load
from flora_batch.config import Settings
from flora_batch.emulator.catalog import load_catalog

NOWHERE = "http://127.0.0.1:9/api/v1"  # nothing listens on the discard port


def _config(tmp: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp / "xdg" / "flora-batch" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _plain_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The user's environment with no FLORA_* variables except those given."""
    return env(tmp, **extra)


def test_file_supplies_base_url_and_key(emulator, run_cli, tmp_path: Path):
    """With no flag and no environment, base_url and api_key come from the file."""
    server = emulator()
    _config(tmp_path, f'base_url = "{server.base_url}"\napi_key = "{server.api_key}"\n')
    res = run_cli("techniques", "--json", env=_plain_env(tmp_path))
    assert res.code == 0, res.text
    assert as_json(res)["source"] == "api"


@pytest.mark.parametrize("where", ["environment", "flag"])
def test_environment_and_flags_beat_the_file(where, emulator, run_cli, tmp_path: Path):
    """FLORA_BASE_URL beats the file's base_url, and --base-url beats FLORA_BASE_URL."""
    server = emulator()
    _config(tmp_path, f'base_url = "{NOWHERE}"\napi_key = "{server.api_key}"\n')
    if where == "environment":
        user = _plain_env(tmp_path, FLORA_BASE_URL=server.base_url)
        res = run_cli("techniques", "--json", env=user)
    else:
        res = run_cli("techniques", "--json", "--base-url", server.base_url,
                      env=_plain_env(tmp_path, FLORA_BASE_URL=NOWHERE))
    assert res.code == 0, res.text
    assert len(as_json(res)["techniques"]) == len(load_catalog())


def test_environment_key_beats_the_file_key(emulator, run_cli, tmp_path: Path):
    """FLORA_API_KEY wins over the file's api_key."""
    server = emulator()
    _config(tmp_path, 'api_key = "sk_test_not_the_right_one"\n')
    res = run_cli("techniques", "--json", env=_plain_env(
        tmp_path, FLORA_BASE_URL=server.base_url, FLORA_API_KEY=server.api_key))
    assert res.code == 0, res.text


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_in_a_readable_file_is_refused(mode, emulator, run_cli, tmp_path: Path):
    """An api_key in a file the group or others can read: exit 2, asking for chmod 600."""
    server = emulator()
    path = _config(tmp_path, f'api_key = "{server.api_key}"\n', mode)
    res = run_cli("techniques", "--json", env=_plain_env(tmp_path, FLORA_BASE_URL=server.base_url))
    assert res.code == 2
    assert "chmod 600" in res.err and str(path) in res.err
    assert server.api_key not in res.text
    assert server.emulator.request_counts["GET /api/v1/techniques"] == 0


def test_readable_file_without_a_key_is_fine(emulator, run_cli, tmp_path: Path):
    """A world-readable file without api_key is read (its ledger default is used)."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    assert run_batch(run_cli, manifest, server).code == 0
    _config(tmp_path, f'ledger = "{manifest.parent / "shop.ledger.db"}"\n', 0o644)
    data = as_json(run_cli("status", "--json", env=_plain_env(tmp_path)))
    assert data["states"]["done"] == 6


def test_config_ledger_and_concurrency_reach_run(emulator, run_cli, tmp_path: Path):
    """`ledger` and `concurrency` in the file become run's defaults."""
    server = emulator()
    shared = tmp_path / "shared.db"
    _config(tmp_path, f'ledger = "{shared}"\nconcurrency = 2\n')
    manifest = write_batch(tmp_path / "b")
    user = _plain_env(tmp_path, FLORA_BASE_URL=server.base_url, FLORA_API_KEY=server.api_key)
    res = run_cli("run", str(manifest), *FAST, env=user)
    assert res.code == 0, res.text
    assert shared.exists() and not (manifest.parent / "shop.ledger.db").exists()


def test_bad_config_is_a_usage_error(run_cli, tmp_path: Path):
    """An unknown key or a wrong type exits 2 naming the file."""
    _config(tmp_path, 'base_ur = "x"\n')
    res = run_cli("status", "--ledger", "x.db", env=_plain_env(tmp_path))
    assert res.code == 2 and "unknown key 'base_ur'" in res.err
    _config(tmp_path, 'concurrency = "eight"\n')
    assert "must be a number" in run_cli("status", env=_plain_env(tmp_path)).err


def test_config_location_and_the_commands_it_reaches(tmp_path: Path):
    """XDG_CONFIG_HOME, then ~/.config; FLORA_CONFIG overrides; each key reaches the commands
    whose options take it, nested ones too."""
    assert config_path({"HOME": "/h"}) == Path("/h/.config/flora-batch/config.toml")
    assert config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/flora-batch/config.toml")
    assert config_path({"FLORA_CONFIG": "/c.toml", "XDG_CONFIG_HOME": "/x"}) == Path("/c.toml")
    assert load({"FLORA_CONFIG": str(tmp_path / "absent.toml")}) == UserConfig()
    from flora_batch.cli.main import cli

    values = {"base_url": "u", "ledger": "l", "concurrency": 3, "api_key": "sk_test_secret"}
    config = UserConfig(None, values)

    def settings(*path: str):
        command = cli
        for name in path:
            command = command.commands[name]
        taken = {p.name: None for p in command.params if p.name}
        return resolve(Parsed(taken), env={}, config=config)

    run = settings("run")
    assert (run.base_url, run.ledger, run.concurrency) == ("u", "l", 3)
    assert settings("techniques", "show").base_url == "u"
    status = settings("status")
    assert (status.ledger, status.concurrency, status.base_url) == ("l", None, Settings().base_url)
    assert settings("worker").concurrency == 3


def _home_env(tmp: Path, server, **extra: str) -> dict[str, str]:
    """A user whose HOME is a fresh folder under ``tmp`` (``~`` means it)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return _plain_env(
        tmp, HOME=str(home), FLORA_BASE_URL=server.base_url, FLORA_API_KEY=server.api_key, **extra
    )


def test_a_config_ledger_under_home_is_the_one_run_plan_and_status_read(
    emulator, run_cli, tmp_path: Path
):
    """`ledger = "~/..."` in the file: run writes it under HOME; plan and status see it done."""
    server = emulator()
    _config(tmp_path, 'ledger = "~/flora/ledger.db"\n')
    manifest = write_batch(tmp_path / "b")
    user = _home_env(tmp_path, server)
    assert run_cli("run", str(manifest), *FAST, env=user, cwd=tmp_path).code == 0
    assert (tmp_path / "home" / "flora" / "ledger.db").is_file()
    assert not list(tmp_path.rglob("~"))
    plan = as_json(run_cli("plan", str(manifest), "--json", env=user, cwd=tmp_path))
    assert (plan["new"], plan["done"]) == (0, 6)
    assert plan["ledger"] == str(tmp_path / "home" / "flora" / "ledger.db")
    status = as_json(run_cli("status", str(manifest), "--json", env=user, cwd=tmp_path))
    assert status["states"]["done"] == 6
    alone = as_json(run_cli("status", "--json", env=user, cwd=tmp_path))
    assert alone["states"]["done"] == 6


@pytest.mark.parametrize("where", ["manifest", "environment"])
def test_a_ledger_under_home_from_the_manifest_or_environment(
    where, emulator, run_cli, tmp_path: Path
):
    """`ledger: ~/...` in a manifest, or FLORA_LEDGER=~/...: one ledger under HOME for all."""
    server = emulator()
    extra = "ledger: ~/shop.db\n" if where == "manifest" else ""
    manifest = write_batch(tmp_path / "b", extra=extra)
    user = _home_env(tmp_path, server, **({} if extra else {"FLORA_LEDGER": "~/shop.db"}))
    assert run_cli("run", str(manifest), *FAST, env=user, cwd=tmp_path).code == 0
    assert (tmp_path / "home" / "shop.db").is_file()
    assert not list(tmp_path.rglob("~"))
    plan = as_json(run_cli("plan", str(manifest), "--json", env=user, cwd=tmp_path))
    assert (plan["new"], plan["done"]) == (0, 6)
    status = as_json(run_cli("status", str(manifest), "--json", env=user, cwd=tmp_path))
    assert status["states"]["done"] == 6
