"""Fixtures for the security tests (defined in security_helpers, importable by the tests)."""

from security_helpers import emulator

__all__ = ["emulator"]
