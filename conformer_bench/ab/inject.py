"""Throwaway repositories with a known change injected, to prove that the A/B finds what it claims.

:func:`throwaway_repo` copies this project's committed tree into a new git repository (commit ``base``);
:func:`commit_change` commits one of :data:`CHANGES` on top. The changes patch the model's forward:

- ``slow:F`` — every forward spins for F times its own CPU time (``slow:0.10`` = 10 % slower);
- ``slow:F:branches=cnn`` — the same, only for configs whose field has that value (one cell);
- ``flops:F`` — every forward also multiplies two matrices holding F times the model's paper MACs
  (a real op: instructions and time both grow);
- ``none`` — a comment only: a new commit with unchanged code.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

CHANGES = ("slow:F", "slow:F:FIELD=VALUE", "flops:F", "none")
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "conformer-bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "conformer-bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


def throwaway_repo(source: Path, target: Path, revision: str = "HEAD") -> str:
    """A new git repository at ``target`` holding ``source``'s files at ``revision``; returns its commit."""
    archive = subprocess.run(
        ["git", "-C", str(source), "archive", "--format=tar", revision], capture_output=True, check=True
    ).stdout
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    _git(target, "init", "-q", "-b", "main")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "base")
    return _git(target, "rev-parse", "HEAD")


def _slow_patch(fraction: float, condition: str | None) -> str:
    check = "True"
    if condition is not None:
        field, value = condition.split("=", 1)
        check = f"str(getattr(self.cfg, {field!r}, None)) == {value!r}"
    # A factory binds the wrapped forward at patch time, so patches can be stacked.
    return f"""

# Injected: every forward spins for {fraction:g} times its own CPU time.
def _injected_slowdown(inner):
    import time

    def forward(self, x):
        start = time.thread_time()
        out = inner(self, x)
        if {check}:
            until = time.thread_time() + {fraction!r} * (time.thread_time() - start)
            while time.thread_time() < until:
                pass
        return out

    return forward


Conformer.forward = _injected_slowdown(Conformer.forward)
"""


def _flops_patch(fraction: float) -> str:
    return f"""

# Injected: every forward also multiplies two matrices holding {fraction:g} times the model's paper MACs.
def _injected_matmul(inner):
    mats = {{}}

    def forward(self, x):
        out = inner(self, x)
        key = (id(self), x.shape[0], x.shape[-1])
        if key not in mats:
            from conformer_bench.costs import paper_macs

            n = max(1, round(({fraction!r} * paper_macs(self.cfg, x.shape[-1]) * x.shape[0]) ** (1 / 3)))
            mats[key] = (torch.ones(n, n), torch.ones(n, n))
        a, b = mats[key]
        torch.mm(a, b)
        return out

    return forward


Conformer.forward = _injected_matmul(Conformer.forward)
"""


def patch_text(change: str) -> str:
    """What ``change`` appends to conformer/model.py."""
    kind, *rest = change.split(":")
    if kind == "none":
        return "\n# An unrelated comment: this revision's code is the same as its parent's.\n"
    if kind == "slow" and rest:
        return _slow_patch(float(rest[0]), rest[1] if len(rest) > 1 else None)
    if kind == "flops" and rest:
        return _flops_patch(float(rest[0]))
    raise ValueError(f"unknown change {change!r}; use one of {', '.join(CHANGES)}")


def commit_change(repo: Path, change: str, message: str | None = None) -> str:
    """Append ``change``'s patch to conformer/model.py and commit it; returns the new commit."""
    model = repo / "conformer" / "model.py"
    model.write_text(model.read_text(encoding="utf-8") + patch_text(change), encoding="utf-8")
    _git(repo, "commit", "-q", "-am", message or f"inject {change}")
    return _git(repo, "rev-parse", "HEAD")


def remove(repo: Path) -> None:
    shutil.rmtree(repo, ignore_errors=True)
