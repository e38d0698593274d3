"""Start and talk to the measuring processes of an A/B: one long-lived worker per revision.

A worker (``worker.py`` beside this file, run by path with the revision's tree first on ``PYTHONPATH``)
imports torch once and then measures cell after cell on request. This module knows its command line and
its JSON-lines protocol, nothing of what it measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..ablate.launch import die_with_parent
from ..errors import BenchError

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
# Fixed so that both sides hash alike and callgrind counts repeat (PYTHONHASHSEED); no pyc writes into the
# cached trees. Variables that would put other code first on the path are dropped.
# glibc's allocator is held still: by default it hands large freed blocks back to the system and raises its
# mmap threshold as blocks come and go, so a step can pay hundreds of page faults or none depending on the
# process's history (measured: ~735 faults per micro forward, 15-25 % of its time, differing between two
# processes of the same code). With these every step of both workers reuses memory it already holds.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc's largest: blocks below 32 MiB come from the heap
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),  # keep freed heap memory instead of returning it
    "MALLOC_TOP_PAD_": str(64 << 20),
}
_FIXED_ENV = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", **ALLOCATOR_ENV}
_DROPPED_ENV = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT")


class WorkerGone(BenchError):
    """A worker exited, stopped answering or answered garbage."""

    def __init__(self, message: str, side: str) -> None:
        super().__init__(message)
        self.side = side


@dataclass(frozen=True)
class Launch:
    """How to start one revision's worker."""

    side: str  # base | head
    source: Path  # the revision's tree
    cores: tuple[int, ...] = ()  # CPU affinity; () leaves it as inherited
    log: Path | None = None  # the worker's stdout and stderr
    prefix: tuple[str, ...] = ()  # a command to run it under (valgrind ...)


@dataclass(frozen=True)
class Reply:
    """One answer of a worker, read once: ``ok``, or a refusal's ``status`` and ``reason``; a turn's times;
    ``sent`` is the answer as it came (hello's is kept in the record)."""

    ok: bool = False
    status: str = "failed"  # a refusal: unsupported (the revision cannot express the cell) | failed
    reason: str | None = None
    wall_s: tuple[float, ...] = ()
    cpu_s: tuple[float, ...] = ()
    page_faults: int = 0
    pid: int | None = None
    sent: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def read(cls, answer: dict[str, Any]) -> Reply:
        """The known keys of a JSON answer (a TypeError or ValueError when one has the wrong type)."""
        known = {f.name: f.type for f in fields(cls) if f.name != "sent"}
        given: dict[str, Any] = {}
        for name, value in answer.items():
            kind = known.get(name)
            if kind is None or value is None:
                continue
            if kind.startswith("tuple"):
                value = tuple(float(v) for v in value)
            elif kind.startswith("int"):
                value = int(value)
            elif kind == "bool":
                value = bool(value)
            given[name] = value
        return cls(**given, sent=answer)


class Worker:
    """One running worker: send a command, read its answer (with a timeout)."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(_FIXED_ENV, PYTHONPATH=str(launch.source))
        command = [
            *launch.prefix,
            sys.executable,
            "-P",  # the script's folder is not put on the path: only the revision's tree is
            str(WORKER_SCRIPT),
            "--source",
            str(launch.source),
            "--reply-fd",
            str(write_fd),
        ]
        if launch.cores:
            command += ["--cores", ",".join(str(c) for c in launch.cores)]
        try:
            log = open(launch.log, "ab") if launch.log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            raise BenchError(
                f"cannot write the worker log {launch.log}: {exc.strerror}; pass --logs DIR"
            ) from None
        try:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT if launch.log else subprocess.DEVNULL,
                pass_fds=(write_fd,),
                cwd=launch.source,
                preexec_fn=die_with_parent(os.getpid()),  # a killed run leaves no worker behind
            )
        finally:
            os.close(write_fd)
            if launch.log:
                log.close()  # type: ignore[union-attr]
        self._replies = os.fdopen(read_fd, "rb")
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._gone(f"{message.get('op')}: the worker is no longer running") from None

    def receive(self, timeout_s: float) -> Reply:
        deadline = time.monotonic() + timeout_s
        fd = self._replies.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._gone(f"no answer within {timeout_s:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(5)
                    raise self._gone("the worker exited")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._gone(f"it answered {line[:80]!r}, not a JSON object")
        try:
            return Reply.read(answer)
        except (TypeError, ValueError):
            raise self._gone(f"it answered {line[:80]!r}, not a reply of the protocol") from None

    def request(self, message: dict[str, Any], timeout_s: float) -> Reply:
        self.send(message)
        return self.receive(timeout_s)

    def _gone(self, what: str) -> WorkerGone:
        code = self.proc.poll()
        ended = f" (exit code {code})" if code is not None else ""
        log = f"; its output: {self.launch.log}" if self.launch.log else ""
        return WorkerGone(f"the {self.launch.side} worker failed: {what}{ended}{log}", self.launch.side)

    def close(self, grace_s: float = 10.0) -> None:
        with contextlib.suppress(OSError, WorkerGone):
            if self.proc.poll() is None:
                self.send({"op": "quit"})
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._replies.close()


def hello(worker: Worker, timeout_s: float = 600.0) -> Reply:
    """Start-up check: the worker imported torch and the revision's own ``conformer``."""
    answer = worker.request({"op": "hello"}, timeout_s)
    if not answer.ok:
        raise WorkerGone(
            f"the {worker.launch.side} worker could not start: {answer.reason}", worker.launch.side
        )
    return answer
