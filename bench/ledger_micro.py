"""Micro-benchmark of the ledger's write path: CPU per job on a SQLite file.

``python -m bench.ledger_micro [N]`` records N planned jobs (one ``record_planned``), then
pushes each through what the worker does per job: ``mark_submitting``, ``mark_running``,
``mark_downloading`` (two outputs), one ``get``, and each file's ``save_output`` (the second
one finishes the job).  With ``--combined`` the run has one output, so ``finish_run`` records
the run's end and the file at once (the worker's usual path: three transactions per job).
It prints the process CPU (``time.process_time``: user + system, so fsync's kernel work
counts, its wait does not) and the wall time, per job.  Compare runs made on the same
machine at the same time only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from flora_batch.ledger import Ledger
from flora_batch.types import JobKey, JobSpec, RunInput, RunOutput

_OUTPUTS = (
    RunOutput("output_1", "imageUrl", "https://media.example/1.png"),
    RunOutput("output_2", "imageUrl", "https://media.example/2.png"),
)


def _specs(n: int) -> list[tuple[JobKey, JobSpec]]:
    """N distinct one-input jobs of one batch."""
    return [
        (
            JobKey(f"fk1:{i:032x}"),
            JobSpec(
                batch="bench",
                technique="wireframe",
                inputs=(RunInput("prompt", "text", f"a cat, take {i}"),),
                row_index=i,
                row={"prompt": f"a cat, take {i}"},
                source=f"rows.csv:{i + 2}",
            ),
        )
        for i in range(n)
    ]


def _one_job(
    ledger: Ledger, key: JobKey, now: float, *, combined: bool, grouped: bool = False
) -> None:
    """The ledger calls the worker makes for one job (create, one poll, one download)."""
    ledger.mark_submitting(key, now=now, grouped=grouped)
    ledger.mark_running(key, f"run_{key[-8:]}", now=now, request_id="req_1")
    if combined:  # one output: the run's end and its file in one commit
        path, sha = f"out/{key[-8:]}-output_1.png", "ab" * 32
        ledger.finish_run(
            key, _OUTPUTS[0], path=path, size=4096, sha256=sha, content_type="image/png",
            now=now, charged_cost=0.25,
        )  # fmt: skip
        return
    ledger.mark_downloading(key, _OUTPUTS, now=now, charged_cost=0.25)
    ledger.get(key)
    for out in _OUTPUTS:
        path, sha = f"out/{key[-8:]}-{out.output_id}.png", "ab" * 32
        ledger.save_output(
            key, out.output_id, path=path, size=4096, sha256=sha, content_type="image/png", now=now
        )


def measure(n: int, *, combined: bool, grouped: int = 0) -> dict[str, float]:
    """Milliseconds of CPU and wall per job for ``record_planned`` and the transitions.

    ``grouped``: commits are grouped as in a batch (``group_commits``), one commit per
    this many jobs (the worker commits every 20 ms: ~20 transitions in scenario 1).
    """
    with tempfile.TemporaryDirectory() as tmp, Ledger.open(Path(tmp) / "micro.ledger") as ledger:
        specs = _specs(n)
        cpu0 = time.process_time()
        ledger.record_planned(specs, quoted_cost={"wireframe": 0.25}, now=1.0)
        if grouped:
            ledger.group_commits(lambda _delay, _commit: None)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        for i, (key, _) in enumerate(specs, 1):
            _one_job(ledger, key, 2.0, combined=combined, grouped=bool(grouped))
            if grouped and i % grouped == 0:
                ledger.flush()
        ledger.flush()
        cpu2, wall2 = time.process_time(), time.perf_counter()
    per = 1000.0 / n
    return {
        "plan_cpu": (cpu1 - cpu0) * per,
        "cpu": (cpu2 - cpu1) * per,
        "wall": (wall2 - wall1) * per,
    }


def main() -> None:
    """Parse the arguments, run once, print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=3000, help="jobs (default 3000)")
    parser.add_argument("--combined", action="store_true", help="one output, not two")
    parser.add_argument(
        "--grouped",
        type=int,
        default=0,
        metavar="JOBS",
        help="group commits as a batch does, one commit per JOBS jobs",
    )
    args = parser.parse_args()
    got = measure(args.n, combined=args.combined, grouped=args.grouped)
    mode = "one output, finish_run" if args.combined else "two outputs, two save_output"
    print(f"ledger micro-benchmark: {args.n} jobs on SQLite, last step {mode}")
    print(f"  record_planned CPU/job   {got['plan_cpu']:.3f} ms")
    print(f"  transitions    CPU/job   {got['cpu']:.3f} ms")
    print(f"  transitions   wall/job   {got['wall']:.3f} ms")


if __name__ == "__main__":
    main()
