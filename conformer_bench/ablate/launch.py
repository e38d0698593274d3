"""Launch one cell's worker process and watch it: relay its progress, stop it on the way out, and turn a
process that ends without a result into a failed cell.

The worker is ``python -m conformer_bench.ablate.worker SPEC RESULT`` (see :mod:`.worker`); this module
only knows its command line, the spec (:meth:`Cell.to_spec`) and the result file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..files import read_json, write_json
from ..records import ProfileRecord, Status
from .experiment import Cell
from .progress import CellProgress, relay_lines
from .store import CellOutcome, Holder, reason_line

TEMP_PREFIX = "conformer-bench-cell-"
WORKER_MODULE = "conformer_bench.ablate.worker"
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
    return [sys.executable, "-m", WORKER_MODULE]


def child_env() -> dict[str, str]:
    """This process's environment without torchrun's variables."""
    return {
        k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("TORCHELASTIC_")
    }


def die_with_parent(parent: int) -> Callable[[], None]:
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


def _failed_result(
    cell: Cell, reuse_profile: ProfileRecord | None, reason: str, wall_s: float
) -> CellOutcome:
    return CellOutcome(reuse_profile, [], Status.FAILED, reason, cell.environment(reuse_profile), wall_s)


def run_cell_in_process(
    cell: Cell,
    finetune: bool,
    reuse_profile: ProfileRecord | None,
    progress: CellProgress,
    *,
    cuda_device: int | None = None,
) -> CellOutcome:
    """Run the cell in a fresh worker process; a process that dies without a result is a failed cell.

    Progress lines from the child move ``progress``; its stdout and stderr are captured, and their last
    line ends the reason of a failure. Any exception here (Ctrl-C, SIGTERM as SystemExit) stops the child.
    """
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        spec_path, result_path, log_path = (Path(tmp) / n for n in ("spec.json", "result.json", "output.log"))
        read_fd, write_fd = os.pipe()
        try:
            write_json(spec_path, cell.to_spec(finetune, reuse_profile, write_fd, cuda_device).to_dict())
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [*cell_command(), str(spec_path), str(result_path)],
                    env=child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,  # a terminal's Ctrl-C reaches the parent, which stops the child
                    preexec_fn=die_with_parent(os.getpid()),
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
                return CellOutcome.from_dict(read_json(result_path))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                reason = f"the cell's process wrote an unreadable result: {reason_line(exc)}"
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
                buffer = relay_lines(buffer + chunk, progress)
                continue
            proc.wait()  # end of the pipe: the child (and whatever inherited the pipe) is gone
            return
        if proc.poll() is not None:
            return  # exited; a process it left behind may still hold the pipe open


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


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) so pending atomic writes clean up their temporary files."""
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
