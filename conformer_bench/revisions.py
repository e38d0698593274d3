"""Revisions of the project: a git revision (or the working tree) -> its source tree, checked and cached.

One place turns a revision name into code that can run: ``resolve_revision`` names it (sha, subject,
commit time), ``source_tree`` extracts that revision's files once into a cache folder (``git archive``,
never a checkout of the user's repository), and ``check_environment`` says whether the running Python
environment satisfies what the revision's ``pyproject.toml`` declares. The same-machine A/B measures two
revisions this way; any feature that runs older code (a backfill over history) reuses it.

Both revisions run in this one environment: when it does not satisfy a revision's declared dependencies
(a package missing, or a version outside the revision's range), the run stops with one line naming the
requirement rather than measuring against libraries that revision never declared.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import BenchError
from .records import RevisionRef

WORKTREE = "WORKTREE"  # the revision name of the working tree as it is, uncommitted changes included
REVISIONS_ENV = "CONFORMER_BENCH_REVISIONS"  # where extracted revisions are kept (default: the user cache)
PACKAGES = ("conformer", "conformer_bench")  # what a revision's tree must hold to be measured
EXTRACTED = (*PACKAGES, "pyproject.toml")  # what is extracted of a commit (the rest is read with git show)
KEEP_REVISIONS = 32  # extracted revisions kept in the cache; the least recently used go first
_GIT_TIMEOUT_S = 60


@dataclass(frozen=True)
class Revision:
    """A named state of the project: a commit, or the working tree (``sha`` None)."""

    name: str  # as the user spelt it (``main``, ``HEAD~3``, ``WORKTREE``)
    sha: str | None  # full commit id; None for the working tree
    subject: str  # the commit's first line, or "working tree"
    commit_time: str | None  # ISO 8601 committer date; None for the working tree
    repo: Path  # the repository's top folder

    @property
    def short(self) -> str:
        return self.sha[:12] if self.sha else WORKTREE

    @property
    def is_worktree(self) -> bool:
        return self.sha is None

    def describe(self) -> str:
        return f"{self.name} ({self.short}: {self.subject})" if self.name != self.short else self.short

    def ref(self) -> RevisionRef:
        """What a record keeps of the revision."""
        return RevisionRef(self.name, self.sha, self.subject, self.commit_time)


def _git(
    repo: Path, *args: str, check: bool = True, binary: bool = False
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=not binary,
            timeout=_GIT_TIMEOUT_S,
            check=check,
        )
    except FileNotFoundError:
        raise BenchError("git is not installed; install git to measure revisions") from None
    except subprocess.CalledProcessError as exc:
        message = (exc.stderr if isinstance(exc.stderr, str) else "").strip().splitlines()
        raise BenchError(f"git {' '.join(args)} failed: {message[-1] if message else exc}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"git {' '.join(args)} took over {_GIT_TIMEOUT_S} s; check the repository") from None


def repository_root(path: str | os.PathLike[str] = ".") -> Path:
    """The top folder of the git repository holding ``path``."""
    folder = Path(path)
    if not folder.is_dir():
        raise BenchError(f"--repo {str(folder)!r} is not a folder; pass the project's git checkout")
    done = _git(folder, "rev-parse", "--show-toplevel", check=False)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        why = f" (git: {said[0]})" if said and "not a git repository" not in said[0] else ""
        raise BenchError(
            f"{str(folder.resolve())!r} is not a git checkout git can read{why}; run from the project's clone "
            "or pass --repo PATH"
        )
    return Path(done.stdout.strip())


def _is_shallow(repo: Path) -> bool:
    done = _git(repo, "rev-parse", "--is-shallow-repository", check=False)
    return done.stdout.strip() == "true"


def resolve_revision(repo: Path, name: str) -> Revision:
    """The revision ``name`` names in ``repo`` (``WORKTREE`` for the working tree as it is)."""
    if not name or name.startswith("-"):
        raise BenchError(f"revision {name!r} is not valid; give a commit, branch or tag, or {WORKTREE}")
    if name == WORKTREE:
        return Revision(WORKTREE, None, "working tree", None, repo)
    done = _git(
        repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}", check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        hint = (
            "this clone is shallow: fetch the history first (git fetch --unshallow)"
            if _is_shallow(repo)
            else f"check the name (git log --oneline), or use {WORKTREE} for uncommitted changes"
        )
        raise BenchError(f"revision {name!r} is not in the repository {str(repo)!r}; {hint}")
    sha = done.stdout.strip()
    shown = _git(repo, "show", "-s", "--format=%s%n%cI", sha).stdout.splitlines()
    subject = shown[0] if shown else ""
    commit_time = shown[1] if len(shown) > 1 else None
    return Revision(name, sha, subject, commit_time, repo)


def cache_root() -> Path:
    """The folder holding extracted revisions (``$CONFORMER_BENCH_REVISIONS``, else the user cache)."""
    setting = os.environ.get(REVISIONS_ENV)
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conformer-bench" / "revisions"


def source_tree(revision: Revision, cache: Path | None = None) -> Path:
    """A folder holding the revision's files: the working tree itself, or the commit's files extracted
    once into ``cache`` (kept and reused; extraction is atomic, so a killed run leaves no half tree)."""
    if revision.sha is None:
        tree = revision.repo
    else:
        folder = (cache or cache_root()) / revision.sha
        marker = folder / ".complete"
        if marker.is_file():
            with contextlib.suppress(OSError):  # a read-only cache still serves
                marker.touch()  # recently used: kept when the cache is pruned
        else:
            _extract(revision, folder)
            prune_cache(folder.parent, keep=KEEP_REVISIONS)
        tree = folder
    missing = [p for p in PACKAGES if not (tree / p / "__init__.py").is_file()]
    if missing:
        raise BenchError(
            f"revision {revision.describe()} has no {' or '.join(missing)} package; choose a revision of "
            "this project"
        )
    return tree


def _extract(revision: Revision, folder: Path) -> None:
    assert revision.sha is not None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{revision.sha[:12]}.", dir=folder.parent))
    except OSError as exc:
        raise BenchError(
            f"cannot create the revision cache {str(folder.parent)!r} ({exc.strerror}); set "
            f"{REVISIONS_ENV} to a writable folder"
        ) from None
    try:
        present = set(_git(revision.repo, "ls-tree", "--name-only", revision.sha).stdout.split())
        paths = [p for p in EXTRACTED if p in present]
        archive: bytes = _git(
            revision.repo, "archive", "--format=tar", revision.sha, "--", *paths, binary=True
        ).stdout  # type: ignore[assignment]
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            _extract_all(tar, staging)
        (staging / ".complete").write_text(revision.sha + "\n", encoding="utf-8")
        if (folder / ".complete").is_file():
            return  # another run extracted it meanwhile: use theirs, never remove a complete tree
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)  # an incomplete earlier extraction
        os.replace(staging, folder)
    except OSError as exc:
        raise BenchError(f"cannot extract {revision.describe()} into {str(folder)!r}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_all(tar: tarfile.TarFile, target: Path) -> None:
    """Extract with the "data" filter (no links out of the folder, no devices) where Python has it."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    for member in tar.getmembers():  # Python 3.11.0-3.11.3: refuse what the filter would
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise OSError(f"unexpected archive member {member.name!r}")
    tar.extractall(target)


STALE_STAGING_S = 3600.0  # a staging folder this old belongs to a run that was killed


def prune_cache(folder: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently used extracted revisions of ``folder``, and staging
    folders left by killed runs; returns what was removed."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    trees = [p for p in entries if (p / ".complete").is_file()]
    trees.sort(key=lambda p: (p / ".complete").stat().st_mtime, reverse=True)
    now = time.time()
    stale = [
        p
        for p in entries
        if p.name.startswith(".") and p.is_dir() and now - p.stat().st_mtime > STALE_STAGING_S
    ]
    removed = trees[keep:] + stale
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


def read_text_at(revision: Revision, path: str | os.PathLike[str]) -> str | None:
    """The text of ``path`` (relative to the repository's top) at ``revision``; None when it has none."""
    rel = Path(path)
    if rel.is_absolute():
        try:
            rel = rel.resolve().relative_to(revision.repo.resolve())
        except ValueError:
            raise BenchError(f"{str(path)!r} is outside the repository {str(revision.repo)!r}") from None
    if revision.sha is None:
        target = revision.repo / rel
        if not target.is_file():
            return None
        data = target.read_bytes()
    else:
        done = _git(revision.repo, "show", f"{revision.sha}:{rel.as_posix()}", check=False, binary=True)
        if done.returncode != 0:
            return None
        data = done.stdout  # type: ignore[assignment]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BenchError(f"{rel.as_posix()} at {revision.short} is not a text (UTF-8) file") from None


# --- does this environment run the revision? ------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What a revision's pyproject.toml declares it needs."""

    python: str | None  # requires-python
    dependencies: tuple[str, ...]


def requirements(revision: Revision, tree: Path) -> Requirements:
    try:
        data = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise BenchError(
            f"revision {revision.describe()} has no readable pyproject.toml; choose a revision of this project"
        ) from None
    project = data.get("project", {})
    deps = project.get("dependencies", [])
    python = project.get("requires-python")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BenchError(f"revision {revision.describe()}: [project] dependencies is not a list of strings")
    return Requirements(python if isinstance(python, str) else None, tuple(deps))


def unmet_requirements(needs: Requirements) -> list[str]:
    """The declared requirements this Python environment does not satisfy, each as one short phrase."""
    # Here, not at the top: importlib.metadata and packaging take milliseconds, and the CLI imports this module.
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    unmet: list[str] = []
    here = Version(".".join(str(v) for v in sys.version_info[:3]))
    if needs.python and here not in SpecifierSet(needs.python):
        unmet.append(f"Python {needs.python} (this is {here})")
    for text in needs.dependencies:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            unmet.append(f"{text!r} (not a valid requirement)")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            unmet.append(f"{req.name} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(_local_free(installed), prereleases=True):
            unmet.append(f"{req.name}{req.specifier} (installed {installed})")
    return unmet


def _local_free(installed: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: a local build tag does not change which release it is."""
    return re.sub(r"\+.*$", "", installed)


def check_environment(revision: Revision, tree: Path) -> None:
    """Stop with one line when this environment does not satisfy the revision's declared dependencies."""
    unmet = unmet_requirements(requirements(revision, tree))
    if unmet:
        raise BenchError(
            f"revision {revision.describe()} declares dependencies this environment does not satisfy: "
            f"{'; '.join(unmet)}; both revisions run in this environment, so install what it needs "
            "(pip install into .venv) or compare revisions whose dependencies it satisfies"
        )


# --- ranges of revisions (a backfill over history) ------------------------------------------------------


def commit_position(revision: Revision) -> int:
    """How many commits the revision's history holds (itself included): larger for any descendant, so
    revisions sort in history order even where commit times tie."""
    if revision.sha is None:
        raise BenchError(f"{WORKTREE} has no place in the history; commit it first")
    return int(_git(revision.repo, "rev-list", "--count", revision.sha).stdout.strip())


def revisions_in_range(repo: Path, spec: str, every: int = 1) -> tuple[Revision, list[Revision]]:
    """The range's base and its revisions, oldest first: ``A..B`` is what B's first-parent line holds that
    A's does not (as ``git log --first-parent A..B``); a single revision is a range of one, based on itself.

    ``every`` keeps every N-th revision counted back from the newest, so the newest is always kept."""
    if every < 1:
        raise BenchError(f"--every must be 1 or more, got {every}")
    if ".." not in spec:
        one = resolve_revision(repo, spec)
        return one, [one]
    if "..." in spec:
        raise BenchError(f"range {spec!r}: use A..B (two dots), the commits of B's line since A")
    start, end = spec.split("..", 1)
    if not start or not end:
        raise BenchError(f"range {spec!r} needs both ends: A..B, e.g. v0.1.0..main")
    base, tip = resolve_revision(repo, start), resolve_revision(repo, end)
    assert base.sha is not None and tip.sha is not None
    listed = _git(repo, "rev-list", "--first-parent", "--reverse", f"{base.sha}..{tip.sha}").stdout.split()
    if not listed:
        raise BenchError(f"range {spec!r} holds no commit: is {start} an ancestor of {end}?")
    kept = listed[::-1][::every][::-1]
    return base, [resolve_revision(repo, sha) for sha in kept]
