"""Random sequences of transitions and crashes, checked against a model of the design.

Hypothesis drives three jobs through random moves (legal or not), saves and loses
output files, sets late bills and "crashes" (closes the ledger and opens it again).
After every step the ledger must agree with a small in-memory model, and:

* a job never gets two different run ids for one idempotency key;
* a job whose run was known only goes back to ``planned`` through ``retry_failed`` or
  ``resubmit_unresolved``, with an idempotency key never used before;
* a run id belongs to one job, for ever (old attempts included);
* ``money()`` equals the bills and reservations of the model (the larger of the quote
  and the highest bill seen for the technique).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from ledger_support import OUTPUTS, Opener

from flora_batch.errors import LedgerConflict
from flora_batch.ledger import Ledger
from flora_batch.types import JobKey, JobSpec, JobState, RunInput

S = JobState
QUOTE = 0.5
RESERVING = {S.SUBMITTING, S.RUNNING, S.NEEDS_RECONCILE, S.UNRESOLVED, S.DOWNLOADING, S.DONE}
TRANSITIONS = [
    "mark_submitting", "release_unsent", "mark_running", "mark_needs_reconcile",
    "mark_unresolved", "resubmit_unresolved", "mark_downloading", "mark_done",
    "finish_run", "reopen_download", "mark_failed", "retry_failed", "mark_lost",
    "reopen_lost",
]  # fmt: skip
JOBS = st.integers(min_value=0, max_value=2)
COSTS = st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.75]))
OUTPUT_IDS = st.sampled_from([o.output_id for o in OUTPUTS])
RUNS = st.sampled_from(["r_a", "r_b", "r_c"])


@dataclass
class JobModel:
    """What the ledger should hold for one job."""

    state: JobState = S.PLANNED
    run_id: str | None = None
    attempt: int = 1
    charged: float | None = None
    charged_before: float = 0.0
    saved: dict[str, bool] = field(default_factory=dict)
    error: bool = False  # the job records an error (failed, or its run lost)

    def legal(self, action: str, run: str, owner: str | None = None, me: str = "") -> bool:
        """Whether ``action`` may apply now (the design's arrows, written out)."""
        sources = {
            "mark_submitting": {S.PLANNED},
            "release_unsent": {S.SUBMITTING, S.NEEDS_RECONCILE},
            "mark_running": {S.SUBMITTING, S.NEEDS_RECONCILE, S.UNRESOLVED},
            "mark_needs_reconcile": {S.SUBMITTING},
            "mark_unresolved": {S.SUBMITTING, S.NEEDS_RECONCILE},
            "resubmit_unresolved": {S.UNRESOLVED},
            "mark_lost": {S.RUNNING, S.DOWNLOADING},
            "reopen_lost": {S.UNRESOLVED},
            "mark_downloading": {S.RUNNING},
            "mark_done": {S.DOWNLOADING},
            "finish_run": {S.RUNNING},
            "reopen_download": {S.DONE},
            "mark_failed": {S.SUBMITTING, S.RUNNING, S.DOWNLOADING, S.NEEDS_RECONCILE},
            "retry_failed": {S.FAILED},
        }[action]
        if action == "mark_running" and self.state == S.RUNNING:
            return self.run_id == run
        if action == "mark_running" and owner not in (None, me):
            return False  # another job's run, now or in an earlier attempt
        if action == "mark_running" and self.run_id is not None:
            return False  # a lost job is reopened, never given another run
        if action == "reopen_lost" and self.run_id is None:
            return False
        if action == "mark_done" and not all(self.saved.values()):
            return False
        return self.state in sources

    def apply(self, action: str, run: str, cost: float | None) -> None:
        """Change the model as the legal ``action`` changes the job."""
        target = {
            "mark_submitting": S.SUBMITTING, "release_unsent": S.PLANNED,
            "mark_running": S.RUNNING, "mark_needs_reconcile": S.NEEDS_RECONCILE,
            "mark_unresolved": S.UNRESOLVED, "resubmit_unresolved": S.PLANNED,
            "mark_downloading": S.DOWNLOADING, "mark_done": S.DONE, "finish_run": S.DONE,
            "reopen_download": S.DOWNLOADING, "mark_failed": S.FAILED,
            "retry_failed": S.PLANNED, "mark_lost": S.UNRESOLVED, "reopen_lost": S.RUNNING,
        }[action]  # fmt: skip
        if action == "mark_running" and self.state == S.RUNNING:
            return  # the same run reported twice: nothing changes
        billed = ("mark_running", "mark_downloading", "finish_run", "mark_failed")
        if action in billed and cost is not None:
            self.charged = cost
        if action in ("mark_failed", "mark_lost"):
            self.error = True
        elif action in ("mark_running", "reopen_lost", "retry_failed", "resubmit_unresolved"):
            self.error = False
        elif action in ("mark_needs_reconcile", "mark_unresolved"):
            self.error = False  # a reason, not an error code
        if action == "mark_running":
            self.run_id = run
        elif action == "mark_downloading":
            self.saved = {o.output_id: self.saved.get(o.output_id, False) for o in OUTPUTS}
        elif action == "finish_run":  # a run with one output, its file saved
            self.saved = {OUTPUTS[0].output_id: True}
        elif action in ("retry_failed", "resubmit_unresolved"):
            self.charged_before += self.charged or 0.0
            self.charged, self.run_id, self.saved = None, None, {}
            self.attempt += 1
        self.state = target


def call(
    ledger: Ledger, action: str, key: JobKey, run: str, cost: float | None, now: float
) -> None:
    """Invoke one transition by name."""
    if action == "mark_running":
        ledger.mark_running(key, run, now=now, charged_cost=cost)
    elif action == "mark_downloading":
        ledger.mark_downloading(key, OUTPUTS, now=now, charged_cost=cost)
    elif action == "finish_run":
        ledger.finish_run(
            key, OUTPUTS[0], path="p", size=1, sha256="00", now=now, charged_cost=cost
        )
    elif action == "mark_failed":
        ledger.mark_failed(
            key, code="provider_error", message="m", category="retryable", now=now,
            charged_cost=cost,
        )  # fmt: skip
    elif action in ("release_unsent", "mark_needs_reconcile", "mark_unresolved", "mark_lost"):
        getattr(ledger, action)(key, now=now, reason="test")
    else:
        getattr(ledger, action)(key, now=now)


class LedgerMachine(RuleBasedStateMachine):
    """Three jobs under random moves; subclasses set ``opener`` to pick the database."""

    opener: Callable[[], Ledger]

    def __init__(self) -> None:
        super().__init__()
        self.ledger = self.opener()
        self.batch = uuid.uuid4().hex
        self.keys = [JobKey(f"fk1:{self.batch}:{i}") for i in range(3)]
        tech = f"tech-{self.batch}"  # bills are per technique, ledger-wide: one per example
        specs = [
            (k, JobSpec(batch=self.batch, technique=tech, row_index=i,
                        inputs=(RunInput("prompt", "text", str(i)),)))
            for i, k in enumerate(self.keys)
        ]  # fmt: skip
        self.ledger.record_planned(specs, quoted_cost={tech: QUOTE}, now=0.0)
        self.model = {k: JobModel() for k in self.keys}
        self.run_of: dict[str, str] = {}  # idempotency key -> the run it created
        self.owner: dict[str, JobKey] = {}  # run id -> the job it belongs to, for ever
        self.keys_sent: set[str] = set()
        self.clock = 1.0

    def scoped(self, run: str) -> str:
        """This example's spelling of a run id: run ids are ledger-wide, for ever."""
        suffix = f"-{self.batch}"
        return run if run.endswith(suffix) else run + suffix

    def teardown(self) -> None:
        self.ledger.close()

    def attempt(self, key: JobKey, legal: bool, change: Callable[[], object]) -> None:
        """Run ``change``; it must succeed iff ``legal``, and change nothing if not."""
        before, log = self.ledger.get(key), self.ledger.events(key)
        try:
            change()
        except LedgerConflict:
            assert not legal, f"legal change refused for {before.state}"
            assert self.ledger.get(key) == before
            assert self.ledger.events(key) == log
        else:
            assert legal, f"illegal change applied to {before.state}"
        self.clock += 1.0

    @rule(i=JOBS, action=st.sampled_from(TRANSITIONS), run=RUNS, cost=COSTS)
    def transition(self, i: int, action: str, run: str, cost: float | None) -> None:
        self.move(self.keys[i], action, run, cost)

    @rule(i=JOBS, pick=st.integers(min_value=0, max_value=10), run=RUNS, cost=COSTS)
    def advance(self, i: int, pick: int, run: str, cost: float | None) -> None:
        """A legal move, so that jobs get deep into the diagram (done, failed, retried)."""
        model = self.model[self.keys[i]]
        unsaved = [o for o, done in model.saved.items() if not done]
        if model.state == S.DOWNLOADING and unsaved and pick % 4:
            self.save_and_finish(i, unsaved[0])
            return
        run = model.run_id or self.scoped(run)
        owner = self.owner.get(run)
        legal = [a for a in TRANSITIONS if model.legal(a, run, owner, self.keys[i])]
        self.move(self.keys[i], legal[pick % len(legal)], run, cost)

    @rule(i=JOBS, run=RUNS)
    def probe(self, i: int, run: str) -> None:
        """Every move the model forbids from the job's current state is refused."""
        model = self.model[self.keys[i]]
        run = self.scoped(run)
        for action in TRANSITIONS:
            if not model.legal(action, run, self.owner.get(run), self.keys[i]):
                self.move(self.keys[i], action, run, None)

    def move(self, key: JobKey, action: str, run: str, cost: float | None) -> None:
        """Try one transition and check it against the model and the invariants."""
        run = self.scoped(run)
        model = self.model[key]
        before = self.ledger.get(key)
        legal = model.legal(action, run, self.owner.get(run), key)
        self.attempt(key, legal, lambda: call(self.ledger, action, key, run, cost, self.clock))
        if legal:
            model.apply(action, run, cost)
            if action == "mark_running":
                self.owner.setdefault(run, key)
        after = self.ledger.get(key)
        event(f"{action} {'applied' if legal else 'refused'}")
        if before.run_id is not None and after.state == S.PLANNED:
            assert action in ("retry_failed", "resubmit_unresolved")
            assert after.idempotency_key not in self.keys_sent
        if action == "mark_submitting" and legal:
            self.keys_sent.add(after.idempotency_key)

    @rule(i=JOBS, output_id=OUTPUT_IDS)
    def save_and_finish(self, i: int, output_id: str) -> None:
        """``save_output``: the file, and ``done`` with it once every output is saved."""
        key, model = self.keys[i], self.model[self.keys[i]]
        legal = model.state == S.DOWNLOADING and output_id in model.saved
        got: list[object] = []
        self.attempt(key, legal, lambda: got.append(self.ledger.save_output(
            key, output_id, path="p", size=1, sha256="00", now=self.clock
        )))  # fmt: skip
        if legal:
            model.saved[output_id] = True
            if all(model.saved.values()):
                model.state = S.DONE
            assert got == [self.ledger.get(key)]

    @rule(i=JOBS, output_id=OUTPUT_IDS)
    def lose_output(self, i: int, output_id: str) -> None:
        key, model = self.keys[i], self.model[self.keys[i]]
        legal = output_id in model.saved
        self.attempt(key, legal, lambda: self.ledger.clear_output_file(key, output_id))
        if legal:
            model.saved[output_id] = False

    @rule(i=JOBS, cost=st.sampled_from([0.0, 0.2, 1.25]))
    def late_bill(self, i: int, cost: float) -> None:
        key = self.keys[i]
        self.attempt(key, True, lambda: self.ledger.set_charged(key, cost, now=self.clock))
        self.model[key].charged = cost

    @rule()
    def crash(self) -> None:
        self.ledger.close()
        self.ledger = self.opener()

    @invariant()
    def agrees_with_model(self) -> None:
        for key, model in self.model.items():
            rec = self.ledger.get(key)
            expected_key = key if model.attempt == 1 else f"{key}-r{model.attempt}"
            assert (rec.state, rec.run_id, rec.attempt, rec.idempotency_key) == (
                model.state, model.run_id, model.attempt, expected_key,
            )  # fmt: skip
            assert rec.charged_cost == model.charged
            assert {o.output_id: o.sha256 is not None for o in rec.outputs} == model.saved

    @invariant()
    def one_run_per_key(self) -> None:
        for key in self.keys:
            rec = self.ledger.get(key)
            if rec.run_id is not None:
                assert self.run_of.setdefault(rec.idempotency_key, rec.run_id) == rec.run_id

    @invariant()
    def money_is_consistent(self) -> None:
        models = self.model.values()
        spent = sum(m.charged_before + (m.charged or 0.0) for m in models)
        told = [m.charged for m in models if m.charged is not None and (not m.error or m.charged)]
        each = max([QUOTE, *told])
        owed = [m for m in models if m.charged is None and self.owes(m)]
        reserved = each * len(owed)
        got_spent, got_reserved = self.ledger.money(self.batch)
        assert math.isclose(got_spent, spent, abs_tol=1e-9)
        assert math.isclose(got_reserved, reserved, abs_tol=1e-9)

    @staticmethod
    def owes(model: JobModel) -> bool:
        """Whether the job may have a run whose bill is still owed (``queries.unbilled``)."""
        failed_run = model.state == S.FAILED and model.run_id is not None
        return model.state in RESERVING or failed_run


def test_random_transitions_keep_the_promises(open_ledger: Opener, ledger_url: str) -> None:
    """Any sequence of moves, file losses, late bills and crashes keeps the invariants."""
    examples = 15 if ledger_url.endswith(".ledger") else 6
    machine = type("Machine", (LedgerMachine,), {"opener": staticmethod(open_ledger)})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=examples, stateful_step_count=40, deadline=None),
    )
