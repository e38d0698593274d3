"""Measure two revisions side by side: cells timed in lockstep rounds by one long-lived worker per revision.

For each cell both workers build the cell's model, warm it up and time one step; then, round after round,
each runs a turn of the same number of steps, the order drawn at random per round (randomised multiple
interleaved trials), so that whatever the machine does hits both sides alike. A cell's rounds come in
epochs: each epoch builds the cell anew on both sides, after holding a random number of bytes, so that the
estimate averages over memory layouts rather than keeping one layout's luck. The schedules:

- ``same-core`` (default): turns alternate, both workers pinned to the same core(s);
- ``split-cores``: turns alternate, each worker on a core of its own (the cores swap every epoch);
- ``duet``: both turns at once, each worker on a core of its own (Bulej et al., ICPE 2020; cores swap too).

Optionally a second pass counts each cell's inference instructions under callgrind: one valgrind process
per revision counts every cell, so torch is imported once per revision.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..records import ABSettings, InstructionCounts, PairedCell, PairedRound, Status
from .workers import Launch, Reply, Worker, WorkerGone, hello

PHASES = ("infer", "train")
PRECISIONS = ("fp32", "bf16")  # what the worker measures (autocast or a bf16 optimized copy)
PATHS = ("plain", "optimized")
SIDES = ("base", "head")
BUILD_TIMEOUT_S = 900.0
TURN_TIMEOUT_S = 600.0
MAX_PAD_BYTES = 1 << 20  # a rebuild holds up to this much first, so its tensors land elsewhere
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ABCell:
    """One cell and phase to time: the worker's build message plus what identifies it.

    ``config`` holds the config fields the cell sets away from the defaults: each revision fills in the
    rest with its own defaults, so a field added by a newer revision does not stop an older one."""

    label: str
    phase: str
    config: dict[str, Any]
    config_hash: str
    batch_size: int
    img_size: int
    precision: str
    path: str
    threads: int

    @property
    def key(self) -> str:
        return f"{self.label}/{self.phase}"

    def message(self, warmup: int, seed: int, **extra: Any) -> dict[str, Any]:
        cell = {
            "label": self.label, "config": self.config, "phase": self.phase, "batch_size": self.batch_size,
            "img_size": self.img_size, "precision": self.precision, "path": self.path,
            "threads": self.threads, "warmup": warmup, "seed": seed,
        }  # fmt: skip
        return {"op": "build", "cell": {**cell, **extra}}

    def empty(self, status: Status, reason: str | None, side: str | None) -> PairedCell:
        return PairedCell(
            self.label, self.phase, status, reason, side, self.config_hash, self.batch_size, self.img_size,
            self.precision, self.path, self.threads, 0, [],
        )  # fmt: skip


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def cores_for(schedule: str, threads: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """CPU cores of the base and head workers: the last ``threads`` usable cores for both (same-core), or
    a set each (split-cores, duet)."""
    usable = usable_cores()
    if not usable:
        return (), ()
    if schedule == "same-core":
        shared = tuple(usable[-threads:]) if threads <= len(usable) else tuple(usable)
        return shared, shared
    if 2 * threads > len(usable):
        raise BenchError(
            f"--schedule {schedule} needs {2 * threads} cores ({threads} thread(s) a side) but "
            f"{len(usable)} are usable; use --schedule same-core or fewer threads"
        )
    return tuple(usable[-2 * threads : -threads]), tuple(usable[-threads:])


class _Pair:
    """The two workers, started together and stopped together."""

    def __init__(
        self, trees: dict[str, Path], cores: tuple[tuple[int, ...], tuple[int, ...]], logs: Path | None
    ) -> None:
        self.trees, self.cores, self.logs = trees, cores, logs
        self.workers: dict[str, Worker] = {}
        self.hello: dict[str, Any] = {}
        self.start()

    def start(self) -> None:
        try:
            for side, core in zip(SIDES, self.cores, strict=True):
                log = self.logs / f"{side}.log" if self.logs else None
                self.workers[side] = Worker(Launch(side, self.trees[side], core, log))
            self.hello = {side: hello(w).sent for side, w in self.workers.items()}
        except BaseException:
            self.close()
            raise

    def restart(self) -> None:
        """New workers after one died (the cell it was on is recorded as failed; the run goes on)."""
        self.close()
        self.workers = {}
        self.start()

    def each(self, messages: dict[str, dict[str, Any]], timeout_s: float) -> dict[str, Reply]:
        """Send each worker its message, then wait for both answers (they run at once)."""
        for side, w in self.workers.items():
            w.send(messages[side])
        return {side: w.receive(timeout_s) for side, w in self.workers.items()}

    def swap_cores(self, epoch: int) -> None:
        """On split cores, base and head trade cores every epoch so that neither keeps the better one."""
        if self.cores[0] == self.cores[1]:
            return
        order = self.cores if epoch % 2 == 0 else self.cores[::-1]
        for side, cores in zip(SIDES, order, strict=True):
            answer = self.workers[side].request({"op": "pin", "cores": list(cores)}, 60.0)
            if not answer.ok:
                raise _CellFailed(side, f"could not move to cores {list(cores)}: {answer.reason}")

    def close(self) -> None:
        for w in self.workers.values():
            w.close()


class _CellFailed(Exception):
    def __init__(self, side: str, reason: str) -> None:
        super().__init__(reason)
        self.side = side


def _refusal(answers: dict[str, Reply]) -> tuple[Status, str, str | None] | None:
    """The status, reason and side of a build that did not succeed. Only the base may lack something the
    experiment asks for (unsupported, shown); anything the head cannot build is a failure (it blocks)."""
    bad = {side: a for side, a in answers.items() if not a.ok}
    if not bad:
        return None
    reason = "; ".join(f"{side}: {a.reason}" for side, a in bad.items())
    side = "head" if "head" in bad else "base"
    unsupported = side == "base" and bad[side].status == Status.UNSUPPORTED
    return Status.UNSUPPORTED if unsupported else Status.FAILED, reason, side


def _turn_times(answer: Reply, side: str) -> tuple[float, float, int]:
    """A turn's wall and CPU seconds (sums over its steps) and the page faults it took."""
    if not answer.ok:
        raise _CellFailed(side, str(answer.reason))
    return float(sum(answer.wall_s)), float(sum(answer.cpu_s)), answer.page_faults


def _rounds_for(settings: ABSettings, step_s: float, steps: int, budget_s: float) -> int:
    if settings.rounds is not None:
        return settings.rounds
    per_round = 2 * step_s * steps
    wanted = math.floor(budget_s / per_round) if per_round > 0 else settings.max_rounds
    return max(settings.min_rounds, min(settings.max_rounds, wanted))


def _epoch_rounds(total: int, epochs: int) -> list[int]:
    """``total`` rounds shared out over ``epochs`` (the first ones take the remainder)."""
    epochs = max(1, min(epochs, total))
    return [total // epochs + (1 if e < total % epochs else 0) for e in range(epochs)]


def _time_cell(
    pair: _Pair, cell: ABCell, settings: ABSettings, budget_s: float, rng: random.Random
) -> PairedCell:
    """Time the cell in epochs: each builds the cell anew on both sides (another memory layout) and runs
    its share of the rounds; a side that cannot build or run it ends the cell."""
    timed = cell.empty(Status.OK, None, None)
    plan: list[int] = []
    try:
        for epoch in range(settings.epochs):
            if plan and epoch >= len(plan):
                break
            pair.swap_cores(epoch)
            refused = _build(pair, cell, settings, rng)
            if refused is not None:
                return cell.empty(*refused) if epoch == 0 else _failed(timed, Status.FAILED, *refused[1:])
            if epoch == 0:
                timed.steps_per_turn, n_rounds = _plan(pair, settings, budget_s)
                plan = _epoch_rounds(n_rounds, settings.epochs)
            for _ in range(plan[epoch]):
                timed.rounds.append(_round(pair, settings.schedule, timed.steps_per_turn, epoch, rng))
    except _CellFailed as exc:
        return _failed(timed, Status.FAILED, f"{exc.side}: {exc}", exc.side)
    return timed


def _failed(cell: PairedCell, status: Status, reason: str, side: str | None) -> PairedCell:
    cell.status, cell.reason, cell.failed_side = status, reason, side
    return cell


def _build(
    pair: _Pair, cell: ABCell, settings: ABSettings, rng: random.Random
) -> tuple[Status, str, str | None] | None:
    """Build the cell on both sides at once, each after holding a random number of bytes (its layout)."""
    messages = {
        side: cell.message(settings.warmup, settings.seed, pad_bytes=rng.randrange(0, MAX_PAD_BYTES))
        for side in SIDES
    }
    return _refusal(pair.each(messages, BUILD_TIMEOUT_S))


def _plan(pair: _Pair, settings: ABSettings, budget_s: float) -> tuple[int, int]:
    """Steps per turn and rounds for the cell, from one step timed on each side, one after the other."""
    step_s = max(
        _turn_times(pair.workers[side].request({"op": "turn", "steps": 1}, BUILD_TIMEOUT_S), side)[0]
        for side in SIDES
    )
    steps = max(1, math.ceil(settings.turn_s / step_s)) if step_s > 0 else 1
    return steps, _rounds_for(settings, step_s, steps, budget_s)


def _round(pair: _Pair, schedule: str, steps: int, epoch: int, rng: random.Random) -> PairedRound:
    message = {"op": "turn", "steps": steps}
    if schedule == "duet":
        answers = pair.each(dict.fromkeys(SIDES, message), TURN_TIMEOUT_S)
        order = "duet"
    else:
        sides = list(SIDES)
        rng.shuffle(sides)
        answers = {side: pair.workers[side].request(message, TURN_TIMEOUT_S) for side in sides}
        order = ",".join(sides)
    (bw, bc, bf), (hw, hc, hf) = (_turn_times(answers[side], side) for side in SIDES)
    return PairedRound(order, epoch, bw, hw, bc, hc, bf, hf)


@dataclass
class TimingRun:
    """What the timing pass produced: a cell per cell and phase, and each worker's start-up answer."""

    cells: list[PairedCell]
    workers: dict[str, Any] = field(default_factory=dict)


def time_cells(
    trees: dict[str, Path],
    cells: list[ABCell],
    settings: ABSettings,
    *,
    logs: Path | None = None,
    progress: Progress | None = None,
    on_cell: Callable[[PairedCell], None] | None = None,
) -> TimingRun:
    """Time every cell with both revisions' workers, sharing ``settings.budget_s`` out as cells go.

    A worker that dies (a crash, an out-of-memory kill, no answer) fails the cell it was on, on its side,
    and both workers start anew for the next cell.
    """
    threads = max((c.threads for c in cells), default=1)
    pair = _Pair(trees, cores_for(settings.schedule, threads), logs)
    rng = random.Random(settings.seed)
    out = TimingRun([], dict(pair.hello))
    spent = 0.0
    try:
        for i, cell in enumerate(cells):
            if progress is not None:
                progress(f"[{i + 1}/{len(cells)}] {cell.key}: building and timing")
            share = max(0.0, settings.budget_s - spent) / (len(cells) - i)
            started = time.perf_counter()
            try:
                paired = _time_cell(pair, cell, settings, share, rng)
            except WorkerGone as exc:
                paired = cell.empty(Status.FAILED, str(exc), exc.side)
                pair.restart()
            spent += time.perf_counter() - started
            out.cells.append(paired)
            if on_cell is not None:
                on_cell(paired)
    finally:
        pair.close()
    return out


# --- instruction counts ---------------------------------------------------------------------------------------

_SUMMARY_RE = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def valgrind_version() -> str:
    """``valgrind-3.19.0``, or a BenchError naming the fix when valgrind is not installed."""
    exe = shutil.which("valgrind")
    if exe is None or shutil.which("callgrind_control") is None:
        raise BenchError(
            "--instructions needs valgrind and its callgrind_control; install valgrind "
            "(apt-get install valgrind) or drop the option"
        )
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or "valgrind"


def _callgrind_prefix(out_dir: Path, side: str) -> tuple[str, ...]:
    """valgrind's callgrind with instrumentation and collection off until the worker turns them on; address
    randomisation off."""
    prefix: list[str] = []
    setarch = shutil.which("setarch")
    if setarch is not None and subprocess.run([setarch, "-R", "true"], capture_output=True).returncode == 0:
        prefix = [setarch, "-R"]
    return (
        *prefix,
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",  # the worker switches it on once torch is imported (callgrind_control)
        "--collect-atstart=no",
        "--dump-instr=no",
        "--dump-line=no",
        "--quiet",
        f"--callgrind-out-file={out_dir / side}.%p",
    )


def _dumped_instructions(out_dir: Path, side: str, pid: int, dump: int) -> float:
    """Ir of dump number ``dump`` of the worker ``pid`` (callgrind names it ``<side>.<pid>.<dump>``)."""
    path = out_dir / f"{side}.{pid}.{dump}"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        raise BenchError(f"callgrind wrote no dump {path}; check the worker log in {out_dir}") from None
    match = _SUMMARY_RE.search(text)
    if match is None:
        raise BenchError(f"callgrind dump {path} has no summary line")
    return float(match.group(1))


@contextmanager
def _callgrind_workers(
    trees: dict[str, Path], out_dir: Path, logs: Path | None
) -> Iterator[tuple[dict[str, Worker], dict[str, int]]]:
    """Both revisions' workers under callgrind (a core each where there are two), and their pids."""
    cores = cores_for("split-cores", 1) if len(usable_cores()) >= 2 else ((), ())
    workers: dict[str, Worker] = {}
    try:
        for side, core in zip(SIDES, cores, strict=True):
            log = logs / f"{side}-callgrind.log" if logs else None
            workers[side] = Worker(Launch(side, trees[side], core, log, _callgrind_prefix(out_dir, side)))
        pids = {side: int(hello(w, timeout_s=1800).pid or 0) for side, w in workers.items()}
        yield workers, pids
    finally:
        for w in workers.values():
            w.close(grace_s=120)


def count_instructions(
    trees: dict[str, Path],
    cells: list[ABCell],
    settings: ABSettings,
    *,
    logs: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, InstructionCounts]:
    """Instructions per image of each inference cell, both revisions counted at once under callgrind, one
    thread each (counts of several threads depend on how the work was split)."""
    tool = valgrind_version() + " callgrind, Ir"
    infer = [c for c in cells if c.phase == "infer"]
    counts: dict[str, InstructionCounts] = {}
    if not infer:
        return counts
    with tempfile.TemporaryDirectory(prefix="conformer-bench-callgrind-") as tmp:
        out_dir = Path(tmp)
        with _callgrind_workers(trees, out_dir, logs) as (workers, pids):
            dumps = dict.fromkeys(SIDES, 0)
            for i, cell in enumerate(infer):
                if progress is not None:
                    progress(f"[{i + 1}/{len(infer)}] {cell.key}: counting instructions under callgrind")
                per_image, reason = _count_cell(workers, cell, settings, out_dir, pids, dumps)
                counts[cell.key] = InstructionCounts(
                    per_image["base"], per_image["head"], settings.count_steps, tool, reason
                )
    return counts


def _count_cell(
    workers: dict[str, Worker],
    cell: ABCell,
    settings: ABSettings,
    out_dir: Path,
    pids: dict[str, int],
    dumps: dict[str, int],
) -> tuple[dict[str, float | None], str | None]:
    """Build the cell under callgrind on both sides, count ``count_steps`` steps: instructions per image per
    side (None where a side could not build or count it) and why not."""
    message = cell.message(settings.warmup, settings.seed, threads=1)
    for w in workers.values():
        w.send(message)
    built = {side: w.receive(BUILD_TIMEOUT_S * 4) for side, w in workers.items()}
    for side, w in workers.items():
        if built[side].ok:
            w.send({"op": "count", "steps": settings.count_steps})
    answers = {
        side: w.receive(BUILD_TIMEOUT_S * 4) if built[side].ok else built[side] for side, w in workers.items()
    }
    result: dict[str, float | None] = dict.fromkeys(SIDES)
    reasons = []
    for side, answer in answers.items():
        if not answer.ok:
            reasons.append(f"{side}: {answer.reason}")
            continue
        dumps[side] += 1
        total = _dumped_instructions(out_dir, side, pids[side], dumps[side])
        if total <= 0:
            reasons.append(f"{side}: callgrind counted no instruction (instrumentation never came on)")
            continue
        result[side] = total / (settings.count_steps * cell.batch_size)
    return result, "; ".join(reasons) or None
