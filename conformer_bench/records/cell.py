"""The records of an ablation run folder: one ``conformer-bench.cell`` per finished cell (``cells.jsonl``), the
folder's ``conformer-bench.experiment`` summary (``experiment.json``) and its job ledger
(``conformer-bench.jobs``, ``jobs.json``).

A cell line holds the cell's model config once, in ``variant.config``. Version 1 also wrote it at the top
(``config``) and inside the nested profile and each fine-tuning record; version 2 leaves those copies out of
the line, and reading puts the nested ones back, so the cell's :class:`ProfileRecord` and
:class:`FinetuneRecord` are whole records in memory (their ``variant.config`` is the cell's).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Migration, Record, SchemaRecord, Status
from .common import Environment, Variant
from .finetune import FinetuneRecord
from .profile import ProfileRecord

CELL_SCHEMA = "conformer-bench.cell"
EXPERIMENT_SCHEMA = "conformer-bench.experiment"
JOBS_SCHEMA = "conformer-bench.jobs"


@dataclass(frozen=True)
class CellShard(Record):
    """Which share of the grid wrote the record: shard ``rank`` of ``world_size`` (0 of 1 unsharded)."""

    rank: int
    world_size: int


@dataclass(frozen=True)
class CellJob(Record):
    """The scheduler job that ran the cell (or ended without a record and was settled as failed)."""

    executor: str  # slurm | submitit-local
    id: str
    stdout: str
    stderr: str


def _config_of(data: Mapping[str, Any]) -> Any:
    variant = data.get("variant")
    return variant.get("config") if isinstance(variant, Mapping) else None


def _without_config(record: Any, config: Any) -> None:
    """Drop a nested record's ``variant.config`` (in place) when it is the cell's."""
    variant = record.get("variant") if isinstance(record, dict) else None
    if isinstance(variant, dict) and "config" in variant and variant["config"] == config:
        del variant["config"]


def _with_config(record: Any, config: Any) -> Any:
    """A nested record with the cell's config back in its ``variant`` (when the line left it out)."""
    variant = record.get("variant") if isinstance(record, Mapping) else None
    if not isinstance(variant, Mapping) or "config" in variant:
        return record
    return {**record, "variant": {**variant, "config": config}}


def _cell_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 held the config at the top and in ``variant``: keep the one in ``variant``."""
    out = dict(data)
    variant = out.get("variant")
    if not isinstance(variant, Mapping):  # a partial record: its config stays where it is
        return out
    config = out.pop("config", None)
    if "config" not in variant and config is not None:
        out["variant"] = {**variant, "config": config}
    config = out["variant"].get("config")
    if isinstance(out.get("profile"), dict):  # the nested records' copies: left out of the line since v2
        out["profile"] = copy.deepcopy(out["profile"])
        _without_config(out["profile"], config)
    if isinstance(out.get("finetune"), list):
        out["finetune"] = copy.deepcopy(out["finetune"])
        for run in out["finetune"]:
            _without_config(run, config)
    return out


@dataclass
class CellRecord(SchemaRecord):
    """A ``conformer-bench.cell`` record: one cell of a grid, its profile and fine-tuning runs, and where and
    how it ran. ``status`` is the cell's: its profile's, else the first failed seed's."""

    SCHEMA = CELL_SCHEMA
    VERSION = 2
    MIGRATIONS: ClassVar[Mapping[int, Migration]] = {1: _cell_v1_to_v2}
    OPTIONAL = frozenset({"job"})

    experiment: str
    experiment_hash: str | None
    label: str
    index: int | None
    variant: Variant  # the cell's config, the only copy in the line
    changes: dict[str, Any]  # config fields that differ from the base cell
    config_hash: str | None
    profile_hash: str | None
    finetune_hash: str | None
    status: Status
    reason: str | None
    profile: ProfileRecord | None
    finetune: list[FinetuneRecord]  # one per seed, in seed order
    seeds: list[int]
    environment: Environment | None  # the profile's, else this machine's; None: the job never reported
    wall_s: float | None
    finished: float | None  # time.time() when the record was made
    shard: CellShard | None
    isolation: str | None  # process | inline; absent in records from before isolation (they ran inline)
    job: CellJob | None = None  # only for cells run as scheduler jobs

    @property
    def config(self) -> dict[str, Any]:
        if self.variant is not None:
            return self.variant.config
        return dict(getattr(self, "_extra", {}).get("config") or {})  # a partial record without a variant

    @property
    def ran_in(self) -> str:
        """``process`` (a fresh Python process of its own) or ``inline``."""
        return self.isolation or "inline"

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.variant is None:  # a partial record read back as it was
            return out
        config = self.variant.config
        _without_config(out.get("profile"), config)
        for run in out.get("finetune") or []:
            _without_config(run, config)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellRecord:
        data = cls.migrate(data)
        config = _config_of(data)
        if config is not None:
            if isinstance(data.get("profile"), Mapping):
                data["profile"] = _with_config(data["profile"], config)
            if isinstance(data.get("finetune"), list):
                data["finetune"] = [_with_config(run, config) for run in data["finetune"]]
        return super().from_dict(data)

    def version_1(self) -> dict[str, Any]:
        """The record laid out as version 1 wrote it (the config at the top and in every nested record), for
        readers that still take the plain JSON."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            out[key] = value
            if key == "variant" and self.variant is not None:
                out["config"] = self.variant.config
        out["schema_version"] = 1
        if self.profile is not None:
            out["profile"] = self.profile.to_dict()
        if "finetune" in out and self.finetune is not None:
            out["finetune"] = [run.to_dict() for run in self.finetune]
        return out


@dataclass(frozen=True)
class CellHashes(Record):
    """What a cell of the experiment measures, as hashes: a record with others is stale."""

    profile_hash: str | None
    finetune_hash: str | None


@dataclass
class ExperimentRecord(SchemaRecord):
    """A ``conformer-bench.experiment`` record (``experiment.json``): what ``table`` and ``report`` need to render
    a run folder, and to tell stale cells, without the experiment file."""

    SCHEMA = EXPERIMENT_SCHEMA

    name: str
    experiment_hash: str | None
    description: str | None
    source: str | None
    base_label: str | None
    labels: list[str]
    axes_mode: str | None
    cells: dict[str, CellHashes]


@dataclass(frozen=True)
class JobEntry(Record):
    """The job that last ran (or runs) one cell."""

    label: str
    job_id: str
    executor: str  # "slurm" or "submitit-local"
    submitted: float  # seconds since the epoch
    config_hash: str
    finetune: bool
    stdout: str
    stderr: str
    attempt: int  # 1 for the cell's first job in this folder


@dataclass
class JobsRecord(SchemaRecord):
    """A ``conformer-bench.jobs`` record (``jobs.json``): per cell, the job that last ran it."""

    SCHEMA = JOBS_SCHEMA

    cells: dict[str, JobEntry]


@dataclass(frozen=True)
class CellSpec(Record):
    """A cell as a worker process rebuilds it: its config as ``ConformerConfig.to_dict()`` and its run
    settings as the keyword arguments the experiment file gave (what the cell's hashes are taken over)."""

    index: int
    label: str
    config: dict[str, Any]
    changes: dict[str, Any]
    profile: dict[str, Any]
    finetune: dict[str, Any] | None
    seeds: list[int]
    seed_jobs: int = 1


@dataclass(frozen=True)
class CellJobSpec(SchemaRecord):
    """What a worker process runs (``conformer_bench.ablate.worker``): a cell, whether to fine-tune it, the
    profile to reuse, the pipe it reports progress on and the CUDA device it is given."""

    SCHEMA = "conformer-bench.cell-spec"

    cell: CellSpec
    finetune: bool
    reuse_profile: ProfileRecord | None
    progress_fd: int | None
    cuda_device: int | None = None
