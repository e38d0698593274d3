"""The ask-run-tell loop of a search: each trial is an ablate cell, run by ablate's executors.

A trial is proposed by the sampler, then judged in order of cost: a point that makes no valid variant, a
toggle that changes nothing, a point past the sanity bounds, a constraint broken by its closed-form costs or a
repeat of an earlier point is *pruned* before anything runs. The rest run as cells of the search's trials
folder (an ablate run folder): in a process of their own through :func:`conformer_bench.ablate.runner.run_grid`
(``--executor local``), or as submitit jobs (``slurm``, ``submitit-local``) through
:mod:`conformer_bench.ablate.cluster`. Each cell's record is appended to the folder's store before its trial
is told, so a search killed between the two recovers the trial from its record instead of running it again.
The budget is checked before every ask, under the folder's lock, so processes sharing the study stop at it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..ablate.cluster import grid_states, read_ledger, settle, submit
from ..ablate.experiment import Cell, _changes
from ..ablate.launch import sigterm_as_exit
from ..ablate.progress import GridProgress
from ..ablate.runner import run_grid
from ..ablate.store import Holder, ResultStore
from ..bounds import check_bounds
from ..errors import BenchError
from .cells import CellOutcome, cell_outcome
from .front import metric_text
from .metrics import METRICS, TrialMeasures, cheap_measures
from .spec import Point, SearchSpec, decode, encode, trial_label
from .study import CHANGES, HOLDER, IMG_SIZE, INTERRUPTED, MEASURES, POINT, REASON, RETRY_OF, TrialBook

if TYPE_CHECKING:
    import optuna

MAX_PRUNED_IN_A_ROW = 200  # proposals pruned one after the other before the space counts as exhausted
POLL_S = 2.0


class SearchProgress(Protocol):
    """What a search reports: a trial starts (with a cell progress for its phases), a trial ends, a note."""

    def grid(self) -> GridProgress: ...

    def trial_ended(self, number: int, state: str, text: str, book: TrialBook) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass
class Proposal:
    """A trial the sampler proposed: the point and cell it runs, or why it was pruned."""

    trial: Any
    point: Point | None = None
    cell: Cell | None = None
    pruned: str | None = None


@dataclass
class SearchOutcome:
    stop: str  # why no further trial started
    book: TrialBook
    ran_here: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)  # stale trials told from their record
    interrupted: list[int] = field(default_factory=list)  # stale trials queued again
    adopted: list[int] = field(default_factory=list)  # stale trials whose job still runs, followed here


def sanity_bound_breach(point: Point, force: bool) -> str | None:
    """Why ``point`` is past the sanity bounds every command checks (None: within them, or ``force``)."""
    try:
        check_bounds(point.config, img_size=point.img_size, force=force)
    except BenchError as exc:
        return str(exc)
    return None


class Search:
    """One process's part of a search: settle stale trials, then ask, run and tell until the budget is spent."""

    def __init__(
        self,
        spec: SearchSpec,
        study: optuna.Study,
        progress: SearchProgress,
        *,
        executor: str = "local",
        job_settings: Any = None,
        isolate: bool | None = None,
        force: bool = False,
    ) -> None:
        self.spec, self.study, self.progress = spec, study, progress
        self.executor, self.job_settings = executor, job_settings
        self.isolate, self.force = isolate, force
        self.store = ResultStore(spec.trials_dir)
        self.me = Holder.me()
        self.cells: dict[str, Cell] = {}
        self.in_flight: dict[str, tuple[Any, Point]] = {}  # job executors: label -> (trial, point)
        self.pruned_in_a_row = 0
        self.outcome = SearchOutcome("", TrialBook())

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> SearchOutcome:
        self.settle_stale()
        if self.executor == "local":
            self.outcome.stop = self._run_local()
        else:
            self.outcome.stop = self._run_jobs()
        self.outcome.book = self.book()
        return self.outcome

    def _run_local(self) -> str:

        while True:
            proposal = self._next()
            if isinstance(proposal, str):
                return proposal
            if proposal.cell is None or proposal.point is None:
                continue
            with sigterm_as_exit(), self._interrupts_on_exit(proposal.trial, proposal.point):
                result = run_grid(
                    self.spec.experiment_of(list(self.cells.values())),
                    [proposal.cell],
                    self.spec.trials_dir,
                    finetune=self.spec.plan.finetune,
                    resume=False,
                    progress=self.progress.grid(),
                    isolate=self.isolate,
                )
            record = result.records.get(proposal.cell.label)
            self.finish(proposal.trial, proposal.point, cell_outcome(record) if record is not None else None)
            self.outcome.ran_here.append(proposal.trial.number)

    def _run_jobs(self) -> str:
        stop = ""
        while True:
            while not stop and len(self.in_flight) < self.spec.parallel:
                proposal = self._next()
                if isinstance(proposal, str):
                    stop = proposal
                elif proposal.cell is not None and proposal.point is not None:
                    submit(
                        self._experiment(),
                        [proposal.cell],
                        self.spec.trials_dir,
                        kind=self.executor,
                        settings=self.job_settings,
                        finetune=self.spec.plan.finetune,
                        resume=False,
                        force=False,
                    )
                    self.in_flight[proposal.cell.label] = (proposal.trial, proposal.point)
            if not self.in_flight:
                return stop
            cells = [self.cells[label] for label in self.in_flight]
            exp = self._experiment()
            states = settle(
                exp, grid_states(cells, self.spec.trials_dir, self.spec.plan.finetune), self.spec.trials_dir
            )
            finished = [s for s in states if s.finished]
            records = self.store.latest() if finished else {}
            for state in finished:
                trial, point = self.in_flight.pop(state.label)
                record = records.get(state.label)
                self.finish(trial, point, cell_outcome(record) if record is not None else None)
                self.outcome.ran_here.append(trial.number)
            if not finished:
                time.sleep(POLL_S)

    def _experiment(self) -> Any:
        return self.spec.experiment_of(list(self.cells.values()))

    # --- asking ---------------------------------------------------------------------------------------

    def book(self) -> TrialBook:
        return TrialBook.of(self.study.get_trials(deepcopy=False), self.me)

    def _next(self) -> Proposal | str:
        """The next trial, pruned or to run; or, once the budget is spent, why no trial starts."""
        with self.store.locked():  # count and ask at once: processes sharing the study stop at the budget
            book = self.book()
            stop = self._spent(book)
            if stop:
                return stop
            trial = self.study.ask()
            trial.set_user_attr(HOLDER, asdict(self.me))
        proposal = self._propose(trial, book)
        if proposal.pruned is not None:
            self.pruned_in_a_row += 1
            trial.set_user_attr(REASON, proposal.pruned)
            self._tell(trial, None, pruned=True)
            self.progress.trial_ended(trial.number, "pruned", proposal.pruned, self.book())
        else:
            self.pruned_in_a_row = 0
        return proposal

    def _spent(self, book: TrialBook) -> str:
        budget = self.spec.budget
        if budget.trials is not None and book.ran >= budget.trials:
            return f"budget reached: {book.ran} of {budget.trials} trials ran"
        if budget.minutes is not None and book.trial_seconds() >= 60 * budget.minutes:
            return f"time budget reached: {book.trial_seconds() / 60:.1f} of {budget.minutes:g} min of trial time"
        if self.pruned_in_a_row >= MAX_PRUNED_IN_A_ROW:
            return (
                f"the sampler proposed {self.pruned_in_a_row} points in a row that were invalid, repeated or "
                "outside the constraints: the space looks exhausted"
            )
        return ""

    def _propose(self, trial: optuna.trial.Trial, book: TrialBook) -> Proposal:
        """Judge the sampler's point in order of cost; a cell to run, or why it is pruned."""
        values = {d.name: d.suggest(trial) for d in self.spec.dimensions}
        try:
            point = self.spec.point(values)
        except (ValueError, TypeError) as exc:
            return Proposal(trial, pruned=f"invalid variant: {exc}")
        measures = cheap_measures(point.config, point.img_size)
        trial.set_user_attr(CHANGES, {k: encode(v) for k, v in _changes_of(self.spec, point).items()})
        trial.set_user_attr(IMG_SIZE, point.img_size)
        trial.set_user_attr(MEASURES, _measured(measures))
        why = self.spec.noop_reason(point) or sanity_bound_breach(point, self.force)
        if why:
            return Proposal(trial, point, pruned=why)
        broken = self.spec.broken_cheap_constraints(point)
        if broken:
            c = broken[0]
            return Proposal(
                trial, point, pruned=f"{c.text} broken: {c.metric.name} = {c.metric.value(measures):,.0f}"
            )
        key = point.key()
        earlier = [t for t in [*book.complete, *book.failed, *book.running] if t.number != trial.number]
        same = next((t for t in earlier if t.user_attrs.get(POINT) == key), None)
        if same is not None:
            return Proposal(trial, point, pruned=f"repeats trial {same.number}")
        trial.set_user_attr(POINT, key)
        cell = self.spec.cell(trial.number, point)
        self.cells[cell.label] = cell
        return Proposal(trial, point, cell)

    # --- telling --------------------------------------------------------------------------------------

    def finish(self, trial: optuna.trial.Trial, point: Point, outcome: CellOutcome | None) -> None:
        """Tell the study what the trial's cell record says: its objectives and constraints, or its failure."""
        if outcome is None or not outcome.ok:
            why = "no record" if outcome is None else f"{outcome.status}: {outcome.reason}"
            self._fail(trial, why)
            return
        measures = cheap_measures(point.config, point.img_size).with_records(
            outcome.profile, outcome.finetunes
        )
        trial.set_user_attr(MEASURES, _measured(measures))
        found = [o.metric.value(measures) for o in self.spec.objectives]
        missing = [o.metric.name for o, v in zip(self.spec.objectives, found, strict=True) if v is None]
        values = [v for v in found if v is not None]
        if missing:
            self._fail(
                trial, f"its records carry no {', '.join(missing)} (e.g. no such head in this variant)"
            )
            return
        for c in self.spec.constraints:
            value = c.metric.value(measures)
            if value is None:
                self._fail(trial, f"its records carry no {c.metric.name} for the constraint {c.text}")
                return
            trial.set_constraint(c.text, c.excess(value))
        self._tell(trial, values)
        self.progress.trial_ended(trial.number, "complete", _values_text(self.spec, values), self.book())

    def _fail(self, trial: optuna.trial.Trial, why: str) -> None:
        trial.set_user_attr(REASON, why)
        self._tell(trial, None)
        self.progress.trial_ended(trial.number, "failed", why, self.book())

    def _tell(self, trial: optuna.trial.Trial, values: list[float] | None, pruned: bool = False) -> None:
        from optuna.trial import TrialState

        state = (
            TrialState.PRUNED if pruned else (TrialState.COMPLETE if values is not None else TrialState.FAIL)
        )
        self.study.tell(trial, values, state=state)

    # --- stale and interrupted trials -------------------------------------------------------------------

    def settle_stale(self) -> None:
        """Settle every RUNNING trial whose process is gone: told from its cell's record when the cell
        finished; followed when its job still runs (job executors); else failed as interrupted, its point
        queued again (it counts once, when the rerun ends)."""
        with self.store.locked():
            stale = self.book().stale
            if not stale:
                return
            records = self.store.latest()
            ledger = read_ledger(self.spec.trials_dir) if self.spec.trials_dir.is_dir() else {}
            active = self._active_jobs([t for t in stale if trial_label(t.number) in ledger])
            for frozen in stale:
                self._settle_one(frozen, records, active)

    def _settle_one(
        self, frozen: optuna.trial.FrozenTrial, records: dict[str, Any], active: set[str]
    ) -> None:
        import optuna

        label = trial_label(frozen.number)
        trial = optuna.trial.Trial(self.study, frozen._trial_id)  # a live handle on another process's trial
        trial.set_user_attr(HOLDER, asdict(self.me))
        point = self.spec.point({k: decode(k, v) for k, v in frozen.params.items()})
        record = records.get(label)
        outcome = cell_outcome(record) if record is not None else None
        started = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
        if outcome is not None and outcome.finished >= started:
            self.cells[label] = self.spec.cell(frozen.number, point)
            self.progress.note(
                f"trial {frozen.number}: its cell finished before the search stopped; told from its record"
            )
            self.finish(trial, point, outcome)
            self.outcome.recovered.append(frozen.number)
        elif label in active:
            if self.executor == "local":
                raise BenchError(
                    f"trial {frozen.number} still has a job ({label} in {self.spec.trials_dir}); resume with the "
                    "--executor it was submitted with to follow it, or cancel the job"
                )
            self.cells[label] = self.spec.cell(frozen.number, point)
            self.in_flight[label] = (trial, point)
            self.progress.note(f"trial {frozen.number}: its job still runs; followed here")
            self.outcome.adopted.append(frozen.number)
        else:
            self.interrupt(trial, point)
            self.outcome.interrupted.append(frozen.number)

    def _active_jobs(self, trials: list[optuna.trial.FrozenTrial]) -> set[str]:
        """Labels of the trials whose job is still queued or running."""
        if not trials:
            return set()
        cells = []
        for t in trials:
            point = self.spec.point({k: decode(k, v) for k, v in t.params.items()})
            cells.append(self.spec.cell(t.number, point))
        states = grid_states(cells, self.spec.trials_dir, self.spec.plan.finetune)
        return {s.label for s in states if s.state in ("queued", "running", "unknown")}

    def interrupt(self, trial: optuna.trial.Trial, point: Point) -> None:
        """Fail a trial that was cut off, without counting it, and queue its point again."""
        from optuna.trial import TrialState

        trial.set_user_attr(INTERRUPTED, True)
        trial.set_user_attr(REASON, "interrupted before its cell finished; its point is queued again")
        self.study.tell(trial, state=TrialState.FAIL)
        self.study.enqueue_trial(
            {k: encode(v) for k, v in point.values.items()}, user_attrs={RETRY_OF: trial.number}
        )
        self.progress.note(f"trial {trial.number}: interrupted; its point is queued again")

    @contextmanager
    def _interrupts_on_exit(self, trial: optuna.trial.Trial, point: Point) -> Iterator[None]:
        """Ctrl-C or SIGTERM while a trial runs: fail it as interrupted and queue its point, then stop."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            self.interrupt(trial, point)
            raise


def _changes_of(spec: SearchSpec, point: Point) -> dict[str, Any]:
    changes = _changes(point.config, spec.base.config)
    changes.pop("img_size", None)
    if point.img_size != spec.base.img_size:
        changes["img_size"] = point.img_size
    return changes


def _measured(measures: TrialMeasures) -> dict[str, float]:
    """Every metric ``measures`` carries, by name."""
    out = {}
    for name, metric in METRICS.items():
        value = metric.value(measures)
        if value is not None:
            out[name] = value
    return out


def _values_text(spec: SearchSpec, values: list[float]) -> str:

    return ", ".join(
        f"{o.metric.name} {metric_text(o.metric, v)}" for o, v in zip(spec.objectives, values, strict=True)
    )
