"""A local FLORA API emulator: in-memory, fault-injecting, inspectable.

It serves techniques, technique runs and run history (CONTRACT.md) and the assets
endpoints with their three upload paths, a fake storage for signed uploads and asset
downloads (ASSETS.md; ``asset_api.py``).  ``emu.assets`` and ``emu.assets_by_sha256()``
let a test check that each file was uploaded exactly once.

Three ways to use one: in-process through ``httpx.ASGITransport(app=emu.app)``; as a
real server (``serve.start_server`` or ``flora-batch emulator``); embedded by
``flora-batch run --demo``.  It imports nothing from flora-batch but ``wire`` and
``types``, so it cannot share a bug with the client it tests.

>>> from flora_batch.emulator import Emulator, EmulatorConfig, ManualClock
>>> clock = ManualClock()
>>> emu = Emulator(EmulatorConfig(speed=10, clock=clock))
>>> len(emu.catalog)
41
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
from .asset_api import (
    ASSET_MEDIA,
    ASSET_ROUTES,
    COMPLETE_ASSET,
    CREATE_ASSET,
    GET_ASSET,
    LIST_ASSETS,
    RETRY_ASSET,
    STORAGE,
)
from .assets import AssetRecord
from .catalog import Catalog, SlotDef, TechniqueDef, load_catalog
from .config import (
    DEFAULT_API_KEY,
    DIRECT_UPLOAD_LIMIT,
    PROJECT_ID,
    WORKSPACE_ID,
    EmulatorConfig,
    ManualClock,
)
from .faults import FaultKind, FaultPlan
from .problems import ApiProblem
from .responses import ConnectionDropped
from .runs import RunRecord
from .state import Charge, EmulatorState

__all__ = [
    "ASSET_MEDIA",
    "ASSET_ROUTES",
    "COMPLETE_ASSET",
    "CREATE",
    "CREATE_ASSET",
    "DEFAULT_API_KEY",
    "DIRECT_UPLOAD_LIMIT",
    "GET_ASSET",
    "LIST_ASSETS",
    "LIST_RUNS",
    "MEDIA",
    "POLL",
    "POLL_ANY",
    "PROJECT_ID",
    "RETRY_ASSET",
    "ROUTES",
    "STORAGE",
    "TECHNIQUE",
    "TECHNIQUES",
    "WORKSPACE_ID",
    "ApiProblem",
    "AssetRecord",
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
