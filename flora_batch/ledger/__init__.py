"""The ledger: the database that records every job's state (see ``store``).

Only this package imports SQLAlchemy and Alembic.  ``Ledger.open(path_or_url)`` creates
or migrates the database and returns the one object the rest of flora-batch talks to.
"""

from __future__ import annotations

from .store import Ledger

__all__ = ["Ledger"]
