"""FLORA over HTTP: ``client.FloraClient`` is the only door; ``transport`` is its default
(aiohttp) transport, ``url_policy`` which URLs may be fetched, ``sniff`` whether a
downloaded body is the kind of file its output promises."""

from .client import Downloaded, FloraClient, RunHistory

__all__ = ["Downloaded", "FloraClient", "RunHistory"]
