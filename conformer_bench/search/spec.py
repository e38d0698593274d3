"""The ``[search]`` table of an experiment file: the space, the objectives, the constraints and the budget.

Layout (beside the usual ``[base]``, ``[profile]``, ``[finetune]`` and ``[executor]`` tables)::

    [search]
    trials = 16                    # budget: trials that run (complete or failed); pruned ones cost nothing
    minutes = 12                   # and/or: no trial starts after this much trial time (every run together)
    sampler = "nsga2"              # nsga2 (multi-objective, default), tpe or random
    population = 8                 # nsga2: trials per generation
    seed = 0                       # the sampler's seed
    parallel = 1                   # trials in flight with --executor slurm or submitit-local
    output_dir = "results/x/search"  # default: <output_dir>/search
    objectives = { top1 = "max", infer_img_per_s = "max" }
    constraints = ["params <= 600000", "infer_img_per_s >= 200"]
    confirm_seeds = [0, 1, 2, 3, 4]  # seeds of the front's experiment file (for ablate)

    [search.space]                 # each key a config field, "variant" or "img_size"
    num_med_block = [0, 1, 2]      # a list: the choices
    embed_dim = { low = 32, high = 96, step = 32 }   # integers from low to high

The base cell is the search's first trial: its value of every dimension must lie in the space.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from conformer import get_config
from conformer.config import OVERRIDABLE, TOGGLE_DEFAULTS, ConformerConfig

from ..ablate.experiment import (
    Cell,
    Experiment,
    _changes,
    effective_config,
    experiment_of,
    read_experiment_file,
)
from ..toml_tables import Checker, Where, fix, read_table, unknown_key
from .metrics import FINETUNE, METRICS, Metric, RunPlan, cheap_measures, profile_mode

if TYPE_CHECKING:
    import optuna

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
SPACE_EXTRA = ("variant", "img_size")  # dimensions that are not (only) config fields
CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=)\s*([-+0-9.eE_]+)\s*$")
VALIDITY_PROBES = 4096  # points of the space tried when the file is read, to refuse a space with none valid
Sampler = Literal["nsga2", "tpe", "random"]  # nsga2: multi-objective, the default
RANGE_FIX = "a range takes integers: { low = 32, high = 96, step = 32 } (step >= 1)"


@dataclass(frozen=True)
class SearchTable:
    """The ``[search]`` table, typed; :func:`load_search` checks what its fields' types cannot say."""

    trials: int | None = field(
        default=None, metadata=fix("{value} is not valid; give an integer >= 1, e.g. trials = 16")
    )
    minutes: float | None = field(
        default=None, metadata=fix("{value} is not valid; give a number of minutes > 0, e.g. 12")
    )
    sampler: Sampler = "nsga2"
    population: int = field(default=8, metadata=fix("{value} is not valid; give an integer >= 2"))
    seed: int = field(default=0, metadata=fix("{value} is not valid; give an integer >= 0"))
    parallel: int = field(default=1, metadata=fix("{value} is not valid; give an integer >= 1"))
    output_dir: str | None = field(
        default=None, metadata=fix("must be a folder path string such as 'results/micro/search'")
    )
    objectives: dict[str, Any] = field(
        default_factory=dict, metadata=fix('must be a table: objectives = { top1 = "max", params = "min" }')
    )
    constraints: list[str] = field(
        default_factory=list,
        metadata=fix('must be a list of strings such as ["params <= 600000", "infer_img_per_s >= 200"]'),
    )
    confirm_seeds: list[int] | None = field(
        default=None, metadata=fix("{value} is not valid; give distinct integers >= 0, e.g. [0, 1, 2, 3, 4]")
    )
    space: dict[str, Any] = field(
        default_factory=dict,
        metadata=fix("must be a table: [search.space] with num_med_block = [0, 1, 2], ..."),
    )


@dataclass(frozen=True)
class RangeTable:
    """A dimension written as a range: the integers from ``low`` to ``high`` by ``step``."""

    low: int = field(metadata=fix(RANGE_FIX, missing=RANGE_FIX))
    high: int = field(metadata=fix(RANGE_FIX, missing=RANGE_FIX))
    step: int = field(default=1, metadata=fix(RANGE_FIX))


@dataclass(frozen=True)
class Dimension:
    """One axis of the space: a list of choices, or the integers from ``low`` to ``high`` by ``step``."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: int = 0
    high: int = 0
    step: int = 1

    def values(self) -> list[Any]:
        return (
            list(self.choices)
            if self.choices is not None
            else list(range(self.low, self.high + 1, self.step))
        )

    def contains(self, value: Any) -> bool:
        return encode(value) in [encode(v) for v in self.values()]

    def suggest(self, trial: optuna.trial.Trial) -> Any:
        """This dimension's value for an Optuna trial (lists travel as text: Optuna's choices are scalars)."""
        if self.choices is None:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step)
        return decode(self.name, trial.suggest_categorical(self.name, [encode(c) for c in self.choices]))

    def describe(self) -> Any:
        if self.choices is None:
            return {"low": self.low, "high": self.high, "step": self.step}
        return list(self.choices)


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: lists (``fcu_stages``) as ``"1,2,3"`` (``"none"`` when empty)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return value


def decode(name: str, value: Any) -> Any:
    """The value of dimension ``name`` from its stored form (see :func:`encode`)."""
    if name == "fcu_stages" and isinstance(value, str):
        return [] if value == "none" else [int(v) for v in value.split(",")]
    return value


@dataclass(frozen=True)
class Objective:
    metric: Metric
    direction: str  # maximize | minimize

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound``; Optuna's convention: excess <= 0 is feasible."""

    metric: Metric
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric.name} {self.op} {self.bound:g}"

    def excess(self, value: float) -> float:
        return value - self.bound if self.op == "<=" else self.bound - value


@dataclass(frozen=True)
class Budget:
    trials: int | None
    minutes: float | None

    def describe(self) -> str:
        parts = ([f"{self.trials} trials"] if self.trials else []) + (
            [f"{self.minutes:g} min of trial time"] if self.minutes else []
        )
        return " and ".join(parts)


@dataclass(frozen=True)
class Point:
    """A point of the space: its dimension values, the config they make, and its image size."""

    values: dict[str, Any]
    config: Any  # ConformerConfig
    img_size: int

    def key(self) -> str:
        """Identity of what the point computes and measures (toggles without effect ignored)."""
        return _digest({"config": effective_config(self.config), "img_size": self.img_size})


@dataclass(frozen=True)
class SearchSpec:
    """Everything a search is: the experiment it starts from and its ``[search]`` table, checked."""

    experiment: Experiment
    base: Cell
    dimensions: tuple[Dimension, ...]
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    budget: Budget
    sampler: str
    population: int
    seed: int
    parallel: int
    output_dir: Path
    confirm_seeds: tuple[int, ...]
    plan: RunPlan

    @property
    def name(self) -> str:
        return f"{self.experiment.name}-search"

    @property
    def trials_dir(self) -> Path:
        """The ablate run folder the trials' cells are recorded in."""
        return self.output_dir / "trials"

    @property
    def journal(self) -> Path:
        return self.output_dir / "study.journal"

    def metrics(self) -> list[Metric]:
        """Every metric an objective or constraint reads, objectives first, each once."""
        seen: dict[str, Metric] = {}
        for m in [o.metric for o in self.objectives] + [c.metric for c in self.constraints]:
            seen.setdefault(m.name, m)
        return list(seen.values())

    def digest(self) -> str:
        """Hash of what makes trials comparable: base, run settings, space, objectives, constraints, sampler.

        The budget is not part of it: a resumed search may be given more trials or minutes.
        """
        return _digest(
            {
                "base": self.base.config.to_dict(),
                "profile": dict(self.plan.profile),
                "finetune": self.base.finetune if self.plan.finetune else None,
                "seeds": list(self.base.seeds) if self.plan.finetune else [],
                "space": {d.name: d.describe() for d in self.dimensions},
                "objectives": [[o.metric.name, o.direction] for o in self.objectives],
                "constraints": [c.text for c in self.constraints],
                "sampler": [self.sampler, self.population, self.seed],
            }
        )

    def summary(self) -> dict[str, Any]:
        """The search's settings as the study and its records keep them."""
        return {
            "name": self.name,
            "experiment": str(self.experiment.path),
            "digest": self.digest(),
            "base": self.base.label,
            "space": {d.name: d.describe() for d in self.dimensions},
            "objectives": {o.metric.name: o.direction for o in self.objectives},
            "constraints": [c.text for c in self.constraints],
            "budget": {"trials": self.budget.trials, "minutes": self.budget.minutes},
            "sampler": self.sampler,
            "population": self.population,
            "seed": self.seed,
            "profile": dict(self.plan.profile),
            "finetune": dict(self.base.finetune or {}) if self.plan.finetune else None,
            "seeds": list(self.base.seeds) if self.plan.finetune else [],
        }

    # --- points --------------------------------------------------------------------------------------

    def base_values(self) -> dict[str, Any]:
        """The base cell's value of every dimension (the search's first trial)."""
        return {d.name: _config_value(self.base, d.name) for d in self.dimensions}

    def point(self, values: dict[str, Any]) -> Point:
        """The point ``values`` make; ``ValueError`` when they make no valid variant."""
        img_size = int(values.get("img_size", self.base.img_size))
        variant = str(values.get("variant", self.base.config.name))
        fields = {k: v for k, v in values.items() if k not in SPACE_EXTRA}
        if variant == self.base.config.name:
            fields = {**_overrides_of(self.base.config), **fields}
        config = get_config(variant, **{**fields, "img_size": img_size})
        if img_size % config.patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {config.patch_size}")
        return Point(values, config, img_size)

    def noop_reason(self, point: Point) -> str | None:
        """Why ``point`` is another point under another name: a toggle set off its default that changes
        nothing (e.g. ``fcu_down=maxpool`` where no stage couples CNN to tokens); None otherwise."""
        here = effective_config(point.config)
        for name, default in TOGGLE_DEFAULTS.items():
            value = getattr(point.config, name)
            if name not in point.values or encode(value) == encode(default):
                continue
            try:
                plain = dataclasses.replace(point.config, **{name: default})
            except ValueError:
                continue
            if effective_config(plain) == here:
                return f"{name}={encode(value)} changes nothing here (it computes the same as {name}={encode(default)})"
        return None

    def broken_cheap_constraints(self, point: Point) -> list[Constraint]:
        """The constraints on costs (counted from the config, nothing run) that ``point`` breaks."""
        measures = cheap_measures(point.config, point.img_size)
        cheap = [c for c in self.constraints if c.metric.cheap]
        return [c for c in cheap if c.excess(c.metric.value(measures) or 0.0) > 0]

    def cell(self, number: int, point: Point) -> Cell:
        """Trial ``number``'s cell: the base cell's settings at the point's config and image size."""
        profile = {**self.plan.profile, "img_size": point.img_size}
        finetune = None
        if self.plan.finetune and self.base.finetune is not None:
            finetune = {**self.base.finetune, "img_size": point.img_size}
        return Cell(
            index=number,
            label=trial_label(number),
            config=point.config,
            changes=_changes(point.config, self.base.config),
            profile=profile,
            finetune=finetune,
            seeds=self.base.seeds,
            seed_jobs=self.base.seed_jobs,
        )

    def experiment_of(self, cells: list[Cell]) -> Experiment:
        """The ablate experiment the trials' cells belong to (their run folder is bound to it)."""
        return dataclasses.replace(
            self.experiment,
            name=self.name,
            output_dir=self.trials_dir,
            base_label=trial_label(0),
            cells=tuple(cells),
        )


def trial_label(number: int) -> str:
    return f"trial-{number}"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _overrides_of(cfg: ConformerConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from its preset's (the experiment's [base] overrides)."""
    preset = get_config(cfg.name).to_dict()
    return {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in ("name", "from_paper", "img_size") and preset[k] != v
    }


def _config_value(cell: Cell, name: str) -> Any:
    if name == "variant":
        return cell.config.name
    if name == "img_size":
        return cell.img_size
    value = getattr(cell.config, name)
    return list(value) if isinstance(value, tuple) else value


# --- reading the file ------------------------------------------------------------------------------------


def load_search(
    path: str | Path,
    *,
    output_dir: str | Path | None = None,
    trials: int | None = None,
    minutes: float | None = None,
) -> SearchSpec:
    """Read an experiment file with a ``[search]`` table; every error names the file, the line and the fix.

    ``trials`` and ``minutes`` (the command line's) replace the file's budget.
    """
    top, chk = read_experiment_file(Path(path))
    experiment = experiment_of(top, chk, Path(path))
    if top.search is None:
        raise chk.fail(("search",), "missing; add a [search] table with a [search.space] and objectives")
    table, _ = read_table(chk, ("search",), top.search, SearchTable)
    for key, minimum in (("population", 2), ("seed", 0), ("parallel", 1)):
        if getattr(table, key) < minimum:
            raise chk.fail(
                ("search", key), f"{getattr(table, key)!r} is not valid; give an integer >= {minimum}"
            )
    base = experiment.cell(experiment.base_label)
    dimensions = _read_space(chk, table.space, base)
    objectives = _read_objectives(chk, table.objectives)
    constraints = _read_constraints(chk, table.constraints)
    plan = _run_plan(chk, experiment, base, [o.metric for o in objectives] + [c.metric for c in constraints])
    spec = SearchSpec(
        experiment=experiment,
        base=base,
        dimensions=dimensions,
        objectives=objectives,
        constraints=constraints,
        budget=_read_budget(chk, table, trials, minutes),
        sampler=table.sampler,
        population=table.population,
        seed=table.seed,
        parallel=table.parallel,
        output_dir=_output_dir(chk, table, experiment, output_dir),
        confirm_seeds=_seeds(chk, table, base),
        plan=plan,
    )
    _check_base_in_space(chk, spec)
    _check_space_has_points(chk, spec)
    return spec


def _read_space(chk: Checker, space: dict[str, Any], base: Cell) -> tuple[Dimension, ...]:
    if not space:
        raise chk.fail(
            ("search", "space"),
            "the space is empty; add [search.space] with at least one dimension, e.g. num_med_block = [0, 1, 2]",
        )
    valid = (*SPACE_EXTRA, *(k for k in OVERRIDABLE if k != "img_size"))
    dims = []
    for name, raw in space.items():
        where: Where = ("search", "space", name)
        if name not in valid:
            raise chk.fail(where, unknown_key(name, valid))
        dims.append(_dimension(chk, where, name, raw))
    return tuple(dims)


def _dimension(chk: Checker, where: Where, name: str, raw: Any) -> Dimension:
    if isinstance(raw, dict):
        span, _ = read_table(chk, where, raw, RangeTable)
        low, high, step = span.low, span.high, span.step
        if step < 1:
            raise chk.fail(where, RANGE_FIX)
        if high < low or (high - low) % step:
            raise chk.fail(
                where, f"high must be low plus a multiple of step; got low {low}, high {high}, step {step}"
            )
        return Dimension(name, None, low, high, step)
    if not isinstance(raw, list) or not raw:
        raise chk.fail(
            where, f"must be a non-empty list of choices, e.g. {name} = [0, 1], or {{ low = .., high = .. }}"
        )
    if len({json.dumps(encode(v)) for v in raw}) != len(raw):
        raise chk.fail(where, f"{raw!r} lists a choice twice; list each once")
    for value in raw:
        if isinstance(value, dict) or (isinstance(value, list) and name != "fcu_stages"):
            raise chk.fail(where, f"choice {value!r} must be a value, not a table or list")
    return Dimension(name, tuple(raw))


def _read_objectives(chk: Checker, raw: dict[str, Any]) -> tuple[Objective, ...]:
    where: Where = ("search", "objectives")
    if not raw:
        raise chk.fail(where, 'missing; add objectives = { top1 = "max", infer_img_per_s = "max" }')
    out = []
    for name, direction in raw.items():
        if name not in METRICS:
            raise chk.fail(
                (*where, name),
                f"no record carries {name!r}; "
                + unknown_key(name, list(METRICS)).split("; ", 1)[1].replace("valid keys", "metrics"),
            )
        if direction not in DIRECTIONS:
            raise chk.fail((*where, name), f'{direction!r} is not a direction; use "max" or "min"')
        out.append(Objective(METRICS[name], DIRECTIONS[direction]))
    return tuple(out)


def _read_constraints(chk: Checker, raw: list[str]) -> tuple[Constraint, ...]:
    where: Where = ("search", "constraints")
    out = []
    for text in raw:
        m = CONSTRAINT_RE.match(text)
        if not m:
            raise chk.fail(where, f"{text!r} is not a constraint; write METRIC <= NUMBER or METRIC >= NUMBER")
        name, op, number = m.groups()
        if name not in METRICS:
            close = difflib.get_close_matches(name, list(METRICS), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise chk.fail(
                where, f"{text!r} constrains an unknown metric {name!r}; {hint}metrics: {', '.join(METRICS)}"
            )
        try:
            bound = float(number.replace("_", ""))
        except ValueError:
            raise chk.fail(where, f"{text!r}: {number!r} is not a number") from None
        if not math.isfinite(bound):
            raise chk.fail(where, f"{text!r}: the bound must be a finite number")
        out.append(Constraint(METRICS[name], op, bound))
    return tuple(out)


def _run_plan(chk: Checker, experiment: Experiment, base: Cell, metrics: list[Metric]) -> RunPlan:
    """The base cell's profile settings with the mode that times what the metrics read, and whether the
    trials fine-tune; a metric no record would carry is an error."""
    for metric in metrics:
        why = metric.missing_from(experiment.has_finetune, base.profile_settings())
        if why:
            raise chk.fail(("search", "objectives"), f"no record would carry {metric.name!r}: {why}")
    profile = {**base.profile, "mode": profile_mode(metrics)}
    return RunPlan(profile, any(m.source == FINETUNE for m in metrics))


def _read_budget(chk: Checker, table: SearchTable, trials: int | None, minutes: float | None) -> Budget:
    n = trials if trials is not None else table.trials
    mins = minutes if minutes is not None else table.minutes
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise chk.fail(("search", "trials"), f"{n!r} is not valid; give an integer >= 1, e.g. trials = 16")
    if mins is not None and (
        isinstance(mins, bool) or not isinstance(mins, (int, float)) or not 0 < mins < 1e6
    ):
        raise chk.fail(("search", "minutes"), f"{mins!r} is not valid; give a number of minutes > 0, e.g. 12")
    if n is None and mins is None:
        raise chk.fail(
            ("search",), "no budget; add trials = N and/or minutes = M (or pass --trials / --minutes)"
        )
    return Budget(n, float(mins) if mins is not None else None)


def _output_dir(chk: Checker, table: SearchTable, experiment: Experiment, given: str | Path | None) -> Path:
    if given is not None:
        return Path(given)
    raw = table.output_dir
    if raw is None:
        return experiment.output_dir / "search"
    if not raw:
        raise chk.fail(
            ("search", "output_dir"), "must be a folder path string such as 'results/micro/search'"
        )
    return Path(raw)


def _seeds(chk: Checker, table: SearchTable, base: Cell) -> tuple[int, ...]:
    raw = table.confirm_seeds
    if raw is None:
        return tuple(range(max(5, 2 * len(base.seeds))))
    if not raw or not all(s >= 0 for s in raw) or len(set(raw)) != len(raw):
        raise chk.fail(
            ("search", "confirm_seeds"),
            f"{raw!r} is not valid; give distinct integers >= 0, e.g. [0, 1, 2, 3, 4]",
        )
    return tuple(raw)


def _check_base_in_space(chk: Checker, spec: SearchSpec) -> None:
    """The base cell is the first trial: each of its values must be a point of its dimension."""
    for dim in spec.dimensions:
        value = _config_value(spec.base, dim.name)
        if not dim.contains(value):
            raise chk.fail(
                ("search", "space", dim.name),
                f"the base cell's {dim.name} = {encode(value)!r} is not in the space; add it "
                "(the base is the first trial, the point the front is compared with)",
            )


def _check_space_has_points(chk: Checker, spec: SearchSpec) -> None:
    """Refuse a space in which no point (of the first :data:`VALIDITY_PROBES` tried) is a valid variant that
    keeps the cheap constraints."""
    combos = itertools.islice(itertools.product(*(d.values() for d in spec.dimensions)), VALIDITY_PROBES)
    first_error = ""
    for combo in combos:
        values = dict(zip([d.name for d in spec.dimensions], combo, strict=True))
        try:
            point = spec.point(values)
        except (ValueError, TypeError) as exc:
            first_error = first_error or str(exc)
            continue
        broken = spec.broken_cheap_constraints(point)
        if not broken:
            return
        first_error = first_error or f"{broken[0].text} breaks"
    raise chk.fail(
        ("search", "space"),
        f"no point of the space is a valid variant within the constraints (e.g. {first_error}); widen it",
    )
