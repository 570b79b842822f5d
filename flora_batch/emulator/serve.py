"""The emulator on a real socket: ``start_server`` (uvicorn in a daemon thread) and the
``flora-batch emulator`` click command.

``start_server`` returns once the socket listens, with the actual port (pass ``port=0``
to let the OS pick one), so end-to-end tests and ``flora-batch run --demo`` can point a
client at ``handle.base_url``.  Deliberate connection drops (``ConnectionDropped``) are
kept out of uvicorn's error log: they are the point, not a bug.

The command's banner prints the base URL, the API key and the workspace id
(``--workspace-id``, default ``ws_emulator``) that a client needs as
``FLORA_WORKSPACE_ID`` for asset uploads.  The switches that make the emulator as hard as
the contract allows (``EmulatorConfig``'s ``clock_skew`` … ``media_quirks``) each have a
flag of the same name, all off by default; ``--state-file`` keeps the state across
restarts.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import click
import uvicorn

from .app import Emulator
from .config import DEFAULT_API_KEY, WORKSPACE_ID, EmulatorConfig
from .faults import FaultPlan
from .media import HAVE_AV, NO_AV_NOTE
from .responses import ConnectionDropped

STARTUP_TIMEOUT = 10.0
KEEP_ALIVE = 75  # seconds an idle kept-alive connection stays open


class _HideDrops(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" records for deliberate drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


_FILTER = _HideDrops()


@dataclass
class ServerHandle:
    """A running emulator server; ``stop()`` (or leaving a ``with`` block) shuts it down."""

    emulator: Emulator
    host: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def origin(self) -> str:
        """``http://host:port``, where media and admin routes live."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, ``http://host:port/api/v1``."""
        return f"{self.origin}/api/v1"

    @property
    def api_key(self) -> str:
        """The bearer key the server accepts."""
        return self.emulator.config.api_key

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
) -> ServerHandle:
    """Serve a new emulator with uvicorn in a daemon thread; returns once it listens.

    Raises:
        RuntimeError: if the server did not start within ``STARTUP_TIMEOUT`` seconds
            (for example, the port is taken).
    """
    emulator = Emulator(config)
    logging.getLogger("uvicorn.error").addFilter(_FILTER)
    sock = _bind(host, port)
    uv_config = uvicorn.Config(
        emulator.app,
        log_level=log_level,
        lifespan="off",
        access_log=False,
        # Real load balancers keep idle connections 60 s or more; uvicorn's 5 s races a
        # client that reuses a connection idle ~5 s (a create then reads as ambiguous).
        timeout_keep_alive=KEEP_ALIVE,
    )
    server = uvicorn.Server(uv_config)
    thread = threading.Thread(target=_run, args=(server, sock), name="flora-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the emulator did not start on {host}:{port}")
        time.sleep(0.01)
    bound = sock.getsockname()[1]
    return ServerHandle(emulator, host, int(bound), server, thread)


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket, bound here so a taken port fails in the caller's thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every small reply on a kept-alive connection waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"the emulator did not start on {host}:{port}: {exc}") from exc
    return sock


def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    """The server thread: uvicorn exits the process on some errors; keep that in the thread."""
    try:
        server.run(sockets=[sock])
    except SystemExit:  # pragma: no cover - uvicorn gave up; start_server reports it
        pass
    finally:
        sock.close()


def _banner(handle: ServerHandle, config: EmulatorConfig) -> str:
    faults = config.faults.to_string() or "none"
    curl = (
        f'curl -s -H "Authorization: Bearer {handle.api_key}" '
        f"{handle.base_url}/techniques/icon-pack"
    )
    return "\n".join(
        [
            f"FLORA emulator listening on {handle.base_url}",
            f"API key: {handle.api_key}",
            f"Workspace: {config.workspace_id} (set FLORA_WORKSPACE_ID={config.workspace_id})",
            f"dialect={config.dialect} speed={config.speed:g} idempotency={config.idempotency} "
            f"faults={faults}",
            f"hard switches: {_hard_summary(config)}",
            f"Try:   {curl}",
            f"State: {handle.origin}/_emulator/state"
            + (f" (kept in {config.state_file})" if config.state_file else ""),
            *([] if HAVE_AV else [NO_AV_NOTE]),
            "Press Ctrl-C to stop.",
        ]
    )


def _hard_summary(config: EmulatorConfig) -> str:
    changed = config.hard_switches()
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "none"


def _serve_until_interrupted(handle: ServerHandle) -> None:
    """Block until Ctrl-C or SIGTERM, then stop the server cleanly."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop.is_set() and handle.thread.is_alive():
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        handle.stop()


def _parse_faults(ctx: click.Context, param: click.Parameter, value: str | None) -> FaultPlan:
    try:
        return FaultPlan.parse(value or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


EMULATOR_EXAMPLES = """
\b
Examples:
  flora-batch emulator --port 8787 --speed 30     # then: FLORA_BASE_URL=http://127.0.0.1:8787/api/v1
  flora-batch emulator --faults "seed=7,rate_limit=0.1,run_failure=0.05"
  flora-batch emulator --bill-factor 1.5 --quote missing --create-latency 0.5 \\
      --no-merge-concurrent-creates --other-clients 0.3 --history-page-cap 5
  flora-batch emulator --state-file emulator-state.json   # remembers runs across restarts
"""

#: The flags of the switches that make the emulator harder (``EmulatorConfig`` fields of
#: the same names), all off by default.
_HARD_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--clock-skew",
        type=float,
        default=0.0,
        metavar="S",
        help="Add S seconds (may be negative) to every timestamp the API renders.",
    ),
    click.option(
        "--bill-factor",
        type=click.FloatRange(min=0, min_open=True),
        default=1.0,
        metavar="X",
        help="Bill each run X times its technique's cost (the poll's charged_cost too).",
    ),
    click.option(
        "--quote",
        type=click.Choice(["exact", "zero", "missing"]),
        default="exact",
        show_default=True,
        help="The run_cost technique lookups show (runs are billed the real cost anyway).",
    ),
    click.option(
        "--create-latency",
        type=click.FloatRange(min=0),
        default=0.0,
        metavar="S",
        help="Real seconds a create spends between its key lookup and booking the run.",
    ),
    click.option(
        "--merge-concurrent-creates/--no-merge-concurrent-creates",
        default=True,
        show_default=True,
        help="A same-key create during another's latency waits for it (else both are billed).",
    ),
    click.option(
        "--other-clients",
        type=click.FloatRange(0, 1),
        default=0.0,
        metavar="P",
        help="Chance that others in the workspace run the same technique beside each create.",
    ),
    click.option(
        "--other-clients-spread",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        metavar="S",
        help="Their runs are stamped within ±S seconds of ours.",
    ),
    click.option(
        "--other-clients-burst",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        metavar="N",
        help="How many runs others make each time.",
    ),
    click.option(
        "--history-delay",
        type=click.FloatRange(min=0),
        default=0.0,
        metavar="S",
        help="A run shows in GET /technique-runs only S seconds after its created_at.",
    ),
    click.option(
        "--history-page-cap",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="At most N run-history items per page, whatever limit asks.",
    ),
    click.option(
        "--duplicate-status",
        type=click.Choice(["400", "404", "422"]),
        default=None,
        help="Answer a repeated live key with this status (creating nothing) "
        "instead of replay/409.",
    ),
    click.option(
        "--media-quirks",
        is_flag=True,
        help="SVG outputs start with an XML prolog; AVIF/HEIC are sent as octet-stream.",
    ),
    click.option(
        "--state-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Keep the whole state in this JSON file: loaded at start, rewritten after "
        "every change.",
    ),
]


def _hard_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the ``_HARD_OPTIONS`` flags to a click command (gathered in ``hard``)."""
    for option in reversed(_HARD_OPTIONS):
        fn = option(fn)
    return fn


# Its own help names: click caches a command's help option the first time it is built, so
# inheriting them from the flora-batch group would depend on who asked first.
@click.command(
    "emulator",
    epilog=EMULATOR_EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8787, show_default=True, help="Port to bind (0: any free port).")
@click.option("--speed", default=1.0, show_default=True, help="Divide run times by this.")
@click.option(
    "--dialect", type=click.Choice(["snake", "camel"]), default="snake", show_default=True
)
@click.option(
    "--idempotency", type=click.Choice(["replay", "conflict"]), default="replay", show_default=True
)
@click.option("--key-window", type=float, default=None, help="Forget keys after S seconds.")
@click.option("--balance", type=float, default=None, help="USD credit; 402 once spent.")
@click.option(
    "--faults",
    "fault_plan",
    default="",
    callback=_parse_faults,
    help='Fault plan, e.g. "seed=7,rate_limit=0.1,drop_after_create=0.05".',
)
@click.option("--media-ttl", type=float, default=None, help="Output URLs expire after S seconds.")
@click.option("--max-running", type=int, default=None, help="At most N runs running at once.")
@click.option("--api-key", default=DEFAULT_API_KEY, show_default=True, help="Bearer key to accept.")
@click.option(
    "--workspace-id",
    default=WORKSPACE_ID,
    show_default=True,
    help="The workspace (ws_…) asset uploads must name; give it to clients as FLORA_WORKSPACE_ID.",
)
@_hard_options
def emulator_command(
    host: str,
    port: int,
    speed: float,
    dialect: str,
    idempotency: str,
    key_window: float | None,
    balance: float | None,
    fault_plan: FaultPlan,
    media_ttl: float | None,
    max_running: int | None,
    api_key: str,
    workspace_id: str,
    duplicate_status: str | None,
    **hard: Any,
) -> None:
    """Run a local FLORA API emulator until Ctrl-C.

    It speaks FLORA's REST API (techniques, runs, run history, asset uploads) over an
    in-memory state, serves real output files, and can inject faults.  Point flora-batch
    (or any FLORA client) at the printed base URL with the printed API key and workspace.

    The flags from --clock-skew to --media-quirks make it behave as the contract says
    FLORA may (skewed clocks, bills above quotes, unmerged same-key creates, other
    clients' runs in the history, capped history pages, 4xx to a repeated key, odd
    media); all are off by default.
    """
    try:
        config = EmulatorConfig(
            api_key=api_key,
            dialect=dialect,  # type: ignore[arg-type]  # click.Choice guarantees the value
            idempotency=idempotency,  # type: ignore[arg-type]
            key_window=key_window,
            speed=speed,
            balance=balance,
            faults=fault_plan,
            media_ttl=media_ttl,
            max_running=max_running,
            workspace_id=workspace_id,
            duplicate_status=int(duplicate_status) if duplicate_status else None,
            **hard,
        )
        handle = start_server(config, host=host, port=port)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_banner(handle, config))
    _serve_until_interrupted(handle)
    click.echo("Emulator stopped.")
