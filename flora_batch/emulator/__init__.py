"""A local FLORA API emulator: in-memory, fault-injecting, inspectable.

Three ways to use one: in-process through ``httpx.ASGITransport(app=emu.app)``; as a
real server (``serve.start_server`` or ``flora-batch emulator``); embedded by
``flora-batch run --demo``.  It imports nothing from flora-batch but ``wire`` and
``types``, so it cannot share a bug with the client it tests.

>>> from flora_batch.emulator import Emulator, EmulatorConfig, ManualClock
>>> clock = ManualClock()
>>> emu = Emulator(EmulatorConfig(speed=10, clock=clock))
>>> len(emu.catalog)
38
"""

from .app import (
    CREATE,
    LIST_RUNS,
    MEDIA,
    POLL,
    POLL_ANY,
    ROUTES,
    TECHNIQUE,
    TECHNIQUES,
    Emulator,
    create_app,
)
from .catalog import Catalog, SlotDef, TechniqueDef, load_catalog
from .config import DEFAULT_API_KEY, PROJECT_ID, WORKSPACE_ID, EmulatorConfig, ManualClock
from .faults import FaultKind, FaultPlan
from .problems import ApiProblem
from .responses import ConnectionDropped
from .runs import RunRecord
from .state import Charge, EmulatorState

__all__ = [
    "CREATE",
    "DEFAULT_API_KEY",
    "LIST_RUNS",
    "MEDIA",
    "POLL",
    "POLL_ANY",
    "PROJECT_ID",
    "ROUTES",
    "TECHNIQUE",
    "TECHNIQUES",
    "WORKSPACE_ID",
    "ApiProblem",
    "Catalog",
    "Charge",
    "ConnectionDropped",
    "Emulator",
    "EmulatorConfig",
    "EmulatorState",
    "FaultKind",
    "FaultPlan",
    "ManualClock",
    "RunRecord",
    "SlotDef",
    "TechniqueDef",
    "create_app",
    "load_catalog",
]
