"""Prove the same-machine A/B: inject a known change into a throwaway copy of the project, run
``conformer-bench ab`` on it several times, and count the verdicts.

    python scripts/ab_proof.py --change slow:0.10 --runs 10 --only micro,no-fcu,cnn-only,head-trans
    python scripts/ab_proof.py --change none --runs 10
    python scripts/ab_proof.py --change flops:0.05 --runs 10 --instructions --rounds 20

Changes (conformer_bench/ab/inject.py): ``slow:F`` spins each forward for F times its CPU time,
``slow:F:branches=cnn`` only in cells with that config value, ``flops:F`` adds a real matmul of F times the
model's MACs, ``none`` commits a comment. Every run's JSON verdict is kept in --out; the summary prints the
verdict counts, each cell's statuses and the median head/base throughput ratio per run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformer_bench.ab.inject import commit_change, throwaway_repo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--change", required=True, help="slow:0.10, slow:0.10:branches=cnn, flops:0.05 or none"
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--experiment", default="experiments/ci.toml")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for each run's verdict (default: a temp folder)"
    )
    parser.add_argument(
        "ab_args", nargs=argparse.REMAINDER, help="passed on to conformer-bench ab (after --)"
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ab-proof-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ab-proof-repo-") as tmp:
        repo = Path(tmp) / "repo"
        base = throwaway_repo(ROOT, repo)
        head = commit_change(repo, args.change)
        extra = [a for a in args.ab_args if a != "--"]
        verdicts: collections.Counter[str] = collections.Counter()
        cells: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for run in range(args.runs):
            started = time.time()
            verdict_path = out / f"run{run:02d}.json"
            command = [
                sys.executable, "-m", "conformer_bench", "ab", base, head, "-e", str(repo / args.experiment),
                "--repo", str(repo), "--quiet", "--json", str(verdict_path), "--seed", str(run),
                "--output", str(out / f"run{run:02d}-record.json"), *extra,
            ]  # fmt: skip
            env = {**os.environ, "CONFORMER_BENCH_REVISIONS": str(Path(tmp) / "revisions")}
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
            if done.returncode not in (0, 1) or not verdict_path.exists():
                print(f"run {run}: exit {done.returncode}\n{done.stderr[-2000:]}", file=sys.stderr)
                return 2
            verdict = json.loads(verdict_path.read_text())
            verdicts[verdict["verdict"]] += 1
            ratios = []
            for row in verdict["rows"]:
                cells[row["metric"]][row["status"]] += 1
                if (
                    row["metric"].endswith("img_per_s")
                    and row["delta_rel"] is not None
                    and "/" in row["metric"]
                ):
                    ratios.append(1 + row["delta_rel"])
            drops = sorted(verdict["detectable_drop"].values())
            print(
                f"run {run}: {verdict['verdict']} (exit {done.returncode}) in {time.time() - started:.0f} s; "
                f"throughput ratios {min(ratios):.3f}-{max(ratios):.3f}; "
                f"detectable drop median {drops[len(drops) // 2]:.1%}",
                flush=True,
            )
    print(f"\n{args.change}, {args.runs} runs: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    for metric, counts in sorted(cells.items()):
        print(f"  {metric}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"verdicts kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
