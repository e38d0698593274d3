"""The ``conformer-bench.speed`` record: every inference path of one variant, timed interleaved.

Versions: 1 ran every path under one autocast precision (``settings.precision``) and keyed paths by name
alone; 2 made precision an axis (``precisions``, a ceiling per precision, precision support, top-1
agreement on an evaluation set); 3 added the deployment backends, the preparation time, the ONNX export
and time by component per path. :data:`SpeedRecord.MIGRATIONS` brings an older file to the current layout
on read, keeping every measured value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Migration, Record, SchemaRecord, Status
from .breakdown import Breakdown
from .common import Environment, Variant

SPEED_SCHEMA = "conformer-bench.speed"


@dataclass(frozen=True)
class LatencySummary(Record):
    """Statistics of a list of seconds (``conformer_bench.stats.summarize``); never rounded."""

    OPTIONAL = frozenset({"q25", "q75"})

    n: int
    median: float
    q25: float | None  # absent in version 1
    q75: float | None
    mean: float
    min: float
    max: float
    p90: float
    p99: float
    iqr: float
    iqr_over_median: float
    noisy: bool


@dataclass(frozen=True)
class Ceiling(Record):
    """One matmul ceiling: an n x n matmul in one precision, timed in the same rounds as the paths."""

    precision: str  # fp32 (TF32 off) | tf32 | bf16 | fp16
    op: str
    matmul_size: int
    flop_per_call: float
    samples_s: list[float]
    latency_s: LatencySummary
    gflop_s: float  # at the median
    gflop_s_best: float


@dataclass(frozen=True)
class SpeedUp(Record):
    """A path's median speed-up over plain fp32, with a bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float


@dataclass(frozen=True)
class PerHead(Record):
    """One value per logits head (None: the variant has no such head, or nothing was counted)."""

    conv: float | None
    trans: float | None
    sum: float | None


@dataclass(frozen=True)
class ExportInfo(Record):
    """The ONNX export a runtime ran: file, outputs, whether the cache had it, seconds, opset, tool versions."""

    path: str
    output_names: list[str]
    cache_hit: bool
    export_s: float  # 0 for a cache hit
    opset: int | None
    tools: dict[str, str]  # package -> version (torch, onnx, onnxscript) and the exporter code's digest


@dataclass(frozen=True)
class PrecisionSupport(Record):
    """Whether ``precision`` runs natively on ``device``; ``reason`` says why not, ``kernels`` what runs."""

    precision: str
    device: str
    supported: bool
    reason: str | None
    kernels: str
    evidence: dict[str, Any]  # what was probed (CPU flags, oneDNN, CUDA) and what it said


@dataclass(frozen=True)
class EvaluationSet(Record):
    """The fixed images on which top-1 agreement with plain fp32 is counted."""

    images: int
    what: str


@dataclass(frozen=True)
class SpeedFlops(Record):
    """FLOPs per image of a speed run (paper convention, counted once on the plain model)."""

    convention: str
    img_size: int
    paper_macs_per_image: int
    fvcore_total_per_image: int
    flop_per_image: int
    uncounted_ops: dict[str, int]
    executed_paper_macs_per_image_optimized: int


@dataclass(frozen=True)
class RunSettings(Record):
    """What a speed run measured (``conformer_bench.speed.SpeedSettings`` as written, with the thread count
    in force, the order and the timer)."""

    OPTIONAL = frozenset({"precision", "agreement_images", "ceilings", "breakdown_rounds"})

    device: str
    batch_size: int
    img_size: int
    paths: list[str]
    precisions: list[str]
    rounds: int
    warmup: int
    matmul_size: int
    threads: int
    channels_last: bool
    fold_bn: bool
    fuse_pointwise: bool
    pool_first: bool
    agreement_images: int | None  # since version 2
    seed: int
    ceilings: list[str] | None  # matmul ceilings timed (written since version 2's GPU runs)
    backends: list[str] | None  # since version 3 (migrated: eager)
    breakdown: bool | None
    breakdown_rounds: int | None
    order: str
    timer: str
    precision: str | None = None  # version 1 only: the one autocast precision of every path and its reference

    @property
    def reference(self) -> str:
        """What the logits were compared with: plain fp32, or (version 1) plain in the run's one precision."""
        return "fp32 model" if self.precision is None else f"model in {self.precision}"


@dataclass
class SpeedPath(Record):
    """One measured path of a speed run, filled in as the run goes: description, first call, timing.

    A path that failed keeps what it got before failing; ``compile_s`` is written (null unless compiled)
    whenever ``first_call_s`` is.
    """

    OPTIONAL = frozenset(
        {
            "first_call_s",
            "max_rel_diff_vs_plain",
            "rms_rel_diff_vs_plain",
            "max_abs_diff_vs_plain",
            "top1_agreement_vs_plain",
            "samples_s",
            "latency_s",
            "img_per_s",
            "img_per_s_iqr",
            "achieved_gflop_s",
            "ceiling_precision",
            "ceiling_share",
            "executed_paper_macs_per_image",
            "executed_gflop_s",
            "executed_ceiling_share",
            "speedup_vs_plain",
            "precision_name",
            "prepare_s",
            "export",
            "breakdown",
        }
    )

    path: str
    precision: str
    status: Status  # ok | unsupported | failed
    reason: str | None
    description: str
    kernels: str | None
    first_call_s: float | None = None
    compile_s: float | None = None
    max_rel_diff_vs_plain: float | None = None
    rms_rel_diff_vs_plain: float | None = None
    max_abs_diff_vs_plain: float | None = None
    top1_agreement_vs_plain: PerHead | None = None  # share of images whose top-1 matches plain fp32's
    samples_s: list[float] | None = None
    latency_s: LatencySummary | None = None
    img_per_s: float | None = None
    img_per_s_iqr: list[float] | None = None
    achieved_gflop_s: float | None = None
    ceiling_precision: str | None = None
    ceiling_share: float | None = None
    executed_paper_macs_per_image: int | None = None
    executed_gflop_s: float | None = None
    executed_ceiling_share: float | None = None
    speedup_vs_plain: SpeedUp | None = None
    # schema 3: where the path ran (eager or a deployment runtime) and the precision as that backend names it
    backend: str = "eager"
    precision_name: str | None = None
    prepare_s: float | None = None  # export + session creation or compilation, before the first call
    export: ExportInfo | None = None  # the ONNX export a runtime ran
    breakdown: Breakdown | None = None  # time by component, when asked for

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.first_call_s is None:
            out.pop("compile_s", None)
        return out

    @property
    def timed(self) -> bool:
        """Whether the path ran and was timed (ok, with samples)."""
        return self.status == Status.OK and self.img_per_s is not None


# --- migrations (a JSON object at version v -> at v + 1) -----------------------------------------------------


def _with(d: dict[str, Any], after: str | None, **new: Any) -> dict[str, Any]:
    """``d`` with ``new`` keys inserted after ``after`` (first when None; last when ``after`` is absent);
    keys already in ``d`` keep their value and place."""
    new = {k: v for k, v in new.items() if k not in d}
    if after is None:
        return {**new, **d}
    if after not in d:
        return {**d, **new}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v
        if k == after:
            out.update(new)
    return out


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """One autocast precision for all paths -> precision as an axis: the precision moves onto each path,
    the one ceiling is named by its precision, ``ceilings`` holds it; no precision support or evaluation
    set was recorded (empty, null). ``settings.precision`` stays: the logits reference was plain in it."""
    precision = data["settings"].get("precision", "fp32")
    ceiling = _with(dict(data["ceiling"]), None, precision="fp32")  # version 1's lone ceiling: fp32 matmul
    ceilings = data.get("ceilings") or {ceiling["precision"]: ceiling}
    settings = _with(dict(data["settings"]), "paths", precisions=[precision])
    settings = _with(settings, "seed", ceilings=list(ceilings))
    paths = {}
    for name, entry in data["paths"].items():
        entry = _with(dict(entry), None, path=name, precision=precision)
        entry = _with(entry, "description", kernels=None)
        if entry.get("img_per_s") is not None:
            entry = _with(entry, "achieved_gflop_s", ceiling_precision=ceiling["precision"])
        paths[name] = entry
    out = {**data, "settings": settings, "ceiling": ceiling, "paths": paths}
    out = _with(out, "settings", precision_support={}, evaluation_set=None)
    return _with(out, "ceiling", ceilings=ceilings)


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Eager paths only -> backends: each path ran on eager under its own precision's name; no breakdown."""
    settings = _with(dict(data["settings"]), "seed", ceilings=list(data["ceilings"]))
    settings = _with(settings, "ceilings", backends=["eager"], breakdown=False)
    paths = {
        name: {**entry, "backend": "eager", "precision_name": entry["precision"]}
        for name, entry in data["paths"].items()
    }
    return {**data, "settings": settings, "paths": paths}


@dataclass
class SpeedRecord(SchemaRecord):
    """A ``conformer-bench.speed`` record: every path of one variant timed interleaved, per precision."""

    SCHEMA = SPEED_SCHEMA
    VERSION = 3
    MIGRATIONS: ClassVar[Mapping[int, Migration]] = {1: _v1_to_v2, 2: _v2_to_v3}

    status: Status  # ok | failed
    reason: str | None
    environment: Environment
    variant: Variant
    settings: RunSettings
    precision_support: dict[str, PrecisionSupport]  # empty in a migrated version 1 record
    evaluation_set: EvaluationSet | None  # None in a migrated version 1 record (no agreement counted)
    flops: SpeedFlops
    ceiling: Ceiling  # the fp32 one (version 1: the run's one)
    ceilings: dict[str, Ceiling]
    paths: dict[str, SpeedPath]
    best_path: str | None
