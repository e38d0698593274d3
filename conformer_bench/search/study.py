"""The Optuna study of a search, in a journal file that survives a kill and that several processes share.

Optuna's journal storage keeps no heartbeat: a trial whose process was killed stays ``RUNNING`` for ever.
Each trial therefore notes the process that holds it (pid, host, start); a ``RUNNING`` trial whose holder is
gone is *stale*, and :mod:`.run` settles it on the next start (from its record when the cell finished, else
as an interrupted trial whose point is queued again). Interrupted trials do not count against the budget;
their rerun does, once.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ablate.store import Holder
from ..errors import BenchError
from .spec import SearchSpec, encode

if TYPE_CHECKING:
    import optuna

HOLDER = "holder"  # trial user attribute: the process that runs it
INTERRUPTED = "interrupted"  # trial user attribute of a FAIL that was cut off (not counted)
REASON = "reason"  # why a trial was pruned or failed
POINT = "point"  # the point's identity (Point.key)
RETRY_OF = "retry_of"  # an enqueued rerun names the interrupted trial
ROLE = "role"  # "base" for the base cell's trial
MEASURES = "measures"  # every metric the trial's records (or its closed-form costs) carry
CHANGES = "changes"  # the config fields that differ from the base's
IMG_SIZE = "img_size"  # the image side the trial runs at
DIGEST = "search_digest"  # study user attribute: SearchSpec.digest()
SUMMARY = "search"  # study user attribute: SearchSpec.summary()


def open_study(spec: SearchSpec, *, resume: bool, create: bool = True) -> Any:
    """The search's study: created (with the base cell queued as its first trial), or loaded to continue.

    A journal that holds another search, or a search already begun without ``resume``, is bad input.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exists = spec.journal.is_file() and spec.journal.stat().st_size > 0
    if not exists and not create:
        raise BenchError(
            f"{spec.journal} does not exist; start the search first: conformer-bench search {spec.experiment.path}"
        )
    spec.journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(spec.journal)))
    if exists:
        _check_owner(spec, storage, resume)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=make_sampler(spec),
        directions=[optuna.study.StudyDirection[o.direction.upper()] for o in spec.objectives],
        load_if_exists=True,
    )
    if not exists:
        study.set_user_attr(DIGEST, spec.digest())
        study.set_user_attr(SUMMARY, spec.summary())
        study.enqueue_trial(_encoded(spec.base_values()), user_attrs={ROLE: "base"})
    return study


def _encoded(values: dict[str, Any]) -> dict[str, Any]:

    return {k: encode(v) for k, v in values.items()}


def _check_owner(spec: SearchSpec, storage: optuna.storages.BaseStorage, resume: bool) -> None:
    studies = storage.get_all_studies()
    names = [s.study_name for s in studies]
    mine = next((s for s in studies if s.study_name == spec.name), None)
    if mine is None:
        raise BenchError(
            f"{spec.journal} holds the search {', '.join(names) or '(none)'}, not {spec.name!r}; pass another "
            "--output-dir, or delete the file to start again"
        )
    if mine.user_attrs.get(DIGEST) != spec.digest():
        raise BenchError(
            f"{spec.journal} holds a search of {spec.name!r} with another base, space, objectives, constraints or "
            "sampler; restore the [search] table it began with, or pass another --output-dir"
        )
    if not resume:
        count = len(storage.get_all_trials(storage.get_study_id_from_name(spec.name), deepcopy=False))
        raise BenchError(
            f"{spec.output_dir} already holds this search ({count} trials); continue it with --resume, "
            "or pass another --output-dir"
        )


def make_sampler(spec: SearchSpec) -> Any:
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    return optuna.samplers.NSGAIISampler(population_size=spec.population, seed=spec.seed)


# --- where the trials stand ---------------------------------------------------------------------------------


def holder_of(trial: optuna.trial.FrozenTrial) -> Holder | None:
    try:
        return Holder.from_dict(trial.user_attrs[HOLDER])
    except (KeyError, TypeError, ValueError):
        return None


def is_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(INTERRUPTED))


@dataclass
class TrialBook:
    """The study's trials by where they stand. ``ran`` counts against the budget: complete and failed trials
    (interrupted ones excepted) and those running now in a live process."""

    complete: list[Any] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)
    interrupted: list[Any] = field(default_factory=list)
    pruned: list[Any] = field(default_factory=list)
    running: list[Any] = field(default_factory=list)  # held by a live process
    stale: list[Any] = field(default_factory=list)  # RUNNING, but its process is gone
    waiting: list[Any] = field(default_factory=list)  # queued (the base, an interrupted trial's rerun)

    @classmethod
    def of(cls, trials: list[optuna.trial.FrozenTrial], me: Holder | None = None) -> TrialBook:
        from optuna.trial import TrialState

        book = cls()
        for t in trials:
            if t.state == TrialState.COMPLETE:
                book.complete.append(t)
            elif t.state == TrialState.PRUNED:
                book.pruned.append(t)
            elif t.state == TrialState.FAIL:
                (book.interrupted if is_interrupted(t) else book.failed).append(t)
            elif t.state == TrialState.WAITING:
                book.waiting.append(t)
            else:
                holder = holder_of(t)
                mine = (
                    me is not None and holder is not None and holder.pid == me.pid and holder.host == me.host
                )
                alive = holder is not None and (mine or holder.alive())
                (book.running if alive else book.stale).append(t)
        return book

    @property
    def ran(self) -> int:
        return len(self.complete) + len(self.failed) + len(self.running)

    def counts(self) -> dict[str, int]:
        return {
            "complete": len(self.complete),
            "failed": len(self.failed),
            "pruned": len(self.pruned),
            "running": len(self.running),
            "stale": len(self.stale),
            "interrupted": len(self.interrupted),
            "waiting": len(self.waiting),
        }

    def trial_seconds(self, now: datetime.datetime | None = None) -> float:
        """Trial time spent: the union of the running intervals of the trials that count (the time between
        runs of the search, and trials cut off by a kill, do not count)."""
        now = now or datetime.datetime.now()
        spans = sorted(
            (t.datetime_start, t.datetime_complete or now)
            for t in [*self.complete, *self.failed, *self.running]
            if t.datetime_start is not None
        )
        total, end = 0.0, None
        for start, stop in spans:
            if end is None or start > end:
                total += (stop - start).total_seconds()
                end = stop
            elif stop > end:
                total += (stop - end).total_seconds()
                end = stop
        return total
