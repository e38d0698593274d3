"""The history store: every run added with its revision, machine and results, in one SQLite file.

One file, read and written through the standard library's ``sqlite3``. The schema carries its version in
``PRAGMA user_version`` and is migrated in place, step by step, by :data:`MIGRATIONS` (never rebuilt: a file
written by an older version keeps every row). Writers take the database's write lock for one transaction
per run (``BEGIN IMMEDIATE``), in WAL mode and with a busy timeout, so several processes adding runs at
once each wait their turn and none loses a row.

What it holds:

- ``machines``: one row per machine fingerprint (CPU or GPU model, kernel set, cores, torch, Python):
  a series never crosses machines, so a change of machine is never read as a step of the code;
- ``revisions``: commits, with their subject, commit time and position (how many commits their history
  holds, so that revisions sort in history order even where commit times tie);
- ``runs``: one per record added, identified by ``key`` (a hash of what it is); adding a run whose key
  is there already adds only the parts it lacks, so the same run added twice is a no-op and a backfill
  interrupted part-way keeps the cells it finished;
- ``parts``: the record itself (zlib-compressed JSON), in named parts (``""`` for a whole record; a header
  and one part per timed cell for paired runs);
- ``results``: the numbers, one row per (part, cell, context, metric), each with its unit, direction, kind,
  count of samples and interval where it has one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BenchError
from ..files import check_input_file

if TYPE_CHECKING:
    from ..records import Environment

HISTORY_ENV = "CONFORMER_BENCH_HISTORY"
DEFAULT_PATH = Path("results") / "history.db"
BUSY_TIMEOUT_S = 120.0


def default_path() -> Path:
    """``$CONFORMER_BENCH_HISTORY``, else ``results/history.db``."""
    return Path(os.environ.get(HISTORY_ENV) or DEFAULT_PATH)


def digest(obj: Any, length: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class Machine:
    """A machine as its timings see it: hardware, kernel set, cores, and the software that runs the model.

    The host name is left out (CI runners are new hosts of one machine class). The fields, in order, are
    :data:`MACHINE_KEYS`; the fingerprint digests them as one JSON object, as history databases store it.
    """

    device: str | None = None
    device_name: str | None = None
    cpu_model: str | None = None
    cpu_capability: str | None = None
    cpu_count: int | None = None
    torch: str | None = None
    cuda: str | None = None
    python: str | None = None

    @classmethod
    def of(cls, env: Environment) -> Machine:
        return cls(
            env.device, env.device_name, env.cpu_model, env.cpu_capability, env.cpu_count, env.torch,
            env.cuda, env.python,
        )  # fmt: skip

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any]) -> Machine:
        """A machine as a database row keeps it (its :attr:`identity` as JSON)."""
        return cls(**{key: identity.get(key) for key in MACHINE_KEYS})

    @property
    def identity(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def fingerprint(self) -> str:
        return digest(self.identity, 12)

    @property
    def label(self) -> str:
        what = self.device_name if self.device == "cuda" else self.cpu_model
        parts = [str(what or self.device or "unknown device")]
        if self.cpu_count:
            parts.append(f"{self.cpu_count} CPUs")
        if self.cpu_capability:
            parts.append(str(self.cpu_capability))
        if self.torch:
            parts.append(f"torch {self.torch}")
        return ", ".join(parts)


# What makes two machines different for timings: the environment keys a machine's fingerprint digests.
MACHINE_KEYS = tuple(f.name for f in dataclasses.fields(Machine))


@dataclass(frozen=True)
class RevisionInfo:
    """A commit as the history orders it."""

    sha: str
    subject: str
    commit_time: str | None
    position: int  # commits in its history, itself included

    @property
    def short(self) -> str:
        return self.sha[:12]


@dataclass(frozen=True)
class Result:
    """One number of a run: a metric of a cell, with what it counts."""

    cell: str  # the cell's label ("" where the record measured one variant without a label)
    metric: str
    value: float
    unit: str
    direction: str  # higher | lower | equal
    kind: str  # exact | noisy | accuracy | paired
    low: float | None = None  # the value's interval, where the run gives one
    high: float | None = None
    n: int = 1  # samples behind the value
    context: str = ""  # what was measured: a hash of the config and the settings that change the number


@dataclass
class RunEntry:
    """A run to add: what it is, where and at which revision it ran, its record parts and its results."""

    kind: str  # profile | speed | finetune | ablate | report | ab | backfill
    key: str  # identifies the run: adding a key again adds only the parts it lacks
    revision: RevisionInfo
    machine: Machine
    experiment: str  # the experiment's name, or the variant's label for a single record
    source: str  # where it was read from (a file, or the command that measured it)
    parts: dict[str, Any] = field(default_factory=dict)  # part name -> the record's JSON object
    results: dict[str, list[Result]] = field(default_factory=dict)  # part name -> its results
    anchor: RevisionInfo | None = None  # paired runs: the revision it was timed against


@dataclass(frozen=True)
class Added:
    """What :meth:`HistoryStore.add` did: the run's id, whether the run is new, and the parts it added."""

    run_id: int
    new_run: bool
    parts: tuple[str, ...]

    @property
    def nothing(self) -> bool:
        return not self.new_run and not self.parts


# --- schema and migrations ------------------------------------------------------------------------------

_V1 = """
CREATE TABLE machines (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    identity TEXT NOT NULL,
    label TEXT NOT NULL
);
CREATE TABLE revisions (
    sha TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    commit_time TEXT,
    position INTEGER NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    revision TEXT NOT NULL REFERENCES revisions(sha),
    machine INTEGER NOT NULL REFERENCES machines(id),
    experiment TEXT NOT NULL,
    source TEXT NOT NULL,
    added TEXT NOT NULL
);
CREATE TABLE parts (
    run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    record BLOB NOT NULL,
    added TEXT NOT NULL,
    PRIMARY KEY (run, name)
);
CREATE TABLE results (
    run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    part TEXT NOT NULL,
    cell TEXT NOT NULL,
    context TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    low REAL,
    high REAL,
    n INTEGER NOT NULL,
    unit TEXT NOT NULL,
    direction TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (run, part, cell, context, metric)
);
CREATE INDEX results_by_metric ON results (metric, cell);
CREATE INDEX runs_by_machine ON runs (machine, experiment);
"""

# Version 2: a paired run (an A/B, a backfill) names the revision it was timed against.
_V2 = """
ALTER TABLE runs ADD COLUMN anchor TEXT REFERENCES revisions(sha);
CREATE INDEX runs_by_anchor ON runs (anchor)
"""

# Step i brings a database from version i to version i + 1. Append only: a released step never changes.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _pack(record: Any) -> bytes:
    return zlib.compress(json.dumps(record, sort_keys=True, default=str).encode("utf-8"))


def _unpack(blob: bytes) -> Any:
    return json.loads(zlib.decompress(blob).decode("utf-8"))


class HistoryStore:
    """The history database at ``path``: opened (created and migrated) on first use."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create:
            check_input_file(
                self.path,
                "history database",
                "add runs first (`conformer-bench history add` or `history backfill`) or pass --db PATH",
            )
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # --- connection -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = NORMAL" if mode == "wal" else "PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise BenchError(
                f"cannot open the history database {str(self.path)!r} ({exc}); pass --db with a SQLite file "
                "written by conformer-bench, or a new path"
            ) from None
        except OSError as exc:
            raise BenchError(
                f"cannot create the history database {str(self.path)!r} ({exc.strerror}); choose a writable "
                "--db path"
            ) from None
        return conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its start (waits up to the busy timeout)."""
        try:
            self._conn.execute(f"BEGIN {mode}")
        except sqlite3.OperationalError as exc:
            raise BenchError(
                f"the history database {str(self.path)!r} stayed locked ({exc}); another process holds it "
                "too long, try again"
            ) from None
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        """Bring the file to :data:`SCHEMA_VERSION`, one step per transaction; refuse a newer file."""
        with self._transaction("EXCLUSIVE") as conn:
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise BenchError(
                    f"the history database {str(self.path)!r} has schema version {version}, newer than this "
                    f"conformer-bench reads ({SCHEMA_VERSION}); upgrade conformer-bench"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")

    def _version(self, conn: sqlite3.Connection) -> int:
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise BenchError(
                f"{str(self.path)!r} is not a history database ({exc}); pass --db with a file written by "
                "conformer-bench, or a new path"
            ) from None

    @property
    def version(self) -> int:
        return self._version(self._conn)

    # --- writing ----------------------------------------------------------------------------------------

    def add(self, entry: RunEntry) -> Added:
        """Add the run, or the parts of it that are not there yet, in one transaction."""
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM runs WHERE key = ?", (entry.key,)).fetchone()
            new_run = row is None
            run_id = self._insert_run(conn, entry) if row is None else int(row[0])
            present = {r[0] for r in conn.execute("SELECT name FROM parts WHERE run = ?", (run_id,))}
            added = [name for name in entry.parts if name not in present]
            now = _now()
            for name in added:
                conn.execute(
                    "INSERT INTO parts (run, name, record, added) VALUES (?, ?, ?, ?)",
                    (run_id, name, _pack(entry.parts[name]), now),
                )
                for r in entry.results.get(name, []):
                    conn.execute(
                        "INSERT OR REPLACE INTO results (run, part, cell, context, metric, value, low, high, n, "
                        "unit, direction, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, name, r.cell, r.context, r.metric, r.value, r.low, r.high, r.n, r.unit,
                         r.direction, r.kind),
                    )  # fmt: skip
        return Added(run_id, new_run, tuple(added))

    def _insert_run(self, conn: sqlite3.Connection, entry: RunEntry) -> int:
        machine_id = self._machine_id(conn, entry.machine)
        self._put_revision(conn, entry.revision)
        if entry.anchor is not None:
            self._put_revision(conn, entry.anchor)
        cursor = conn.execute(
            "INSERT INTO runs (key, kind, revision, machine, experiment, source, added, anchor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.key, entry.kind, entry.revision.sha, machine_id, entry.experiment, entry.source, _now(),
             entry.anchor.sha if entry.anchor else None),
        )  # fmt: skip
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    @staticmethod
    def _machine_id(conn: sqlite3.Connection, machine: Machine) -> int:
        conn.execute(
            "INSERT OR IGNORE INTO machines (fingerprint, identity, label) VALUES (?, ?, ?)",
            (machine.fingerprint, json.dumps(machine.identity, sort_keys=True), machine.label),
        )
        return int(
            conn.execute("SELECT id FROM machines WHERE fingerprint = ?", (machine.fingerprint,)).fetchone()[
                0
            ]
        )

    @staticmethod
    def _put_revision(conn: sqlite3.Connection, revision: RevisionInfo) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO revisions (sha, subject, commit_time, position) VALUES (?, ?, ?, ?)",
            (revision.sha, revision.subject, revision.commit_time, revision.position),
        )

    # --- reading ----------------------------------------------------------------------------------------

    def parts_of(self, key: str) -> set[str]:
        """The parts stored for the run ``key`` (empty when there is no such run)."""
        rows = self._conn.execute(
            "SELECT parts.name FROM parts JOIN runs ON runs.id = parts.run WHERE runs.key = ?", (key,)
        )
        return {r[0] for r in rows}

    def record(self, key: str, part: str = "") -> Any:
        """A stored record part, as the JSON object it was added as (None when absent)."""
        row = self._conn.execute(
            "SELECT parts.record FROM parts JOIN runs ON runs.id = parts.run WHERE runs.key = ? AND parts.name = ?",
            (key, part),
        ).fetchone()
        return None if row is None else _unpack(row[0])

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {
            table: int(self._conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("machines", "revisions", "runs", "parts", "results")
        }

    def machines(self) -> dict[int, Machine]:
        return {
            int(i): Machine.from_identity(json.loads(identity))
            for i, identity in self._conn.execute("SELECT id, identity FROM machines")
        }

    def revisions(self) -> dict[str, RevisionInfo]:
        return {
            sha: RevisionInfo(sha, subject, commit_time, int(position))
            for sha, subject, commit_time, position in self._conn.execute(
                "SELECT sha, subject, commit_time, position FROM revisions"
            )
        }

    def result_rows(self) -> list[StoredResult]:
        """Every result with its run's revision, machine, experiment and kind, in history order."""
        rows = self._conn.execute(
            "SELECT runs.machine, runs.experiment, runs.kind, runs.revision, revisions.position, runs.anchor, "
            "results.cell, "
            "results.context, results.metric, results.value, results.low, results.high, results.n, "
            "results.unit, results.direction, results.kind FROM results "
            "JOIN runs ON runs.id = results.run JOIN revisions ON revisions.sha = runs.revision "
            "ORDER BY revisions.position, runs.id"
        )
        return [
            StoredResult(
                int(m), exp, run_kind, rev, int(pos), anchor,
                Result(cell, metric, float(v), unit, direction, kind, low, high, int(n), context),
            )
            for m, exp, run_kind, rev, pos, anchor, cell, context, metric, v, low, high, n, unit, direction, kind
            in rows
        ]  # fmt: skip


@dataclass(frozen=True)
class StoredResult:
    """A result as read back, with where and when it was measured."""

    machine: int
    experiment: str
    run_kind: str
    revision: str
    position: int
    anchor: str | None  # paired runs: the revision the value is relative to
    result: Result


def _statements(script: str) -> list[str]:
    """The statements of a migration script (split on ``;``: the scripts hold no string literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
