"""Which URLs flora-batch may fetch: HTTPS, plain HTTP from loopback only, public hosts.

Output URLs and their redirects come from FLORA's answers, so they are checked before
each request (client.py ``download``): an output must not pull a file from the user's own
network, and HTTPS never redirects down to HTTP.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from ..errors import ResponseRefused


@functools.lru_cache(maxsize=1024)  # asked for every request's host: a batch meets few hosts
def is_loopback(host: str | None) -> bool:
    """Loopback hosts are the only ones allowed to serve plain HTTP (the emulator)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def is_local(host: str | None) -> bool:
    """``localhost`` or an IP address that is not public (loopback, private, link-local).

    Numeric spellings the resolver accepts (``2130706433``, ``0x7f.1``) count as IPs.
    """
    name = (host or "").strip("[]").lower().rstrip(".")
    if not name or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(name).is_global
    except ValueError:
        pass
    try:
        return not ipaddress.IPv4Address(socket.inet_aton(name)).is_global
    except OSError:
        return False


_ORIGIN_END = re.compile(r"[/?#]")


def check_fetch_url(url: str, *, local_ok: bool = True, previous: str | None = None) -> None:
    """Refuse output URLs that are not HTTPS (plain HTTP only from loopback).

    Args:
        url: where the next request would go.
        local_ok: False refuses ``is_local`` hosts too, so an output URL or a redirect
            cannot reach into the user's own network (the API is not on loopback).
        previous: the URL that redirected here; HTTPS never redirects down to HTTP.
    """
    if previous is None and url.startswith(("https://", "http://")):
        # Only the scheme and host decide, and a batch's outputs come from a few hosts:
        # the verdict on ``scheme://netloc`` (everything before the path) is remembered.
        end = _ORIGIN_END.search(url, url.index("//") + 2)
        _check_origin(url if end is None else url[: end.start()], local_ok)
    else:
        _check(url, local_ok, previous)


@functools.lru_cache(maxsize=256)
def _check_origin(origin: str, local_ok: bool) -> None:
    """``_check`` of an origin; only a pass is remembered (a refusal raises again)."""
    _check(origin, local_ok, None)


def _check(url: str, local_ok: bool, previous: str | None) -> None:
    parts = urlsplit(url)
    host = parts.hostname
    secure = parts.scheme == "https" and bool(host)
    allowed = secure or (parts.scheme == "http" and is_loopback(host))
    if not allowed or (previous and urlsplit(previous).scheme == "https" and not secure):
        raise ResponseRefused(f"refusing to download from {parts.scheme}://{host or ''}: not HTTPS")
    if not local_ok and is_local(host):
        raise ResponseRefused(
            f"refusing to download from {parts.scheme}://{host or ''}: not a public host"
        )


__all__ = ["check_fetch_url", "is_local", "is_loopback"]
