"""The results store of a run folder: every reader and writer of cell records goes through it.

Files in a run folder:

- ``cells.jsonl``: one ``conformer-bench.cell`` record per line. Writers append one line per finished
  cell under the folder's lock; the newest record of a label wins (by ``finished``, then by line order).
  At the end of a run the file is compacted under the lock (re-read, one line per label, rewritten
  atomically), so a finished run holds each label once.
- ``experiment.json``: the experiment that owns the folder (name, hash, base label, cell order and each
  cell's hashes), so ``table`` and ``report`` can render and tell stale cells without the experiment file.
- ``.cells.lock``: the lock (an ``fcntl.flock``: the kernel releases it when its holder dies, so a killed
  run never leaves the folder locked). ``.cells.lock.holder`` names the holder.
- ``.running.json``: cells being run now, with the pid, host and start of the process running each; several
  processes on one folder (``--shard``, torchrun ranks, or two ``ablate`` commands) cooperate through it,
  so each cell runs once and no finished record is lost.
- ``shard-I-of-N.done``: shard I of N finished; the last shard to finish gathers (compacts) the records.
- ``cells.shard-I-of-N.jsonl``: written by earlier versions for each shard; still read, folded in on compaction.

A run folder is input as much as output: every record is checked where it is read (:func:`validate_record`),
and no file of the folder is opened through a symbolic link (a link planted there could otherwise turn an
append or a lock note against the file it points to): such an entry is refused with one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conformer.config import is_finite_number

from .. import readers
from ..errors import BenchError
from ..files import (
    atomic_write_text,
    dumps_json,
    loads_json,
    open_in_folder,
    read_in_folder,
    write_failure,
)
from ..records import ProfileRecord, Record, Status, Variant
from ..records.cell import CELL_SCHEMA, CellJob, CellRecord, CellShard, ExperimentRecord
from ..records.common import Environment
from ..records.finetune import FinetuneRecord
from .experiment import LABEL_LIMIT

if TYPE_CHECKING:
    from .experiment import Cell, Experiment

CELL_SCHEMA_VERSION = CellRecord.VERSION
LINE_FIX = "delete that line and rerun with --resume"
CELLS_FILE = "cells.jsonl"
EXPERIMENT_FILE = "experiment.json"
LOCK_FILE = ".cells.lock"
HOLDER_FILE = ".cells.lock.holder"
RUNNING_FILE = ".running.json"
LOCK_TIMEOUT_S = 120.0  # the lock is held for an append or a compaction: seconds at most
_SHARD_RE = re.compile(r"^cells\.shard-(\d+)-of-(\d+)\.jsonl$")
# What a run folder holds (the store's files, the tables and figures, the job ledger and logs): none may be a link.
_FOLDER_ENTRIES = frozenset(
    {CELLS_FILE, EXPERIMENT_FILE, LOCK_FILE, HOLDER_FILE, RUNNING_FILE, "summary.csv", "summary.md",
     "summary.tex", "figures", "jobs.json", "jobs"}
)  # fmt: skip
_FOLDER_ENTRY_RE = re.compile(r"^(cells\.shard-\d+-of-\d+\.jsonl|shard-\d+-of-\d+\.done)$")
# Types of a cell record's fields (each may also be null or absent); other keys are kept as they are.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "experiment": (str,), "experiment_hash": (str,), "index": (int,), "variant": (dict,), "config": (dict,),
    "changes": (dict,), "config_hash": (str,), "profile_hash": (str,), "finetune_hash": (str,),
    "status": (str,), "reason": (str,), "profile": (dict,), "finetune": (list,), "seeds": (list,),
    "environment": (dict,), "wall_s": (int, float), "finished": (int, float), "shard": (dict,),
    "isolation": (str,), "job": (dict,),
}  # fmt: skip


@dataclass(frozen=True)
class Holder:
    """A process that holds the lock or runs a cell."""

    pid: int
    host: str
    started: float

    @classmethod
    def me(cls, started: float | None = None) -> Holder:
        return cls(os.getpid(), socket.gethostname(), time.time() if started is None else started)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Holder:
        """The holder a lock note or a claim names; ``ValueError`` unless pid and start are plausible."""
        pid, started = data["pid"], data["started"]
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
            raise ValueError(f"pid {pid!r} is not a process id")
        if not is_finite_number(started):
            raise ValueError(f"started {started!r} is not a time")
        return cls(pid, str(data["host"]), float(started))

    def alive(self) -> bool:
        """False only when it surely ended: a pid of this host that no longer runs (or is a zombie)."""
        if self.host != socket.gethostname():
            return True
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state not in ("Z", "X")
        except (OSError, IndexError):
            pass
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} (started {since})"


@dataclass(frozen=True)
class CellOutcome(Record):
    """What running one cell gave (:func:`.worker.run_cell`; a worker process writes it as its result file)."""

    profile: ProfileRecord | None
    finetune: list[FinetuneRecord]
    status: Status
    reason: str | None
    environment: Environment | None
    wall_s: float | None


@dataclass(frozen=True)
class Claim:
    """The outcome of asking to run a cell: run it, or why not (another process runs or ran it)."""

    granted: bool
    holder: Holder | None = None
    record: CellRecord | None = None  # the record another process finished since this run began


def reason_line(exc: BaseException) -> str:
    """A record's ``reason`` for an exception: ``Type: message`` on one line, at most 500 characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def make_record(
    cell: Cell,
    experiment: Experiment,
    finetune: bool,
    outcome: CellOutcome,
    shard: tuple[int, int],
    isolation: str = "inline",
    job: CellJob | None = None,
) -> CellRecord:
    """The ``conformer-bench.cell`` record of a finished cell (``isolation``: ``process`` or ``inline``)."""
    return CellRecord(
        experiment=experiment.name,
        experiment_hash=experiment.digest(),
        label=cell.label,
        index=cell.index,
        variant=Variant(cell.config.name, cell.label, cell.config.to_dict()),
        changes=cell.changes,
        config_hash=cell.config_hash(finetune),
        profile_hash=cell.profile_hash(),
        finetune_hash=cell.finetune_hash() if finetune else None,
        status=outcome.status,
        reason=outcome.reason,
        profile=outcome.profile,
        finetune=list(outcome.finetune),
        seeds=list(cell.seeds) if finetune else [],
        environment=outcome.environment,
        wall_s=outcome.wall_s,
        finished=time.time(),
        shard=CellShard(shard[0], shard[1]),
        isolation=isolation,
        job=job,
    )


def reusable_profile(old: CellRecord | None, cell: Cell, resume: bool) -> ProfileRecord | None:
    """The cell's earlier profile record when only its fine-tuning settings changed since (``--resume``)."""
    if not resume or old is None or old.profile_hash != cell.profile_hash():
        return None
    profile = old.profile
    return profile if profile is not None and profile.status == Status.OK else None


def load_records(out_dir: Path) -> dict[str, CellRecord]:
    """Every cell record in ``out_dir``, the newest per label (read through the folder's store)."""
    return ResultStore(out_dir).latest()


def validate_record(record: Any, where: str) -> dict[str, Any]:
    """A cell record's JSON, or an error naming ``where`` and the fix: the schema, a valid label and the type
    of every field the store and the readers use (a string ``finished`` or a list ``changes`` never gets in)."""
    if not isinstance(record, dict) or record.get("schema") != CELL_SCHEMA:
        raise BenchError(f"{where}: not a {CELL_SCHEMA} record; remove the line or the file")
    label = record.get("label")
    if not isinstance(label, str) or not label:
        raise BenchError(f"{where}: cell has no label; remove the line and rerun with --resume")
    if len(label) > LABEL_LIMIT or not label.isprintable():
        raise BenchError(
            f"{where}: label {label[:40]!r}... is not a cell label (at most {LABEL_LIMIT} printable "
            "characters); remove the line and rerun"
        )
    version = record.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BenchError(f"{where}: {CELL_SCHEMA} record has no valid schema_version; rerun the ablation")
    if version > CELL_SCHEMA_VERSION:
        raise BenchError(
            f"{where}: {CELL_SCHEMA} schema_version {version} is newer than this tool reads "
            f"({CELL_SCHEMA_VERSION}); upgrade conformer-bench"
        )
    for key, types in _FIELD_TYPES.items():
        value = record.get(key)
        if value is None:
            continue
        number = int in types
        if not isinstance(value, types) or (number and not is_finite_number(value)):
            raise BenchError(
                f"{where}: {key} of cell {label!r} is {type(value).__name__} {str(value)[:40]!r}, not "
                f"{' or '.join(t.__name__ for t in types)}; remove the line and rerun with --resume"
            )
    return record


def parse_record(value: Any, where: str) -> CellRecord:
    """The cell record a parsed JSON line holds (checked by :func:`validate_record`, older versions migrated)."""
    data = validate_record(value, where)
    if "schema_version" not in data:  # the first records had none
        data = {**data, "schema_version": 1}
    return readers.record_of(CellRecord, data, where, "remove the line and rerun with --resume")


def newest_per_label(records: Iterable[CellRecord]) -> dict[str, CellRecord]:
    """The newest record of each label (by ``finished``; a later line wins a tie)."""
    return readers.newest_per_label(records, lambda r: r.label, lambda r: r.finished)


def stale_reason(record: CellRecord, experiment: ExperimentRecord) -> str | None:
    """Why ``record`` does not belong to the folder's current ``experiment`` (its experiment.json), if so."""
    name = experiment.name
    recorded = record.experiment
    label = record.label
    if name and recorded and recorded != name:
        return f"recorded for experiment {recorded!r}, not {name!r}"
    labels = experiment.labels
    if isinstance(labels, list) and labels and label not in labels:
        return f"cell {label!r} is no longer in experiment {name!r}"
    hashes = (experiment.cells or {}).get(label)
    if hashes is not None:
        if hashes.profile_hash and not record.profile_hash:
            return "it records no profile_hash, so what it measured cannot be told"
        if record.profile_hash and record.profile_hash != hashes.profile_hash:
            return "its config or profile settings changed since it ran"
        if record.finetune_hash and record.finetune_hash != hashes.finetune_hash:
            return "its fine-tune settings changed since it ran"
    return None


class ResultStore:
    """Cell records of one run folder, read and written under one lock."""

    def __init__(self, folder: str | os.PathLike[str], lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.folder = Path(folder)
        self.cells_path = self.folder / CELLS_FILE
        self.experiment_path = self.folder / EXPERIMENT_FILE
        self.lock_timeout_s = lock_timeout_s
        self._depth = 0
        self._lock: Any = None

    # --- the lock ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (re-entrant in one process); a holder past the timeout is an error."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._mkdir()
        self.check_links()
        path = self.folder / LOCK_FILE
        try:
            fd = open_in_folder(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise write_failure(exc, path) from None
        try:
            self._acquire(fd)
            self._depth = 1
            try:
                self._note_holder()
                yield
            finally:
                self._depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int) -> None:
        """``flock`` the lock file, polling until :attr:`lock_timeout_s`."""
        deadline = time.monotonic() + self.lock_timeout_s
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"{self.folder} is locked by {self._holder_text()} for over {self.lock_timeout_s:.0f} s; "
                    "wait for that process or stop it"
                )
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def _note_holder(self) -> None:
        """Name this process in the holder file (best effort: the lock works without it)."""
        data = (json.dumps(asdict(Holder.me())) + "\n").encode("utf-8")
        with contextlib.suppress(OSError):
            fd = open_in_folder(self.folder / HOLDER_FILE, os.O_WRONLY | os.O_CREAT)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, data)
            finally:
                os.close(fd)

    def _holder_text(self) -> str:
        try:
            data = read_in_folder(self.folder / HOLDER_FILE)
            return Holder.from_dict(loads_json(data or b"")).describe()
        except (OSError, ValueError, KeyError, TypeError, BenchError):
            return "another process"

    def check_links(self) -> None:
        """Refuse a run folder whose store files, tables, figures or job folders are symbolic links."""
        try:
            entries = list(os.scandir(self.folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise BenchError(f"cannot read {self.folder} ({exc.strerror}); check its permissions") from None
        for entry in entries:
            if (entry.name in _FOLDER_ENTRIES or _FOLDER_ENTRY_RE.match(entry.name)) and entry.is_symlink():
                raise BenchError(
                    f"{entry.path} is a symbolic link; a run folder's files are never followed (a link could "
                    "turn a write against the file it points to): remove the link"
                )

    def _mkdir(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise BenchError(f"{str(self.folder)!r} is a file, not a folder; pass another --output-dir")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(exc, self.folder) from None

    # --- reading ------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.cells_path.is_file() or bool(self.shard_files())

    def record_files(self) -> list[Path]:
        """Every file the store reads records and the experiment from."""
        return [self.cells_path, self.experiment_path, *self.shard_files()]

    def shard_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("cells.shard-*.jsonl") if _SHARD_RE.match(p.name))

    def read_all(self) -> list[CellRecord]:
        """Every record, in file order (``cells.jsonl``, then unmerged shard files of earlier versions).

        A last line without its newline is a write cut short by a kill and is left out; any other line
        that does not parse is an error naming the file and line.
        """
        self.check_links()
        records: list[CellRecord] = []
        for path in [self.cells_path, *self.shard_files()]:
            records.extend(readers.read_jsonl(path, parse_record, LINE_FIX))
        return records

    def latest(self) -> dict[str, CellRecord]:
        """The newest record of each label."""
        return newest_per_label(self.read_all())

    def latest_dicts(self) -> dict[str, dict[str, Any]]:
        """The newest record of each label as version 1 laid it out, for readers that take plain JSON."""
        return {label: record.version_1() for label, record in self.latest().items()}

    def experiment(self) -> ExperimentRecord | None:
        """The folder's experiment.json (None when absent); a damaged one is an error naming the fix."""
        self.check_links()
        fix = "delete it and rerun `conformer-bench ablate` with --resume"
        meta = readers.read_json(self.experiment_path, fix)
        if meta is None:
            return None
        if not isinstance(meta, dict):
            raise BenchError(f"{self.experiment_path} is not an experiment summary; delete it and rerun")
        try:
            return ExperimentRecord.from_dict(meta)
        except (BenchError, KeyError, TypeError, ValueError, AttributeError):
            raise BenchError(f"{self.experiment_path} is damaged; {fix}") from None

    def stale(self, records: Mapping[str, CellRecord] | None = None) -> dict[str, str]:
        """Label -> why its record does not belong to the folder's current experiment."""
        meta = self.experiment()
        if meta is None:
            return {}
        records = self.latest() if records is None else records
        reasons = {label: stale_reason(record, meta) for label, record in records.items()}
        return {label: why for label, why in reasons.items() if why}

    # --- writing ------------------------------------------------------------------------------------------

    def append(self, record: CellRecord) -> None:
        """Add one record at the end of ``cells.jsonl``, under the lock; a failed write leaves the file as it was."""
        line = dumps_json(validate_record(record.to_dict(), "new record"), indent=None).encode("utf-8")
        with self.locked():
            try:
                fd = open_in_folder(self.cells_path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            except OSError as exc:
                raise write_failure(exc, self.cells_path) from None
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    size = self._repair_tail(fd, size)
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)  # nothing half-written stays behind
                    raise write_failure(exc, self.cells_path) from None
            finally:
                os.close(fd)

    def _repair_tail(self, fd: int, size: int) -> int:
        """End the file on a line boundary: end a whole last record with its newline, drop a torn one."""
        start = max(0, size - (1 << 20))
        chunk = os.pread(fd, size - start, start)
        cut = chunk.rfind(b"\n") + 1 + start if b"\n" in chunk else 0
        tail = os.pread(fd, size - cut, cut)
        try:
            parse_record(loads_json(tail.decode("utf-8")), "tail")
            os.write(fd, b"\n")
            return size + 1
        except (UnicodeDecodeError, ValueError, BenchError):
            os.ftruncate(fd, cut)  # a write cut short by a kill: no finished record
            return cut

    def compact(self, order: list[str]) -> dict[str, CellRecord]:
        """Under the lock: rewrite ``cells.jsonl`` with the newest record per label (``order`` first), each in
        the current schema."""
        with self.locked():
            records = self.latest()
            labels = [lbl for lbl in order if lbl in records] + [lbl for lbl in records if lbl not in order]
            text = "".join(dumps_json(records[lbl].to_dict(), indent=None) for lbl in labels)
            if records or self.cells_path.exists():
                atomic_write_text(self.cells_path, text)
            for path in self.shard_files():
                path.unlink(missing_ok=True)
            return records

    # --- shards -------------------------------------------------------------------------------------------

    def _done_file(self, rank: int, world: int) -> Path:
        return self.folder / f"shard-{rank}-of-{world}.done"

    def clear_shard_done(self, rank: int, world: int) -> None:
        """Forget that shard ``rank`` of ``world`` finished (it is about to run again)."""
        self._done_file(rank, world).unlink(missing_ok=True)

    def mark_shard_done(self, rank: int, world: int, labels: list[str]) -> None:
        """Under the lock: note that shard ``rank`` of ``world`` finished ``labels``."""
        with self.locked():
            atomic_write_text(self._done_file(rank, world), json.dumps({"labels": labels}) + "\n")

    def all_shards_done(self, world: int) -> bool:
        return all(self._done_file(rank, world).exists() for rank in range(world))

    def gather(self, order: list[str], world: int) -> dict[str, CellRecord]:
        """Compact the folder's records and remove the shards' completion markers."""
        with self.locked():
            records = self.compact(order)
            for rank in range(world):
                self.clear_shard_done(rank, world)
            return records

    def bind_experiment(self, summary: ExperimentRecord, force: bool) -> None:
        """Make the folder ``summary``'s (the experiment's summary), refusing another experiment's folder.

        A folder that holds records of an experiment with another name is refused unless ``force``; its
        cells then stay on disk and are reported as stale.
        """
        with self.locked():
            name = summary.name
            meta = self.experiment()
            owner = meta.name if meta is not None else None
            others = {r.experiment for r in self.read_all()} - {None, name}
            if not force and (owner not in (None, name) or others):
                theirs = owner if owner not in (None, name) else sorted(str(o) for o in others)[0]
                raise BenchError(
                    f"{self.folder} holds results of experiment {theirs!r}, not {name!r}; pass another "
                    "--output-dir, or --force to run here (its cells are then reported as stale)"
                )
            atomic_write_text(self.experiment_path, dumps_json(summary.to_dict()))

    # --- cooperation between processes ---------------------------------------------------------------------

    def _running(self) -> dict[str, dict[str, Any]]:
        """Label -> the claim on it; a damaged file or entry counts as no claim (claims lapse anyway)."""
        try:
            data = loads_json(read_in_folder(self.folder / RUNNING_FILE) or b"{}")
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def _write_running(self, running: dict[str, dict[str, Any]]) -> None:
        path = self.folder / RUNNING_FILE
        if running:
            atomic_write_text(path, json.dumps(running, indent=1) + "\n")
        else:
            path.unlink(missing_ok=True)

    def claim(self, label: str, config_hash: str, me: Holder) -> Claim:
        """Ask to run ``label``: refused while another live process runs it, or when another process
        finished it with the same ``config_hash`` after ``me`` started."""
        with self.locked():
            running = self._running()
            entry = running.get(label)
            if entry is not None:
                try:
                    other = Holder.from_dict(entry)
                except (KeyError, TypeError, ValueError):
                    other = None
                if other is not None and other.pid != me.pid and other.alive():
                    return Claim(False, holder=other)
            done = self.latest().get(label)
            if done is not None and done.config_hash == config_hash and (done.finished or 0) >= me.started:
                return Claim(False, record=done)
            running[label] = asdict(me)
            self._write_running(running)
            return Claim(True)

    def release(self, labels: Iterable[str], me: Holder) -> None:
        """Drop this process's claims on ``labels`` (after their records are written, or on the way out)."""
        wanted = set(labels)
        if not wanted:
            return
        with self.locked():
            running = self._running()
            mine = [k for k in wanted if (running.get(k) or {}).get("pid") == me.pid]
            if mine:
                for label in mine:
                    running.pop(label, None)
                # Best effort: a claim left behind (disk full) lapses when this process ends.
                with contextlib.suppress(BenchError):
                    self._write_running(running)

    def clean_temp(self) -> None:
        """Under the lock (every writer of the folder holds it): remove temporary files killed writers left."""
        with self.locked():
            for tmp in [*self.folder.glob(".*.tmp"), *self.folder.glob("figures/.*.tmp")]:
                with contextlib.suppress(OSError):
                    tmp.unlink()
