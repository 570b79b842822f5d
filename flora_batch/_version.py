"""The version, written once: the wheel's metadata reads it from here (pyproject's
``[tool.hatch.version]``), and ``--version`` and the User-Agent read it without
``importlib.metadata``, whose import alone costs ``--version`` about 18 ms
(docs/performance.md §7)."""

__version__ = "0.1.0"
