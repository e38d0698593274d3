"""Experiment files (TOML): a base variant, axes and/or explicit cells, what to measure, where to write.

Layout (every key but ``[base] variant`` is optional)::

    name = "paper"                     # default: the file's stem; letters, digits, _ or -
    description = "..."
    output_dir = "results/paper"       # default: results/<name>, relative to the working directory
    axes_mode = "each"                 # each: one axis at a time from the base; product: the full grid

    [base]                             # the reference cell every delta is taken against
    label = "dual"
    variant = "small"                  # a preset (conformer-bench variants)
    num_med_block = 0                  # any ConformerConfig field overrides the preset

    [profile]                          # conformer_bench.profiling.ProfileSettings fields
    img_size = 224
    mode = "both"

    [finetune]                         # conformer_bench.finetune.FinetuneSettings fields, plus:
    run = false                        # fine-tune without --finetune?
    seeds = [0, 1]
    jobs = 1                           # seeds fine-tuned at once, each in a process of its own (CPU);
                                       # results do not depend on it, so it is not part of the cell's hash

    [axes]                             # each value a list; cells are labelled "key=value"
    num_med_block = [0, 1, 2, 3]

    [[cells]]                          # explicit cells: label, optional variant, config overrides,
    label = "no-fcu"                   # and optional [cells.profile] / [cells.finetune] overrides
    coupling = "none"

    [executor]                         # job settings for --executor slurm / submitit-local (.executor);
    partition = "gpu"                  # they never change a cell's hashes
    time_limit = "1:00:00"

    [search]                           # read by `conformer-bench search` only (conformer_bench.search.spec)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..bounds import CELL_LIMIT, SEED_LIMIT
from ..errors import BenchError
from ..records import Environment, ProfileRecord
from ..records.cell import CellHashes, CellJobSpec, CellSpec, ExperimentRecord
from ..toml_tables import Checker, Where, fits, fix, keys_of, read_table, shown, unknown_key
from .executor import ExecutorSettings, settings_from_table

# FinetuneSettings fields an experiment may not set: the seed comes from ``seeds``; checkpoints are per run.
FINETUNE_FORBIDDEN = ("seed", "save", "checkpoint", "allow_partial")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+/:-]{0,79}$")  # a label written in the file
LABEL_LIMIT = 200  # characters of any cell label: written ones have at most 80, axis products may be longer
# An experiment's name becomes a folder (results/<name>) and a job name: no separator, no dot, no traversal.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
NAME_FIX = "use 1-80 letters, digits, _ or - (starting with a letter or digit)"
LABEL_FIX = (
    "label {value} is not valid; use 1-80 characters: letters, digits and _ . , = + / : - "
    "(starting with a letter or digit)"
)
BASE_MISSING = 'missing; add a [base] table with variant = "small" (see conformer-bench variants)'
VARIANT_FIX = 'must be a preset name string such as "small"'
BOOL_FIX = "must be true or false"
SETTINGS_FIX = "must be a table such as [{kind}]; see the layout in experiments/paper.toml"


# --- the file's tables, typed ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentFile:
    """The file's top level: its scalars, and its tables as read (each is checked by its own reader)."""

    name: str | None = field(default=None, metadata=fix("{value} is not valid; " + NAME_FIX))
    description: str = field(default="", metadata=fix("must be a string"))
    output_dir: str | None = field(
        default=None, metadata=fix("must be a directory path string such as 'results/paper'")
    )
    axes_mode: Literal["each", "product"] = (
        "each"  # each: one axis at a time from the base; product: the grid
    )
    base: dict[str, Any] | None = field(default=None, metadata=fix(BASE_MISSING))
    profile: dict[str, Any] = field(default_factory=dict, metadata=fix(SETTINGS_FIX.format(kind="profile")))
    finetune: dict[str, Any] | None = field(default=None, metadata=fix(SETTINGS_FIX.format(kind="finetune")))
    axes: dict[str, Any] = field(
        default_factory=dict, metadata=fix("must be a table: [axes] key = [value, ...]")
    )
    cells: list[Any] = field(
        default_factory=list, metadata=fix("must be an array of tables: write each cell as [[cells]]")
    )
    executor: dict[str, Any] = field(
        default_factory=dict,
        metadata=fix("must be a table: [executor] with partition, time_limit, ... (see the README)"),
    )
    search: dict[str, Any] | None = None  # read by `conformer-bench search` (conformer_bench.search.spec)


@dataclass(frozen=True)
class BaseTable:
    """``[base]``'s own keys; every other key is a config override."""

    variant: str = field(metadata=fix(VARIANT_FIX, missing=BASE_MISSING))
    label: str = field(default="base", metadata=fix(LABEL_FIX))


@dataclass(frozen=True)
class FinetuneExtras:
    """``[finetune]``'s keys beside the FinetuneSettings fields."""

    run: bool = field(default=False, metadata=fix(BOOL_FIX))  # fine-tune without --finetune?
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata=fix(f"{{value}} is not valid; give distinct integers from 0 to {SEED_LIMIT}, e.g. [0, 1]"),
    )
    jobs: int = field(default=1, metadata=fix("{value} is not valid; give an integer >= 1, e.g. 2"))


@dataclass(frozen=True)
class CellTable:
    """A ``[[cells]]`` entry's own keys; every other key is a config override."""

    label: str = field(
        metadata=fix(LABEL_FIX, missing='missing label; add label = "short-name" to this [[cells]] entry')
    )
    variant: str | None = field(default=None, metadata=fix(VARIANT_FIX))  # None: the base's
    profile: dict[str, Any] = field(default_factory=dict, metadata=fix(SETTINGS_FIX.format(kind="profile")))
    finetune: dict[str, Any] = field(default_factory=dict, metadata=fix(SETTINGS_FIX.format(kind="finetune")))
    repeat: bool = field(default=False, metadata=fix(BOOL_FIX))  # measure a cell equal to another again


CELL_META_KEYS = keys_of(CellTable)
FINETUNE_EXTRA_KEYS = keys_of(FinetuneExtras)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a config plus what to measure on it."""

    index: int
    label: str
    config: Any  # conformer.ConformerConfig
    changes: dict[str, Any]  # config fields that differ from the base cell (for display)
    profile: dict[str, Any]  # ProfileSettings keyword arguments
    finetune: dict[str, Any] | None  # FinetuneSettings keyword arguments without the seed; None: none defined
    seeds: tuple[int, ...]
    seed_jobs: int = 1  # seeds fine-tuned at once; not hashed: results do not depend on it

    def profile_settings(self) -> Any:
        from ..profiling import ProfileSettings

        return ProfileSettings(**self.profile)

    def finetune_settings(self, seed: int) -> Any:
        from ..finetune import FinetuneSettings

        assert self.finetune is not None, "cell has no finetune settings"
        return FinetuneSettings(**self.finetune, seed=seed)

    @property
    def img_size(self) -> int:
        """The image size the cell is measured at (its profile settings')."""
        return int(self.profile_settings().img_size)

    def costs_only(self, finetune: bool) -> bool:
        """Nothing timed or trained: params and FLOPs, counted from the config in milliseconds."""
        return not finetune and self.profile_settings().mode == "none"

    def profile_hash(self) -> str:
        return _digest({"config": self.config.to_dict(), "profile": self.profile})

    def finetune_hash(self) -> str | None:
        if self.finetune is None:
            return None
        return _digest(
            {"config": self.config.to_dict(), "finetune": self.finetune, "seeds": list(self.seeds)}
        )

    def config_hash(self, finetune: bool) -> str:
        """Hash of the config and every run setting: a cell is re-run on --resume when it changes."""
        return _digest(
            {"profile": self.profile_hash(), "finetune": self.finetune_hash() if finetune else None}
        )

    def environment(self, profile: ProfileRecord | None = None) -> Environment:
        """The environment of the cell's record: its profile's, else a fingerprint of this machine."""
        from ..env import fingerprint, resolve_device

        if profile is not None and profile.environment is not None:
            return profile.environment
        settings = self.profile_settings()
        try:
            device = resolve_device(settings.device)
        except BenchError:
            device = "cpu"
        env = fingerprint(device, settings.precision, settings.batch_size, settings.img_size)
        return env if isinstance(env, Environment) else Environment.from_dict(env)

    def to_spec(
        self,
        finetune: bool,
        reuse_profile: ProfileRecord | None,
        progress_fd: int | None,
        cuda_device: int | None = None,
    ) -> CellJobSpec:
        """The spec a worker process runs this cell from (see :meth:`from_spec`)."""
        cell = CellSpec(
            index=self.index,
            label=self.label,
            config=self.config.to_dict(),
            changes=self.changes,
            profile=self.profile,
            finetune=self.finetune,
            seeds=list(self.seeds),
            seed_jobs=self.seed_jobs,
        )
        return CellJobSpec(cell, finetune, reuse_profile, progress_fd, cuda_device)

    @classmethod
    def from_spec(cls, spec: CellJobSpec) -> Cell:
        """The cell a :meth:`to_spec` spec describes (the config rebuilt from its ``to_dict`` form)."""
        from conformer import ConformerConfig

        c = spec.cell
        return cls(
            index=c.index,
            label=c.label,
            config=ConformerConfig(**c.config),
            changes=dict(c.changes),
            profile=dict(c.profile),
            finetune=dict(c.finetune) if c.finetune is not None else None,
            seeds=tuple(c.seeds),
            seed_jobs=c.seed_jobs,
        )


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    path: Path
    output_dir: Path
    axes_mode: str
    base_label: str
    finetune_by_default: bool
    has_finetune: bool
    cells: tuple[Cell, ...]
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)  # not part of any hash

    def labels(self) -> list[str]:
        return [c.label for c in self.cells]

    def cell(self, label: str) -> Cell:
        for c in self.cells:
            if c.label == label:
                return c
        raise KeyError(label)

    def select(self, only: list[str] | None) -> list[Cell]:
        """The cells named by ``--only`` (all when empty); unknown labels are an error with suggestions."""
        if not only:
            return list(self.cells)
        known = self.labels()
        for label in only:
            if label not in known:
                close = difflib.get_close_matches(label, known, n=3, cutoff=0.4)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise BenchError(
                    f"--only {label!r} is not a cell of {self.path}; {hint}labels: {', '.join(known)}"
                )
        wanted = set(only)
        return [c for c in self.cells if c.label in wanted]

    def digest(self) -> str:
        """Hash of the whole grid: its name and every cell's label, config and settings."""
        return _digest({"name": self.name, "cells": [[c.label, c.config_hash(True)] for c in self.cells]})

    def summary(self) -> ExperimentRecord:
        """What ``table`` and ``report`` need to re-render, and to tell stale cells, without the file."""
        return ExperimentRecord(
            name=self.name,
            experiment_hash=self.digest(),
            description=self.description,
            source=str(self.path),
            base_label=self.base_label,
            labels=self.labels(),
            axes_mode=self.axes_mode,
            cells={c.label: CellHashes(c.profile_hash(), c.finetune_hash()) for c in self.cells},
        )


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@functools.cache
def _settings_fields(kind: str) -> dict[str, Any]:
    """Field name -> type hint of ProfileSettings or FinetuneSettings."""
    cls: Any
    if kind == "profile":
        from ..profiling import ProfileSettings

        cls = ProfileSettings
    else:
        from ..finetune import FinetuneSettings

        cls = FinetuneSettings
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_settings(chk: Checker, where: Where, table: Any, kind: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise chk.fail(where, f"must be a table such as [{kind}]; see the layout in experiments/paper.toml")
    fields = _settings_fields(kind)
    valid = [f for f in fields if kind != "finetune" or f not in FINETUNE_FORBIDDEN]
    if kind == "finetune" and len(where) == 1:
        valid += list(FINETUNE_EXTRA_KEYS)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if kind == "finetune" and key in FINETUNE_FORBIDDEN:
            fix = (
                "list seeds in [finetune] seeds = [0, 1]"
                if key == "seed"
                else "remove it (each run is stored in the cell record)"
            )
            raise chk.fail((*where, key), f"{key} cannot be set in an experiment; {fix}")
        if key not in valid:
            raise chk.fail((*where, key), unknown_key(key, valid))
        if key in FINETUNE_EXTRA_KEYS:
            continue
        if not fits(value, fields[key]):
            expected = str(fields[key]).replace("<class '", "").replace("'>", "")
            raise chk.fail((*where, key), f"{value!r} has the wrong type; expected {expected}")
        out[key] = value
    return out


def _build_config(chk: Checker, where: Where, variant: str, overrides: dict[str, Any]) -> Any:
    from conformer import get_config, resolve_name
    from conformer.config import OVERRIDABLE

    try:
        resolve_name(variant)
    except ValueError as exc:
        raise chk.fail((*where, "variant"), f"{exc}") from None
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise chk.fail((*where, key), unknown_key(key, (*CELL_META_KEYS, *OVERRIDABLE)))
        if isinstance(value, dict):
            raise chk.fail((*where, key), "must be a value, not a table")
    try:
        return get_config(variant, **overrides)
    except (ValueError, TypeError) as exc:
        culprit = next((k for k in overrides if k in str(exc)), None)
        at = (*where, culprit) if culprit else where
        raise chk.fail(at, f"invalid variant: {exc}") from None


def _label_ok(chk: Checker, where: Where, label: Any) -> str:
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise chk.fail(
            where,
            f"label {label!r} is not valid; use 1-80 characters: letters, digits and _ . , = + / : - "
            "(starting with a letter or digit)",
        )
    return label


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "+".join(str(v) for v in value) or "none"
    return str(value)


@dataclass(frozen=True)
class _Header:
    """The file's top-level scalars and its ``[executor]`` table."""

    name: str
    description: str
    axes_mode: str
    output_dir: Path
    executor: ExecutorSettings


@dataclass(frozen=True)
class _Base:
    """The ``[base]`` table: the variant every cell starts from, its label and its config overrides."""

    variant: str
    label: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class _RunDefaults:
    """The top-level ``[profile]`` and ``[finetune]`` tables every cell starts from."""

    profile: dict[str, Any]
    finetune: dict[str, Any] | None = None  # None: no [finetune] table
    seeds: tuple[int, ...] = ()
    seed_jobs: int = 1
    run_by_default: bool = False


@dataclass(frozen=True)
class _CellSource:
    """One cell as the file states it (the base, an axis value or a [[cells]] entry), not yet checked."""

    where: Where
    label: str
    variant: str
    overrides: dict[str, Any]
    profile: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    repeat: bool = False

    @property
    def from_axis(self) -> bool:
        return self.where[0] == "axes"


def load_experiment(
    path: str | Path,
    *,
    output_dir: str | Path | None = None,
    profile_overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> Experiment:
    """Read and validate an experiment file; every error names the file, the line/key and the fix.

    ``profile_overrides`` (e.g. ``{"mode": "none"}`` from the command line) replace the file's profile
    settings in every cell, after the cells' own overrides. Every cell is held to the sanity bounds
    (:func:`conformer_bench.bounds.check_bounds`) unless ``force``.
    """
    path = Path(path)
    top, chk = read_experiment_file(path)
    return experiment_of(top, chk, path, output_dir, profile_overrides, force)


def experiment_of(
    top: ExperimentFile,
    chk: Checker,
    path: Path,
    output_dir: str | Path | None = None,
    profile_overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> Experiment:
    """The experiment a file read by :func:`read_experiment_file` describes (see :func:`load_experiment`)."""
    header = _read_header(chk, top, path, output_dir)
    base = _read_base(chk, top)
    defaults = _read_run_defaults(chk, top)
    base_cfg = _build_config(
        chk, ("base",), base.variant, {"img_size": _img_size(defaults.profile), **base.overrides}
    )
    sources = [_CellSource(("base",), base.label, base.variant, base.overrides)]
    sources += _axis_sources(chk, top, base)
    sources += _listed_sources(chk, top, base)
    cells = _build_cells(chk, sources, defaults, base_cfg, profile_overrides, force)
    _check_constructible(chk, cells)
    return Experiment(
        name=header.name,
        description=header.description,
        path=path,
        output_dir=header.output_dir,
        axes_mode=header.axes_mode,
        base_label=base.label,
        finetune_by_default=defaults.run_by_default,
        has_finetune=defaults.finetune is not None,
        cells=tuple(cells),
        executor=header.executor,
    )


def read_experiment_file(path: Path) -> tuple[ExperimentFile, Checker]:
    """The file's top level, typed (only known keys, finite numbers), and the checker that locates its
    keys."""
    from ..files import first_non_finite, loads_toml, read_input_text

    text = read_input_text(path, "experiment file", "pass a TOML experiment file such as experiments/ci.toml")
    try:
        data = loads_toml(text)
    except ValueError as exc:
        raise BenchError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    chk = Checker(path, text)
    where = first_non_finite(data)
    if where is not None:
        raise chk.fail(where, "is not a finite number (nan and inf are never valid settings); give a number")
    top, _ = read_table(chk, (), data, ExperimentFile)
    return top, chk


def _img_size(profile: dict[str, Any]) -> int:
    """The image size checked profile settings measure at."""
    from ..profiling import ProfileSettings

    return ProfileSettings(**profile).img_size


def _read_header(chk: Checker, top: ExperimentFile, path: Path, output_dir: str | Path | None) -> _Header:
    name = top.name if top.name is not None else path.stem
    if not NAME_RE.match(name):
        raise chk.fail(
            ("name",),
            f"{shown(name)} is not valid; {NAME_FIX}"
            if top.name is not None
            else f'the file name gives {shown(name)}, which is not valid; add name = "..." and {NAME_FIX}',
        )
    out_raw = top.output_dir if top.output_dir is not None else f"results/{name}"
    if not out_raw:
        raise chk.fail(("output_dir",), "must be a directory path string such as 'results/paper'")
    executor = settings_from_table(
        top.executor, lambda key, message: chk.fail(("executor", key) if key else ("executor",), message)
    )
    out_dir = Path(output_dir) if output_dir is not None else Path(out_raw)
    return _Header(name, top.description, top.axes_mode, out_dir, executor)


def _read_base(chk: Checker, top: ExperimentFile) -> _Base:
    if top.base is None:
        raise chk.fail(("base",), BASE_MISSING)
    base, overrides = read_table(chk, ("base",), top.base, BaseTable, rest=True)
    label = _label_ok(chk, ("base", "label"), base.label)
    for key in ("profile", "finetune"):
        if key in overrides:
            raise chk.fail(("base", key), f"put run settings in the top-level [{key}] table, not in [base]")
    return _Base(base.variant, label, overrides)


def _read_run_defaults(chk: Checker, top: ExperimentFile) -> _RunDefaults:
    profile = _check_settings(chk, ("profile",), top.profile, "profile")
    if top.finetune is None:
        return _RunDefaults(profile)
    finetune = _check_settings(chk, ("finetune",), top.finetune, "finetune")
    extras, _ = read_table(chk, ("finetune",), top.finetune, FinetuneExtras, rest=True)
    seeds = extras.seeds
    if not seeds or not all(0 <= s <= SEED_LIMIT for s in seeds) or len(set(seeds)) != len(seeds):
        raise chk.fail(
            ("finetune", "seeds"),
            f"{str(seeds)[:60]} is not valid; give distinct integers from 0 to {SEED_LIMIT}, e.g. [0, 1]",
        )
    if extras.jobs < 1:
        raise chk.fail(("finetune", "jobs"), f"{extras.jobs!r} is not valid; give an integer >= 1, e.g. 2")
    return _RunDefaults(profile, finetune, tuple(seeds), extras.jobs, extras.run)


def _axis_sources(chk: Checker, top: ExperimentFile, base: _Base) -> list[_CellSource]:
    """The cells of ``[axes]``: one axis value at a time (``each``) or every combination (``product``)."""
    axes = top.axes
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise chk.fail(("axes", key), f"must be a non-empty list of values, e.g. {key} = [0, 1]")
    each = top.axes_mode == "each"
    count = sum(len(v) for v in axes.values()) if each else math.prod(len(v) for v in axes.values())
    if count > CELL_LIMIT:
        raise chk.fail(
            ("axes",), f"makes {count:,} cells, past the sanity bound of {CELL_LIMIT:,}; split the experiment"
        )
    if each:
        return [_axis_source(base, {key: value}) for key, values in axes.items() for value in values]
    if not axes:
        return []
    keys = list(axes)
    combos = itertools.product(*(axes[k] for k in keys))
    return [_axis_source(base, dict(zip(keys, combo, strict=True))) for combo in combos]


def _axis_source(base: _Base, values: dict[str, Any]) -> _CellSource:
    label = ",".join(f"{k}={_value_text(v)}" for k, v in values.items())
    variant = values.get("variant", base.variant)  # an axis of presets is named "variant"
    rest = {k: v for k, v in values.items() if k != "variant"}
    overrides = {**base.overrides, **rest} if variant == base.variant else rest
    return _CellSource(("axes", next(iter(values))), label, str(variant), overrides)


def _listed_sources(chk: Checker, top: ExperimentFile, base: _Base) -> list[_CellSource]:
    """The ``[[cells]]`` entries."""
    sources = []
    for i, raw in enumerate(top.cells):
        where: Where = ("cells", i)
        not_a_table = "must be a table: write each cell as [[cells]] with label = ..."
        cell, overrides = read_table(chk, where, raw, CellTable, rest=True, not_a_table=not_a_table)
        label = _label_ok(chk, (*where, "label"), cell.label)
        variant = cell.variant if cell.variant is not None else base.variant
        merged = {**base.overrides, **overrides} if variant == base.variant else overrides
        sources.append(_CellSource(where, label, variant, merged, cell.profile, cell.finetune, cell.repeat))
    return sources


def _build_cells(
    chk: Checker,
    sources: list[_CellSource],
    defaults: _RunDefaults,
    base_cfg: Any,
    profile_overrides: dict[str, Any] | None,
    force: bool,
) -> list[Cell]:
    """Check each cell's settings, config and sanity bounds; drop axis values that repeat an earlier cell."""
    cells: list[Cell] = []
    seen_labels: set[str] = set()
    seen_runs: dict[str, str] = {}  # what a cell computes and measures -> its label
    for src in sources:
        if len(src.label) > LABEL_LIMIT:
            raise chk.fail(
                src.where,
                f"cell label {src.label[:40]!r}... is {len(src.label)} characters, past {LABEL_LIMIT}; "
                'use fewer axes at once (axes_mode = "each") or [[cells]] with short labels',
            )
        if src.label in seen_labels:
            raise chk.fail(
                ("axes",) if src.from_axis else src.where,
                f"label {src.label!r} is used twice; give each cell its own label",
            )
        profile = _cell_profile(chk, src, defaults, profile_overrides)
        overrides = {k: v for k, v in src.overrides.items() if k != "variant"}
        if "img_size" not in overrides:
            # The config's img_size only sizes the position embedding: size it for the measured images.
            overrides["img_size"] = _img_size(profile)
        cfg = _build_config(chk, src.where, src.variant, overrides)
        _check_bounds(chk, src, cfg, _img_size(profile), force)
        run_key = _digest({"config": effective_config(cfg), "profile": profile, "finetune": src.finetune})
        if run_key in seen_runs and not src.repeat:
            if src.from_axis:
                continue  # an axis value equal to the base (or an earlier cell) adds nothing
            raise chk.fail(
                src.where,
                f"cell {src.label!r} computes and measures the same as cell {seen_runs[run_key]!r} "
                "(same config once toggles without effect are ignored); remove it, change a setting, "
                "or add repeat = true to measure it again on purpose",
            )
        seen_runs.setdefault(run_key, src.label)
        finetune = _cell_finetune(chk, src, defaults)
        seen_labels.add(src.label)
        cells.append(
            Cell(
                index=len(cells),
                label=src.label,
                config=cfg,
                changes=_changes(cfg, base_cfg),
                profile=profile,
                finetune=finetune,
                seeds=defaults.seeds,
                seed_jobs=defaults.seed_jobs,
            )
        )
    return cells


def _check_bounds(chk: Checker, src: _CellSource, cfg: Any, img_size: int, force: bool) -> None:
    """The cell's config within the sanity bounds shared with ``profile`` (O(1) before any counting)."""
    from ..bounds import check_bounds

    try:
        check_bounds(cfg, img_size=img_size, force=force)
    except BenchError as exc:
        raise chk.fail(src.where, f"cell {src.label!r}: {exc}") from None


def _cell_profile(
    chk: Checker, src: _CellSource, defaults: _RunDefaults, profile_overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """The file's profile settings, then the cell's own, then the command line's."""
    profile = defaults.profile
    if src.profile:
        profile = {**profile, **_check_settings(chk, (*src.where, "profile"), src.profile, "profile")}
    return {**profile, **profile_overrides} if profile_overrides else profile


def _cell_finetune(chk: Checker, src: _CellSource, defaults: _RunDefaults) -> dict[str, Any] | None:
    """The file's fine-tune settings, then the cell's own; None without a [finetune] table."""
    if defaults.finetune is None:
        if src.finetune:
            raise chk.fail(
                (*src.where, "finetune"), "per-cell finetune settings need a top-level [finetune] table"
            )
        return None
    if not src.finetune:
        return defaults.finetune
    return {**defaults.finetune, **_check_settings(chk, (*src.where, "finetune"), src.finetune, "finetune")}


def _changes(cfg: Any, base_cfg: Any) -> dict[str, Any]:
    """The config fields that differ from the base's (the variant first when it differs)."""
    base = base_cfg.to_dict()
    changes = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "from_paper") and base[k] != v}
    return {"variant": cfg.name, **changes} if cfg.name != base_cfg.name else changes


def effective_config(cfg: Any) -> dict[str, Any]:
    """The config's fields with toggles that change nothing set to their defaults (e.g. ``fcu_down`` when
    no stage couples CNN to tokens), so two cells that compute the same compare equal."""
    d = cfg.to_dict()
    d.pop("name", None)
    d.pop("from_paper", None)
    down = any(cfg.couples_down(stage) for stage in (1, 2, 3))
    up = any(cfg.couples_up(stage) for stage in (1, 2, 3))
    if not down:
        d["fcu_down"] = "avgpool"
    if not up:
        d["fcu_up"] = "nearest"
    if not (down or up):
        d["coupling"], d["fcu_stages"] = "none", []
    return d


def _check_constructible(chk: Checker, cells: list[Cell]) -> None:
    """Settings objects must build (their own checks: mode, precision, ...)."""
    from ..profiling import ProfileSettings
    from ..profiling import validate_settings as check_profile

    for cell in cells:
        where: Where = ("profile",)
        try:
            check_profile(cell.config, ProfileSettings(**cell.profile))
        except (ValueError, TypeError, BenchError) as exc:
            raise chk.fail(where, f"cell {cell.label!r}: {exc}") from None
        if cell.finetune is not None:
            from ..finetune import FinetuneSettings
            from ..finetune import validate_settings as check_finetune

            try:
                check_finetune(FinetuneSettings(**cell.finetune, seed=cell.seeds[0]))
            except (ValueError, TypeError, BenchError) as exc:
                raise chk.fail(("finetune",), f"cell {cell.label!r}: {exc}") from None
        if cell.config.num_classes == 0:
            raise chk.fail(("base", "num_classes"), "must be > 0: the cells classify (0 builds no head)")
