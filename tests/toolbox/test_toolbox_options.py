"""Options and settings: each option declared once (cli/options.py), one function ranks
flag > environment > config file > manifest > default, and every command goes through it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from e2e_helpers import FAST
from toolbox_helpers import as_json, env, write_batch

from flora_batch.cli import options as opt
from flora_batch.cli import userconfig
from flora_batch.cli.docs import walk
from flora_batch.cli.main import cli
from flora_batch.cli.settings import DEMO_TIMEOUT, Emulated, Parsed, resolve
from flora_batch.config import Settings
from flora_batch.errors import ConfigError

#: ``flora-batch emulator`` is another program (it may not import the CLI): its own options.
OWN_OPTIONS = {"flora-batch emulator"}
CLICK_OWN = {"help", "version"}


def _options() -> list[tuple[str, click.Option]]:
    found = []
    for path, ctx in walk(cli, "flora-batch"):
        if path in OWN_OPTIONS:
            continue
        for param in ctx.command.params:
            if isinstance(param, click.Option) and param.name not in CLICK_OWN:
                found.append((path, param))
    return found


def test_every_command_option_is_declared_once_in_cli_options():
    """No command declares an option by hand: each is cli/options.py's, flags and all."""
    found = _options()
    assert len({path for path, _ in found}) >= 9  # every command, `techniques show` too
    for path, param in found:
        assert isinstance(param, opt.DeclaredOption), f"{path} {param.opts}: not from options.py"
        declared = opt.OPTIONS[param.name or ""]
        assert param.declared is declared, f"{path} {param.opts}"
        assert tuple(param.opts + param.secondary_opts) == tuple(
            d for d in declared.decls if d.startswith("-")
        )


def test_shared_options_mean_the_same_everywhere():
    """An option several commands take has one type, default and environment variable."""
    seen: dict[str, tuple[object, ...]] = {}
    for path, param in _options():
        shape = (repr(param.type), param.default, param.multiple, param.is_flag, param.metavar)
        assert seen.setdefault(param.name or "", shape) == shape, f"{path} {param.opts}"


def test_declared_defaults_are_the_settings_defaults():
    """What `--help` shows as a default is what a command gets when nothing says otherwise."""
    from flora_batch.cluster import DEFAULT_IDLE_POLL, DEFAULT_LEASE

    for declared in opt.OPTIONS.values():
        if declared.setting and "default" in declared.attrs:
            assert getattr(Settings(), declared.setting) == declared.attrs["default"]
    assert opt.LEASE.attrs["default"] == DEFAULT_LEASE
    assert opt.IDLE_POLL.attrs["default"] == DEFAULT_IDLE_POLL


def test_config_file_keys_are_the_options_that_take_them():
    """The config file's keys (less api_key) are exactly the options declared config=True."""
    declared = {name for name, o in opt.OPTIONS.items() if o.config}
    assert declared == set(userconfig.KEYS) - {"api_key"}


def _parsed(**typed: object) -> Parsed:
    names = ("base_url", "ledger", "concurrency", "workspace_id", "asset_folder", "timeout")
    values = {name: None for name in names} | typed
    return Parsed(values, frozenset(typed))


def test_resolve_ranks_flag_environment_file_manifest_default(tmp_path: Path):
    """Each source wins over those below it; a manifest's assets: beats the config file."""
    from flora_batch.manifest import load_manifest

    m = load_manifest(write_batch(tmp_path, extra="concurrency: 5\nledger: m.db\n"
                                  "assets: {workspace_id: ws_manifest}\n"))
    file = userconfig.UserConfig(tmp_path / "c.toml", {
        "concurrency": 3, "ledger": "~/file.db", "workspace_id": "ws_file",
        "api_key": "sk_test_file"})
    environ = {"FLORA_LEDGER": "env.db", "FLORA_WORKSPACE_ID": "ws_env",
               "FLORA_API_KEY": "sk_test_env"}
    flag = resolve(_parsed(ledger="flag.db", concurrency=9, workspace_id="ws_flag"),
                   env=environ, config=file, manifest=m)
    assert (flag.ledger, flag.concurrency, flag.workspace_id) == ("flag.db", 9, "ws_flag")
    assert flag.api_key == "sk_test_env"
    by_env = resolve(_parsed(), env=environ, config=file, manifest=m)
    assert (by_env.ledger, by_env.concurrency, by_env.workspace_id) == ("env.db", 3, "ws_env")
    by_file = resolve(_parsed(), env={}, config=file, manifest=m)
    assert by_file.ledger == str(Path("~/file.db").expanduser()) and by_file.concurrency == 3
    assert by_file.workspace_id == "ws_manifest" and by_file.api_key == "sk_test_file"
    by_manifest = resolve(_parsed(), env={}, config=userconfig.UserConfig(), manifest=m)
    assert (by_manifest.ledger, by_manifest.concurrency) == (str(tmp_path / "m.db"), 5)
    assert by_manifest.results == m.output_dir
    nothing = resolve(_parsed(), env={}, config=userconfig.UserConfig())
    assert nothing == Settings()


def test_demo_emulator_stands_in_for_flora_and_shortens_only_a_default_timeout():
    """--demo: the emulator's URL, key and workspace beat any flag; a typed --timeout stays."""
    here = Emulated("http://127.0.0.1:1/api/v1", "sk_test_emulator", "ws_emulator")
    said = resolve(_parsed(base_url="https://x/api/v1", workspace_id="ws_mine"),
                   env={"FLORA_API_KEY": "sk_test_mine"}, config=userconfig.UserConfig(),
                   emulator=here)
    assert (said.base_url, said.api_key, said.workspace_id) == (
        here.base_url, here.api_key, here.workspace_id)
    assert said.timeout == DEMO_TIMEOUT
    typed = resolve(_parsed(timeout=60.0), env={}, config=userconfig.UserConfig(), emulator=here)
    assert typed.timeout == 60.0


def test_a_bad_value_in_the_config_file_names_the_file_and_the_key(tmp_path: Path):
    """concurrency = 0 in the file: a ConfigError naming the file and the key (exit 2)."""
    bad = userconfig.UserConfig(tmp_path / "c.toml", {"concurrency": 0})
    with pytest.raises(ConfigError, match=r"c\.toml: concurrency: 0 is not in the range"):
        resolve(_parsed(), env={}, config=bad)


def _config(tmp: Path, text: str) -> None:
    path = tmp / "xdg" / "flora-batch" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


def test_ledger_precedence_through_the_real_cli(emulator, run_cli, tmp_path: Path):
    """`plan --json` names the ledger from the flag, else FLORA_LEDGER, else the config file,
    else the manifest's ledger:, else <name>.ledger.db beside the manifest."""
    server = emulator()
    folder = tmp_path / "b"
    manifest = write_batch(folder, extra="ledger: from-manifest.db\n")
    _config(tmp_path, f'ledger = "{tmp_path / "from-file.db"}"\n')
    user = env(tmp_path, server, FLORA_LEDGER=str(tmp_path / "from-env.db"))

    def ledger(*flags: str, environ: dict[str, str] = user) -> str:
        res = run_cli("plan", str(manifest), "--json", *flags, env=environ)
        assert res.code == 0, res.text
        return str(as_json(res)["ledger"])

    assert ledger("--ledger", str(tmp_path / "from-flag.db")) == str(tmp_path / "from-flag.db")
    assert ledger() == str(tmp_path / "from-env.db")
    del user["FLORA_LEDGER"]
    assert ledger() == str(tmp_path / "from-file.db")
    _config(tmp_path, "")
    assert ledger() == str(folder / "from-manifest.db")
    write_batch(folder)
    assert ledger() == str(folder / "shop.ledger.db")


def test_help_works_whatever_the_config_file_says(run_cli, tmp_path: Path):
    """A broken config file stops the commands that read it, never `--help`."""
    _config(tmp_path, "concurrency = [\n")
    assert run_cli("run", "--help", env=env(tmp_path)).code == 0
    res = run_cli("status", "--ledger", "x.db", env=env(tmp_path))
    assert res.code == 2 and "not valid TOML" in res.err


def test_rate_is_never_negative(emulator, run_cli, tmp_path: Path):
    """`run --rate -1` is a usage error (exit 2), as it always was for `submit`."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    res = run_cli("run", str(manifest), *FAST, "--rate", "-1", env=env(tmp_path, server))
    assert res.code == 2 and "--rate" in res.err
