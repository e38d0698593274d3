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
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bounds import CELL_LIMIT, SEED_LIMIT
from ..errors import BenchError
from ..records import Environment, ProfileRecord
from ..records.cell import CellHashes, ExperimentRecord
from .executor import ExecutorSettings, settings_from_table

TOP_KEYS = (
    "name",
    "description",
    "output_dir",
    "axes_mode",
    "base",
    "profile",
    "finetune",
    "axes",
    "cells",
    "executor",
    "search",  # read by `conformer-bench search` (conformer_bench.search.spec); ablate runs the cells only
)
AXES_MODES = ("each", "product")
CELL_META_KEYS = ("label", "variant", "profile", "finetune", "repeat")
FINETUNE_EXTRA_KEYS = ("run", "seeds", "jobs")
# FinetuneSettings fields an experiment may not set: the seed comes from ``seeds``; checkpoints are per run.
FINETUNE_FORBIDDEN = ("seed", "save", "checkpoint", "allow_partial")
PROFILE_IMG_SIZE = 224  # ProfileSettings.img_size default
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+/:-]{0,79}$")  # a label written in the file
LABEL_LIMIT = 200  # characters of any cell label: written ones have at most 80, axis products may be longer
# An experiment's name becomes a folder (results/<name>) and a job name: no separator, no dot, no traversal.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
CELL_SPEC_SCHEMA = "conformer-bench.cell-spec"


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

    def costs_only(self, finetune: bool) -> bool:
        """Nothing timed or trained: params and FLOPs, counted from the config in milliseconds."""
        return not finetune and self.profile.get("mode") == "none"

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
    ) -> dict[str, Any]:
        """The JSON-serialisable spec a worker process runs this cell from (see :meth:`from_spec`)."""
        return {
            "schema": CELL_SPEC_SCHEMA,
            "schema_version": 1,
            "cell": {
                "index": self.index,
                "label": self.label,
                "config": self.config.to_dict(),
                "changes": self.changes,
                "profile": self.profile,
                "finetune": self.finetune,
                "seeds": list(self.seeds),
                "seed_jobs": self.seed_jobs,
            },
            "finetune": finetune,
            "reuse_profile": reuse_profile.to_dict() if reuse_profile is not None else None,
            "progress_fd": progress_fd,
            "cuda_device": cuda_device,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Cell:
        """The cell a :meth:`to_spec` spec describes (the config rebuilt from its ``to_dict`` form)."""
        from conformer import ConformerConfig

        c = spec["cell"]
        fields = dict(c["config"])
        fields["fcu_stages"] = tuple(fields["fcu_stages"])
        return cls(
            index=int(c["index"]),
            label=str(c["label"]),
            config=ConformerConfig(**fields),
            changes=dict(c["changes"]),
            profile=dict(c["profile"]),
            finetune=dict(c["finetune"]) if c["finetune"] is not None else None,
            seeds=tuple(int(s) for s in c["seeds"]),
            seed_jobs=int(c.get("seed_jobs", 1)),
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


# --- locating keys in the file, for error messages ----------------------------------------------------


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")


def _find_line(text: str, path: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of a key path such as ("cells", 2, "coupling") or ("profile", "mode")."""
    lines = text.splitlines()
    array = path[0] if len(path) > 1 and isinstance(path[1], int) else None
    index = path[1] if array is not None else None
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return None
    # First the key inside its table, then the table's own header.
    for table, key in ((names[:-1], names[-1]), (names, None)):
        header = ".".join(table)
        current, entry = "", -1
        for no, line in enumerate(lines, start=1):
            m = _HEADER_RE.match(line)
            if m:
                current = m.group(2).replace('"', "").replace(" ", "")
                if m.group(1) == "[[" and current == array:
                    entry += 1
                if key is None and current == header and (index is None or entry == index):
                    return no
                continue
            here = current == header and (index is None or entry == index)
            if key is not None and here and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line):
                return no
    return None


class _Checker:
    """Collects the file, its text and the way to raise an error that names file, line and key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, where: tuple[str | int, ...], message: str) -> BenchError:
        line = _find_line(self.text, where)
        key = _key_name(where)
        loc = f"{self.path}:{line}" if line else str(self.path)
        return BenchError(f"{loc}: {key}: {message}")


def _key_name(where: tuple[str | int, ...]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _unknown(keys: list[str], valid: tuple[str, ...] | list[str]) -> str:
    key = keys[0]
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}valid keys: {', '.join(valid)}"


def _type_ok(value: Any, annotation: str) -> bool:
    """Match a TOML value against a simple annotation string such as 'int | None'."""
    names = {part.strip() for part in str(annotation).split("|")}
    if isinstance(value, bool):
        return "bool" in names
    if isinstance(value, int):
        return bool(names & {"int", "float"})
    if isinstance(value, float):
        return "float" in names
    if isinstance(value, str):
        return "str" in names or any(n.startswith("Literal") for n in names)
    if isinstance(value, list):
        return any(n.startswith(("tuple", "list")) for n in names)
    return False


def _settings_fields(kind: str) -> dict[str, Any]:
    """Field name -> annotation of ProfileSettings or FinetuneSettings."""
    cls: Any
    if kind == "profile":
        from ..profiling import ProfileSettings

        cls = ProfileSettings
    else:
        from ..finetune import FinetuneSettings

        cls = FinetuneSettings
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _check_settings(chk: _Checker, where: tuple[str | int, ...], table: Any, kind: str) -> dict[str, Any]:
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
            raise chk.fail((*where, key), _unknown([key], valid))
        if key in FINETUNE_EXTRA_KEYS:
            continue
        if not _type_ok(value, fields[key]):
            raise chk.fail((*where, key), f"{value!r} has the wrong type; expected {fields[key]}")
        out[key] = value
    return out


def _build_config(
    chk: _Checker, where: tuple[str | int, ...], variant: str, overrides: dict[str, Any]
) -> Any:
    from conformer import get_config, resolve_name
    from conformer.config import OVERRIDABLE

    try:
        resolve_name(variant)
    except ValueError as exc:
        raise chk.fail((*where, "variant"), f"{exc}") from None
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise chk.fail((*where, key), _unknown([key], (*CELL_META_KEYS, *OVERRIDABLE)))
        if isinstance(value, dict):
            raise chk.fail((*where, key), "must be a value, not a table")
    try:
        return get_config(variant, **overrides)
    except (ValueError, TypeError) as exc:
        culprit = next((k for k in overrides if k in str(exc)), None)
        at = (*where, culprit) if culprit else where
        raise chk.fail(at, f"invalid variant: {exc}") from None


def _label_ok(chk: _Checker, where: tuple[str | int, ...], label: Any) -> str:
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


Where = tuple[str | int, ...]


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
    repeat: Any = False

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
    data, chk = _read_file(path)
    header = _read_header(chk, data, path, output_dir)
    base = _read_base(chk, data)
    defaults = _read_run_defaults(chk, data)
    base_cfg = _build_config(
        chk,
        ("base",),
        base.variant,
        {"img_size": defaults.profile.get("img_size", PROFILE_IMG_SIZE), **base.overrides},
    )
    sources = [_CellSource(("base",), base.label, base.variant, base.overrides)]
    sources += _axis_sources(chk, data, base, header.axes_mode)
    sources += _listed_sources(chk, data, base)
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


def _read_file(path: Path) -> tuple[dict[str, Any], _Checker]:
    """The file's TOML tables, with only known top-level keys and finite numbers, and the checker that
    locates its keys."""
    from ..files import first_non_finite, loads_toml, read_input_text

    text = read_input_text(path, "experiment file", "pass a TOML experiment file such as experiments/ci.toml")
    try:
        data = loads_toml(text)
    except ValueError as exc:
        raise BenchError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    chk = _Checker(path, text)
    for key in data:
        if key not in TOP_KEYS:
            raise chk.fail((key,), _unknown([key], TOP_KEYS))
    where = first_non_finite(data)
    if where is not None:
        raise chk.fail(where, "is not a finite number (nan and inf are never valid settings); give a number")
    return data, chk


def _read_header(chk: _Checker, data: dict[str, Any], path: Path, output_dir: str | Path | None) -> _Header:
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        given = "name" in data
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        fix = "use 1-80 letters, digits, _ or - (starting with a letter or digit)"
        raise chk.fail(
            ("name",),
            f"{shown} is not valid; {fix}"
            if given
            else f'the file name gives {shown}, which is not valid; add name = "..." and {fix}',
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise chk.fail(("description",), "must be a string")
    axes_mode = data.get("axes_mode", "each")
    if axes_mode not in AXES_MODES:
        raise chk.fail(("axes_mode",), f"{axes_mode!r} is not valid; choose one of: {', '.join(AXES_MODES)}")
    out_raw = data.get("output_dir", f"results/{name}")
    if not isinstance(out_raw, str) or not out_raw:
        raise chk.fail(("output_dir",), "must be a directory path string such as 'results/paper'")
    executor = settings_from_table(
        data.get("executor", {}),
        lambda key, message: chk.fail(("executor", key) if key else ("executor",), message),
    )
    out_dir = Path(output_dir) if output_dir is not None else Path(out_raw)
    return _Header(name, description, axes_mode, out_dir, executor)


def _read_base(chk: _Checker, data: dict[str, Any]) -> _Base:
    base = data.get("base")
    if not isinstance(base, dict) or "variant" not in base:
        raise chk.fail(
            ("base",), 'missing; add a [base] table with variant = "small" (see conformer-bench variants)'
        )
    if not isinstance(base["variant"], str):
        raise chk.fail(("base", "variant"), 'must be a preset name string such as "small"')
    label = _label_ok(chk, ("base", "label"), base.get("label", "base"))
    overrides = {k: v for k, v in base.items() if k not in ("label", "variant")}
    for key in ("profile", "finetune"):
        if key in overrides:
            raise chk.fail(("base", key), f"put run settings in the top-level [{key}] table, not in [base]")
    return _Base(base["variant"], label, overrides)


def _read_run_defaults(chk: _Checker, data: dict[str, Any]) -> _RunDefaults:
    profile = _check_settings(chk, ("profile",), data.get("profile", {}), "profile")
    ft_table = data.get("finetune")
    if ft_table is None:
        return _RunDefaults(profile)
    finetune = _check_settings(chk, ("finetune",), ft_table, "finetune")
    run_by_default = ft_table.get("run", False)
    if not isinstance(run_by_default, bool):
        raise chk.fail(("finetune", "run"), "must be true or false")
    seeds = ft_table.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_LIMIT for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise chk.fail(
            ("finetune", "seeds"),
            f"{str(seeds)[:60]} is not valid; give distinct integers from 0 to {SEED_LIMIT}, e.g. [0, 1]",
        )
    seed_jobs = ft_table.get("jobs", 1)
    if isinstance(seed_jobs, bool) or not isinstance(seed_jobs, int) or seed_jobs < 1:
        raise chk.fail(("finetune", "jobs"), f"{seed_jobs!r} is not valid; give an integer >= 1, e.g. 2")
    return _RunDefaults(profile, finetune, tuple(seeds), seed_jobs, run_by_default)


def _axis_sources(chk: _Checker, data: dict[str, Any], base: _Base, axes_mode: str) -> list[_CellSource]:
    """The cells of ``[axes]``: one axis value at a time (``each``) or every combination (``product``)."""
    axes = data.get("axes", {})
    if not isinstance(axes, dict):
        raise chk.fail(("axes",), "must be a table: [axes] key = [value, ...]")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise chk.fail(("axes", key), f"must be a non-empty list of values, e.g. {key} = [0, 1]")
    count = (
        sum(len(v) for v in axes.values())
        if axes_mode == "each"
        else math.prod(len(v) for v in axes.values())
    )
    if count > CELL_LIMIT:
        raise chk.fail(
            ("axes",), f"makes {count:,} cells, past the sanity bound of {CELL_LIMIT:,}; split the experiment"
        )
    if axes_mode == "each":
        return [_axis_source(base, {key: value}) for key, values in axes.items() for value in values]
    if not axes:
        return []
    keys = list(axes)
    combos = itertools.product(*(axes[k] for k in keys))
    return [_axis_source(base, dict(zip(keys, combo, strict=True))) for combo in combos]


def _axis_source(base: _Base, values: dict[str, Any]) -> _CellSource:
    label = ",".join(f"{k}={_value_text(v)}" for k, v in values.items())
    variant = values.get("variant", base.variant)
    rest = {k: v for k, v in values.items() if k != "variant"}
    overrides = {**base.overrides, **rest} if variant == base.variant else rest
    return _CellSource(("axes", next(iter(values))), label, str(variant), overrides)


def _listed_sources(chk: _Checker, data: dict[str, Any], base: _Base) -> list[_CellSource]:
    """The ``[[cells]]`` entries."""
    cells_raw = data.get("cells", [])
    if not isinstance(cells_raw, list):
        raise chk.fail(("cells",), "must be an array of tables: write each cell as [[cells]]")
    sources = []
    for i, raw in enumerate(cells_raw):
        where: Where = ("cells", i)
        if not isinstance(raw, dict):
            raise chk.fail(where, "must be a table: write each cell as [[cells]] with label = ...")
        if "label" not in raw:
            raise chk.fail(where, 'missing label; add label = "short-name" to this [[cells]] entry')
        label = _label_ok(chk, (*where, "label"), raw["label"])
        variant = raw.get("variant", base.variant)
        if not isinstance(variant, str):
            raise chk.fail((*where, "variant"), 'must be a preset name string such as "small"')
        overrides = {k: v for k, v in raw.items() if k not in CELL_META_KEYS}
        merged = {**base.overrides, **overrides} if variant == base.variant else overrides
        sources.append(
            _CellSource(
                where,
                label,
                variant,
                merged,
                raw.get("profile", {}),
                raw.get("finetune", {}),
                raw.get("repeat", False),
            )
        )
    return sources


def _build_cells(
    chk: _Checker,
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
            overrides["img_size"] = profile.get("img_size", PROFILE_IMG_SIZE)
        cfg = _build_config(chk, src.where, src.variant, overrides)
        _check_bounds(chk, src, cfg, profile.get("img_size", PROFILE_IMG_SIZE), force)
        run_key = _digest({"config": effective_config(cfg), "profile": profile, "finetune": src.finetune})
        if not isinstance(src.repeat, bool):
            raise chk.fail((*src.where, "repeat"), "must be true or false")
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


def _check_bounds(chk: _Checker, src: _CellSource, cfg: Any, img_size: Any, force: bool) -> None:
    """The cell's config within the sanity bounds shared with ``profile`` (O(1) before any counting)."""
    from ..bounds import check_bounds

    try:
        check_bounds(cfg, img_size=img_size if isinstance(img_size, int) else None, force=force)
    except BenchError as exc:
        raise chk.fail(src.where, f"cell {src.label!r}: {exc}") from None


def _cell_profile(
    chk: _Checker, src: _CellSource, defaults: _RunDefaults, profile_overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """The file's profile settings, then the cell's own, then the command line's."""
    profile = defaults.profile
    if src.profile:
        profile = {**profile, **_check_settings(chk, (*src.where, "profile"), src.profile, "profile")}
    return {**profile, **profile_overrides} if profile_overrides else profile


def _cell_finetune(chk: _Checker, src: _CellSource, defaults: _RunDefaults) -> dict[str, Any] | None:
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


def _check_constructible(chk: _Checker, cells: list[Cell]) -> None:
    """Settings objects must build (their own checks: mode, precision, ...)."""
    from ..profiling import ProfileSettings
    from ..profiling import validate_settings as check_profile

    for cell in cells:
        where: tuple[str | int, ...] = ("profile",)
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
