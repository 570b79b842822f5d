"""Where outputs land: ``local.Results`` (a folder: atomic renames, verification) and
``objects.ObjectResults`` (an ``s3://`` bucket, for cluster workers)."""

from .local import FileSink, Results, ResultStore

__all__ = ["FileSink", "ResultStore", "Results"]
