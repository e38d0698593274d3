"""Run the cells of an experiment: each one isolated, each finished one stored at once, resumable, shardable.

Records go through the run folder's store (:mod:`.store`): appended under its lock, one process per cell
at a time, so shards, torchrun ranks and separate ``ablate`` commands on one folder lose nothing.
``shard-I-of-N.done`` marks a finished shard; the last shard to finish writes the tables.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import BenchError
from ..files import atomic_write_text, read_json, write_json
from .experiment import Cell, Experiment
from .store import CELL_SCHEMA, CELL_SCHEMA_VERSION, Holder, ResultStore

TEMP_PREFIX = "conformer-bench-cell-"


class CellProgress(Protocol):
    """What a running cell reports: what it is doing and, when known, how far it is (done of total)."""

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None: ...


class _NoProgress:
    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        pass


CellFn = Callable[[Cell, bool, "dict[str, Any] | None", CellProgress], dict[str, Any]]


# --- one cell -----------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _status_of(record: dict[str, Any] | None) -> tuple[str, str | None]:
    if record is None:
        return "failed", "no record"
    return str(record.get("status", "ok")), record.get("reason")


def run_cell(
    cell: Cell, finetune: bool, reuse_profile: dict[str, Any] | None, progress: CellProgress
) -> dict[str, Any]:
    """Profile (and fine-tune, once per seed) one cell; never raises for a failure inside the cell.

    A crash, an out-of-memory error or a non-finite loss becomes the cell's ``status`` and ``reason``;
    ``KeyboardInterrupt`` and ``SystemExit`` pass through (the cell is then not written).
    """
    from ..env import fingerprint, resolve_device

    started = time.time()
    status, reason = "ok", None
    profile: dict[str, Any] | None = reuse_profile
    finetunes: list[dict[str, Any]] = []
    settings = cell.profile_settings()
    try:
        device = resolve_device(settings.device)
    except BenchError as exc:
        device, status, reason = "cpu", "failed", str(exc)
    if status == "ok" and profile is None:
        progress.update("profile", 0.0, 1.0)
        try:
            from ..profiling import profile_variant

            profile = profile_variant(
                cell.config, settings, label=cell.label, progress=_profile_callback(progress)
            )
            status, reason = _status_of(profile)
            if status != "ok":
                reason = f"profile: {reason}"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            status = "oom" if _is_oom(exc) else "failed"
            reason = f"profile: {_one_line(exc)}"
        finally:
            if not cell.costs_only(finetune):  # a costs-only profile builds no model: nothing to free
                _free_memory()
    if finetune and status == "ok":
        finetunes, ft_status, ft_reason = _finetune_seeds(cell, settings.threads, device, progress)
        if ft_status != "ok":
            status, reason = ft_status, ft_reason
    environment = (profile or {}).get("environment") or fingerprint(
        device, settings.precision, settings.batch_size, settings.img_size
    )
    return {
        "profile": profile,
        "finetune": finetunes,
        "status": status,
        "reason": reason,
        "environment": environment,
        "wall_s": time.time() - started,
    }


def _finetune_seeds(
    cell: Cell, threads: int | None, device: str, progress: CellProgress
) -> tuple[list[dict[str, Any]], str, str | None]:
    """Fine-tune ``cell`` once per seed: records in seed order, and the first failure's status and reason.

    With ``cell.seed_jobs > 1`` on the CPU, seeds run at once, each in a spawned process with the cell's
    threads; every seed computes exactly what it would alone.
    """
    jobs = min(cell.seed_jobs, len(cell.seeds)) if device == "cpu" else 1
    records: dict[int, dict[str, Any]] = {}
    failures: dict[int, tuple[str, str]] = {}

    def settle(seed: int, outcome: dict[str, Any] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            failures[seed] = ("oom" if _is_oom(outcome) else "failed", _one_line(outcome))
        else:
            records[seed] = outcome
            st, why = _status_of(outcome)
            if st != "ok":
                failures[seed] = (st, str(why))
        progress.update(f"fine-tune: {len(records) + len(failures)} of {len(cell.seeds)} seeds done")

    progress.update(f"fine-tune: {len(cell.seeds)} seed(s)" + (f", {jobs} at once" if jobs > 1 else ""))
    if jobs == 1:
        _set_threads(threads)  # the cell's threads hold for its fine-tuning too
        for seed in cell.seeds:
            try:
                settle(seed, finetune_seed(cell, seed))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                settle(seed, exc)
            finally:
                _free_memory()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_set_threads, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(finetune_seed, cell, seed): seed for seed in cell.seeds}
            try:
                for future in as_completed(futures):
                    error = future.exception()
                    settle(futures[future], error if error is not None else future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    ordered = [records[seed] for seed in cell.seeds if seed in records]
    for seed in cell.seeds:
        if seed in failures:
            st, why = failures[seed]
            return ordered, st, f"finetune seed {seed}: {why}"
    return ordered, "ok", None


def finetune_seed(cell: Cell, seed: int) -> dict[str, Any]:
    """One seed's fine-tune record (runs in this process or in a seed worker)."""
    from ..finetune import run_finetune

    return run_finetune(cell.config, cell.finetune_settings(seed), label=cell.label, show_progress=False)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _profile_callback(progress: CellProgress) -> Callable[[str, float], None]:
    """profile_variant reports (what is running, fraction of the profile done)."""

    def callback(message: str, fraction: float) -> None:
        progress.update(f"profile: {message}", fraction, 1.0)

    return callback


# --- one cell in a process of its own ------------------------------------------------------------------

CELL_MODULE = "conformer_bench.ablate.cell"
# Variables torchrun sets for its ranks: a cell's process must not see them, or fine-tuning would try to
# join the ranks' process group.
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)
_CRASH_SIGNALS = ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL")


def cell_command() -> list[str]:
    """The command that runs one cell; the spec and result paths are appended."""
    return [sys.executable, "-m", CELL_MODULE]


def child_env() -> dict[str, str]:
    """This process's environment without torchrun's variables."""
    return {
        k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("TORCHELASTIC_")
    }


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Run in the child before exec: on Linux, have the kernel SIGKILL it when the parent dies."""
    prctl: Callable[..., int] | None = None
    if sys.platform.startswith("linux"):
        import ctypes

        # Resolved here, not after fork: the child runs no imports while other threads may hold locks.
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took hold
            os._exit(1)

    return setup


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Terminate a cell's process, killing it when it does not end within ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 8192))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def exit_reason(returncode: int, last_line: str = "") -> str:
    """One line saying how a cell's process ended without a result."""
    tail = f": {last_line}" if last_line else ""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name == "SIGKILL":
            text = f"the cell's process was killed by SIGKILL (out of memory?){tail}"
        elif name in _CRASH_SIGNALS:
            text = f"the cell's process crashed with {name}{tail}"
        else:
            text = f"the cell's process was killed by {name}{tail}"
    elif returncode == 0:
        text = f"the cell's process exited without writing a result{tail}"
    else:
        text = f"the cell's process exited with code {returncode}{tail}"
    return " ".join(text.split())[:500]


def _relay(buffer: bytes, progress: CellProgress) -> bytes:
    """Pass complete progress lines on; return the unfinished rest."""
    *lines, rest = buffer.split(b"\n")
    for line in lines:
        try:
            msg = json.loads(line)
            progress.update(str(msg["message"]), msg.get("done"), msg.get("total"))
        except (ValueError, KeyError, TypeError):
            continue  # not a progress line: ignore
    return rest


def _failed_result(
    cell: Cell, reuse_profile: dict[str, Any] | None, reason: str, wall_s: float
) -> dict[str, Any]:
    from ..env import fingerprint, resolve_device

    settings = cell.profile_settings()
    try:
        device = resolve_device(settings.device)
    except BenchError:
        device = "cpu"
    environment = (reuse_profile or {}).get("environment") or fingerprint(
        device, settings.precision, settings.batch_size, settings.img_size
    )
    return {
        "profile": reuse_profile,
        "finetune": [],
        "status": "failed",
        "reason": reason,
        "environment": environment,
        "wall_s": wall_s,
    }


def run_cell_in_process(
    cell: Cell,
    finetune: bool,
    reuse_profile: dict[str, Any] | None,
    progress: CellProgress,
    *,
    cuda_device: int | None = None,
) -> dict[str, Any]:
    """Run :func:`run_cell` in a fresh Python process; a process that dies without a result is a failed cell.

    Progress lines from the child move ``progress``; its stdout and stderr are captured, and their last
    line ends the reason of a failure. Any exception here (Ctrl-C, SIGTERM as SystemExit) stops the child.
    """
    from .cell import cell_spec

    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        spec_path, result_path, log_path = (Path(tmp) / n for n in ("spec.json", "result.json", "output.log"))
        read_fd, write_fd = os.pipe()
        try:
            write_json(spec_path, cell_spec(cell, finetune, reuse_profile, write_fd, cuda_device))
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [*cell_command(), str(spec_path), str(result_path)],
                    env=child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,  # a terminal's Ctrl-C reaches the parent, which stops the child
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            os.close(write_fd)
            write_fd = -1
            try:
                _follow(proc, read_fd, progress)
            except BaseException:
                _stop(proc)
                raise
        finally:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        code = proc.returncode
        if code == 0 and result_path.exists():
            try:
                result: dict[str, Any] = read_json(result_path)
                return result
            except (OSError, ValueError) as exc:
                reason = f"the cell's process wrote an unreadable result: {_one_line(exc)}"
        else:
            reason = exit_reason(code, _last_line(log_path))
    return _failed_result(cell, reuse_profile, reason, time.time() - started)


def _follow(proc: subprocess.Popen[bytes], read_fd: int, progress: CellProgress) -> None:
    """Relay the child's progress lines until it exits."""
    import select

    buffer = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.5)
        if ready:
            chunk = os.read(read_fd, 65536)
            if chunk:
                buffer = _relay(buffer + chunk, progress)
                continue
            proc.wait()  # end of the pipe: the child (and whatever inherited the pipe) is gone
            return
        if proc.poll() is not None:
            return  # exited; a process it left behind may still hold the pipe open


def make_record(
    cell: Cell,
    experiment: Experiment,
    finetune: bool,
    result: dict[str, Any],
    shard: tuple[int, int],
    isolation: str = "inline",
) -> dict[str, Any]:
    """The ``conformer-bench.cell`` record of a finished cell (``isolation``: ``process`` or ``inline``)."""
    return {
        "schema": CELL_SCHEMA,
        "schema_version": CELL_SCHEMA_VERSION,
        "experiment": experiment.name,
        "experiment_hash": experiment.digest(),
        "label": cell.label,
        "index": cell.index,
        "variant": {"name": cell.config.name, "label": cell.label, "config": cell.config.to_dict()},
        "config": cell.config.to_dict(),
        "changes": cell.changes,
        "config_hash": cell.config_hash(finetune),
        "profile_hash": cell.profile_hash(),
        "finetune_hash": cell.finetune_hash() if finetune else None,
        "status": result["status"],
        "reason": result["reason"],
        "profile": result["profile"],
        "finetune": result["finetune"],
        "seeds": list(cell.seeds) if finetune else [],
        "environment": result["environment"],
        "wall_s": result["wall_s"],
        "finished": time.time(),
        "shard": {"rank": shard[0], "world_size": shard[1]},
        "isolation": isolation,
    }


# --- reading records ------------------------------------------------------------------------------------


def load_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every cell record in ``out_dir``, the newest per label (read through the folder's store)."""
    return ResultStore(out_dir).latest()


# --- sharding ------------------------------------------------------------------------------------------


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"0/2"`` -> ``(0, 2)``; shards are numbered from 0, as torchrun's RANK."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise BenchError(
            f"--shard {text!r} is not valid; use I/N with 0 <= I < N, e.g. --shard 0/2 and --shard 1/2"
        )
    return int(m.group(1)), int(m.group(2))


def torchrun_rank() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when started by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise BenchError(
            "RANK/WORLD_SIZE are not integers; start the command with torchrun or unset them"
        ) from None
    return (rank, world) if world > 1 else None


@dataclass
class Distributed:
    """Who this process is: a shard of ``world`` (``torchrun`` uses a gloo process group for the barrier)."""

    rank: int = 0
    world: int = 1
    torchrun: bool = False
    _owns_group: bool = field(default=False, repr=False)

    def start(self) -> None:
        if not self.torchrun:
            return
        import datetime

        import torch
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if not dist.is_initialized():
            # Long cells run between barriers: allow a day before gloo gives up.
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))
            self._owns_group = True

    def barrier(self) -> None:
        if self.torchrun:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False


def shard_of(cells: list[Cell], rank: int, world: int) -> list[Cell]:
    """Round-robin share of the selected cells."""
    return [c for k, c in enumerate(cells) if k % world == rank]


def _done_file(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / f"shard-{rank}-of-{world}.done"


# --- the grid -------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    gathered: bool = False  # this process compacted cells.jsonl (and should write the tables)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Cells another process runs now (label -> who) or finished while this one ran (label -> status).
    elsewhere_running: dict[str, str] = field(default_factory=dict)
    elsewhere_done: dict[str, str] = field(default_factory=dict)


class GridProgress(Protocol):
    def start_cell(self, cell: Cell, position: int, total: int) -> CellProgress: ...

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None: ...


class _QuietGrid:
    def start_cell(self, cell: Cell, position: int, total: int) -> CellProgress:
        return _NoProgress()

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None:
        pass


def run_grid(
    experiment: Experiment,
    cells: list[Cell],
    out_dir: Path,
    *,
    finetune: bool,
    resume: bool,
    dist: Distributed | None = None,
    progress: GridProgress | None = None,
    cell_fn: CellFn | None = None,
    isolate: bool | None = None,
    force: bool = False,
) -> RunResult:
    """Run this process's share of ``cells``; store each finished cell at once; gather when every shard is done.

    ``isolate``: each cell runs in a fresh process (:func:`run_cell_in_process`); ``False``: in this one,
    through ``cell_fn`` (default :func:`run_cell`), which only the inline mode accepts; ``None``: in a fresh
    process, except costs-only cells (nothing built, timed or trained), which run in this one. A folder holding
    another experiment's results is refused unless ``force``. A cell that another process on the same
    folder runs, or finished since this run began, is left to it (see :meth:`ResultStore.claim`).
    """
    if isolate is not False and cell_fn is not None:
        raise ValueError("cell_fn runs cells in this process; pass isolate=False with it")
    dist = dist or Distributed()
    cell_fn = cell_fn or run_cell  # looked up at call time, so it can be wrapped
    progress = progress or _QuietGrid()
    store = ResultStore(out_dir)
    me = Holder.me()
    store.bind_experiment(experiment.summary_dict(), force)  # same content from every shard
    store.clean_temp()
    remove_orphan_cell_folders()
    existing = store.latest()
    if dist.world > 1:
        _done_file(out_dir, dist.rank, dist.world).unlink(missing_ok=True)

    result = RunResult()
    share = shard_of(cells, dist.rank, dist.world)
    for position, cell in enumerate(share, start=1):
        digest = cell.config_hash(finetune)
        old = existing.get(cell.label)
        # Only a finished cell is kept; failed, oom and nan cells run again.
        if resume and old is not None and old.get("config_hash") == digest and old.get("status") == "ok":
            result.skipped.append(cell.label)
            result.statuses[cell.label] = "ok"
            progress.end_cell(cell, "ok", skipped=True)
            continue
        claim = store.claim(cell.label, digest, me)
        if not claim.granted:
            if claim.record is not None:
                result.elsewhere_done[cell.label] = str(claim.record.get("status"))
                result.statuses[cell.label] = str(claim.record.get("status"))
            else:
                assert claim.holder is not None
                result.elsewhere_running[cell.label] = claim.holder.describe()
            progress.end_cell(cell, "elsewhere", skipped=True)
            continue
        try:
            reuse = None
            if (
                resume
                and old is not None
                and old.get("profile_hash") == cell.profile_hash()
                and (old.get("profile") or {}).get("status", "ok") == "ok"
                and old.get("profile") is not None
            ):
                reuse = old["profile"]  # only the fine-tuning part changed
            reporter = progress.start_cell(cell, position, len(share))
            # A costs-only cell builds no model and runs no image: a process of its own would only cost time.
            own_process = isolate if isolate is not None else not cell.costs_only(finetune)
            if own_process:
                outcome = run_cell_in_process(cell, finetune, reuse, reporter, cuda_device=_cuda_device(dist))
            else:
                with _single_process_env(dist.torchrun), _restore_threads():
                    outcome = cell_fn(cell, finetune, reuse, reporter)
            record = make_record(
                cell,
                experiment,
                finetune,
                outcome,
                (dist.rank, dist.world),
                "process" if own_process else "inline",
            )
            store.append(record)
        finally:
            store.release([cell.label], me)
        result.ran.append(cell.label)
        result.statuses[cell.label] = record["status"]
        progress.end_cell(cell, record["status"], skipped=False)

    order = experiment.labels()
    if dist.world == 1:
        result.records = store.compact(order)
        result.gathered = True
        return result
    with store.locked():
        atomic_write_text(
            _done_file(out_dir, dist.rank, dist.world),
            json.dumps({"labels": [c.label for c in share]}) + "\n",
        )
    if dist.torchrun:
        dist.barrier()
        if dist.rank == 0:
            result.records = _gather(store, order, dist.world)
            result.gathered = True
        dist.barrier()  # no rank starts another run before the tables' records are on disk
        return result
    # Independent --shard processes: whichever finishes last gathers (under the lock, so exactly one does).
    with store.locked():
        if all(_done_file(out_dir, r, dist.world).exists() for r in range(dist.world)):
            result.records = _gather(store, order, dist.world)
            result.gathered = True
    return result


def _gather(store: ResultStore, order: list[str], world: int) -> dict[str, dict[str, Any]]:
    """Compact the folder's records and remove the shards' completion markers."""
    with store.locked():
        records = store.compact(order)
        for rank in range(world):
            _done_file(store.folder, rank, world).unlink(missing_ok=True)
        return records


def remove_orphan_cell_folders() -> list[Path]:
    """Remove cell temp folders (``conformer-bench-cell-<pid>-*``) whose parent process no longer runs."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = folder.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Holder(int(pid), Holder.me().host, 0.0).alive():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _cuda_device(dist: Distributed) -> int | None:
    """The GPU a torchrun rank's cells use (as :meth:`Distributed.start` chose); None outside torchrun."""
    if not dist.torchrun:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()


@contextlib.contextmanager
def _restore_threads() -> Iterator[None]:
    """A cell's ``threads`` setting holds for its profile and fine-tuning, not for the cells after it."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _single_process_env(active: bool) -> Iterator[None]:
    """Hide torchrun's variables while a cell runs: each rank runs whole cells of its own, so fine-tuning
    (which would otherwise join the ranks into one data-parallel run) must see a single process."""
    if not active:
        yield
        return
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) so pending atomic writes clean up their temporary files."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
