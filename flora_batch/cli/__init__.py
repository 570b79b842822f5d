"""The command line: ``main`` (``run``, ``plan``, exit codes), ``options`` shared by several
commands, ``toolbox`` (``techniques``, ``init``, ``status``, ``report``), ``cluster``
(``submit``, ``worker``), ``progress``, ``scaffold``, ``userconfig``, ``docs``."""

from .main import cli, main

__all__ = ["cli", "main"]
