"""The worker: one loop that drives a batch's jobs to their end (``loop.Worker``).

``loop`` is the story of a job (claim, submit, poll, download, reconcile); ``state`` the
state the loop's parts share, the create pacer and what a batch reports; ``tracking``
polls a run and acts on its status, ``polling`` says when to poll next (pure);
``downloads`` saves outputs; ``reconcile`` finds a lost create's run in the history;
``budget`` holds ``max_cost`` (pure).
"""

from .loop import Worker
from .state import Clock, InputResolver, Outcome, Pacer, ProgressHook, Refill, Snapshot

__all__ = [
    "Clock",
    "InputResolver",
    "Outcome",
    "Pacer",
    "ProgressHook",
    "Refill",
    "Snapshot",
    "Worker",
]
