"""Where outputs are saved: ``local`` (a folder, atomically: ``Results``) and ``objects``
(what many workers share: a folder, or an ``s3://`` prefix: ``open_results``).

Import from those modules; this package's face imports nothing, so ``results.local``
does not pull in the object store's client.
"""
