"""Prove the history's change-point detection: commit known changes into a throwaway copy of the project,
backfill the range, and check where `conformer-bench history changes` finds steps.

    python scripts/history_proof.py --changes none,none,slow:0.25,none,none,none --out runs/history-step
    python scripts/history_proof.py --changes none,none,none,none,none,none --out runs/history-flat

The throwaway repository (``OUT/repo``) holds the project's committed tree as ``base`` and one commit per
change (conformer_bench/ab/inject.py: ``slow:F`` makes every forward F times slower, ``none`` commits a
comment). The backfill times the experiment's cells at every commit against ``base`` and adds them to
``OUT/history.db``; run again with the same --out, it resumes (nothing timed twice). The summary names, per
cell, the revisions where a step of ``paired.infer.img_per_s`` was found, and the exit code is 0 only when
each injected slowdown is found at its revision for every cell and no step is found anywhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformer_bench.ab.inject import commit_change, throwaway_repo  # noqa: E402

METRIC = "paired.infer.img_per_s"


def _repo(out: Path, changes: list[str]) -> dict[str, str]:
    """The throwaway repository (made once per --out): commit -> the change it injects."""
    repo = out / "repo"
    made = out / "commits.json"
    if made.is_file():
        return dict(json.loads(made.read_text()))
    throwaway_repo(ROOT, repo)
    commits = {commit_change(repo, change, f"r{i + 1}: {change}"): change for i, change in enumerate(changes)}
    made.write_text(json.dumps(commits, indent=2))
    return commits


def _cli(*args: str, env: dict[str, str]) -> int:
    command = [sys.executable, "-m", "conformer_bench", *args]
    print("$ conformer-bench " + " ".join(args), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", required=True, help="comma list, one commit each: none, slow:0.25, ...")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the repository, database and verdict"
    )
    parser.add_argument("--experiment", default="experiments/ci.toml")
    parser.add_argument(
        "backfill_args", nargs=argparse.REMAINDER, help="passed on to history backfill (after --)"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    commits = _repo(out, [c.strip() for c in args.changes.split(",") if c.strip()])
    repo, db = out / "repo", out / "history.db"
    env = {**os.environ, "CONFORMER_BENCH_REVISIONS": str(out / "revisions")}
    extra = [a for a in args.backfill_args if a != "--"]
    span = f"HEAD~{len(commits)}..HEAD"
    experiment = str(repo / args.experiment)
    code = _cli(
        "history", "backfill", span, "-e", experiment, "--repo", str(repo), "--db", str(db), *extra, env=env
    )
    if code not in (0, 1):
        return code
    verdict = out / "changes.json"
    _cli("history", "changes", "--db", str(db), "--metric", METRIC, "--json", str(verdict), env=env)
    return _summary(json.loads(verdict.read_text()), commits)


def _summary(verdict: dict, commits: dict[str, str]) -> int:
    """Per cell: where steps were found, against where a slowdown was injected."""
    injected = {sha for sha, change in commits.items() if change.startswith("slow")}
    found: dict[str, list[str]] = {}
    for series in verdict["series"]:
        if series["metric"] != METRIC:
            continue
        found[series["cell"]] = [cp["revision"] for cp in series["change_points"]]
    right = [cell for cell, at in found.items() if set(at) == injected]
    for cell, at in sorted(found.items()):
        where = ", ".join(f"{sha[:12]} ({commits.get(sha, 'anchor')})" for sha in at) or "none"
        print(f"  {cell}: step(s) at {where}")
    expected = ", ".join(s[:12] for s in sorted(injected)) or "none"
    print(f"{len(right)} of {len(found)} cell(s) have steps exactly where expected ({expected})")
    return 0 if found and len(right) == len(found) else 1


if __name__ == "__main__":
    sys.exit(main())
