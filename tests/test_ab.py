"""`conformer-bench ab`: revisions, the worker protocol, the paired statistics and verdicts, and the gate
proven on a throwaway repository whose second revision slows every forward by 10 %."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conformer_bench.ab import inject
from conformer_bench.ab.compare import compare_ab
from conformer_bench.ab.render import render_json, render_markdown
from conformer_bench.ab.run import _dumped_instructions, cores_for
from conformer_bench.ab.stats import geometric_mean_estimate, paired_estimate
from conformer_bench.ab.workers import Launch, Reply, Worker, hello
from conformer_bench.cli import app
from conformer_bench.errors import BenchError
from conformer_bench.records import (
    ABExperiment,
    ABRecord,
    ABSettings,
    InstructionCounts,
    PairedCell,
    PairedRound,
    RevisionRef,
    Status,
)
from conformer_bench.report import load_thresholds
from conformer_bench.revisions import (
    WORKTREE,
    Requirements,
    read_text_at,
    resolve_revision,
    source_tree,
    unmet_requirements,
)

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

NANO_AB = """
name = "nano_ab"
[base]
label = "dual"
variant = "nano"
[profile]
device = "cpu"
img_size = 32
batch_size = 8
threads = 1
[[cells]]
label = "cnn-only"
branches = "cnn"
"""


# --------------------------------------------------------------------------- synthetic records


def _rounds(ratio: float, n: int, rng: random.Random, noise: float = 0.03) -> list[PairedRound]:
    """Rounds whose head turn takes ``ratio`` times the base turn, under a shared, drifting machine speed."""
    out = []
    for i in range(n):
        machine = 1.0 + 0.5 * math.sin(i / 7) + rng.uniform(0, 0.3)  # hits both sides of a round alike
        base = 0.05 * machine * math.exp(rng.gauss(0, noise))
        head = 0.05 * machine * ratio * math.exp(rng.gauss(0, noise))
        out.append(PairedRound("base,head", i % 4, base, head, base, head, 0, 0))
    return out


def _cell(label: str, ratio: float, seed: int, n: int = 120, **kw: Any) -> PairedCell:
    cell = PairedCell(label, "infer", Status.OK, None, None, "h" + label, 16, 32, "fp32", "plain", 1, 3, [])
    cell.rounds = _rounds(ratio, n, random.Random(seed))
    for key, value in kw.items():
        setattr(cell, key, value)
    return cell


def _record(cells: list[PairedCell]) -> ABRecord:
    return ABRecord(
        status=Status.OK,
        reason=None,
        base=RevisionRef("main", "a" * 40, "base", None),
        head=RevisionRef(WORKTREE, None, "working tree", None),
        experiment=ABExperiment("t", "t.toml", "0", len(cells)),
        environment={"device": "cpu", "cpu_model": "Test CPU", "threads": 1},
        settings=ABSettings(clock="cpu", seed=0),
        workers={},
        cells=cells,
        wall_s=1.0,
    )


def _statuses(record: ABRecord) -> dict[str, str]:
    result = compare_ab(record, load_thresholds())
    return {row.metric.split("/")[0]: row.status for row in result.comparison.rows}


# --------------------------------------------------------------------------- statistics


def test_paired_estimate_recovers_the_ratio_under_a_drifting_machine() -> None:
    rounds = _rounds(1.10, 150, random.Random(1))
    est = paired_estimate([r.base_cpu_s for r in rounds], [r.head_cpu_s for r in rounds])
    assert est.low < 1.10 < est.high
    assert est.high / est.low < 1.03, "pairing removes the machine's drift: a tight interval"
    assert est.p_value == pytest.approx(1 / 4000), "no resample crosses no change: the smallest p"
    same = _rounds(1.0, 150, random.Random(2))
    flat = paired_estimate([r.base_cpu_s for r in same], [r.head_cpu_s for r in same])
    assert flat.low < 1.0 < flat.high and flat.p_value is not None and flat.p_value > 0.01


def test_a_layout_offset_per_epoch_widens_the_interval() -> None:
    """Rounds of one build share its layout's luck: four builds offset by 0, +5, -1 and +4 % are four
    draws, not 160 independent rounds. Pooled, the rounds would call it significant; by epoch it is not."""
    rounds = _rounds(1.0, 160, random.Random(3), noise=0.01)
    offsets = {0: 1.0, 1: 1.05, 2: 0.99, 3: 1.04}
    head = [r.head_cpu_s * offsets[r.epoch] for r in rounds]
    base = [r.base_cpu_s for r in rounds]
    clustered = paired_estimate(base, head, [r.epoch for r in rounds])
    assert clustered.low < 1.0 < clustered.high and clustered.epochs == 4 and clustered.p_value > 0.05
    pooled = paired_estimate(base, head)  # as if every round were independent
    assert pooled.low > 1.0 and pooled.p_value < 0.001


def test_geometric_mean_over_cells_and_bad_samples() -> None:
    cells = [_rounds(r, 100, random.Random(i)) for i, r in enumerate((1.02, 1.04, 1.06))]
    est = geometric_mean_estimate(
        [([r.base_cpu_s for r in c], [r.head_cpu_s for r in c], [r.epoch for r in c]) for c in cells]
    )
    assert est.low < (1.02 * 1.04 * 1.06) ** (1 / 3) < est.high
    with pytest.raises(ValueError):
        paired_estimate([0.1, float("nan")], [0.1, 0.1])
    with pytest.raises(ValueError):
        paired_estimate([0.1, 0.2], [0.1])


# --------------------------------------------------------------------------- verdicts


def test_ten_percent_slower_everywhere_fails_and_unchanged_passes() -> None:
    slow = compare_ab(_record([_cell(f"c{i}", 1.10, i) for i in range(4)]), load_thresholds())
    assert slow.verdict == "FAIL" and slow.exit_code() == 1
    assert {r.metric.split("/")[0] for r in slow.comparison.blocking} >= {"c0", "c1", "c2", "c3"}
    same = compare_ab(_record([_cell(f"c{i}", 1.0, i) for i in range(4)]), load_thresholds())
    assert same.verdict == "PASS" and same.exit_code() == 0
    assert all(r.status == "OK" for r in same.comparison.rows)


def test_one_slowed_cell_is_named_and_a_five_percent_slowdown_warns() -> None:
    statuses = _statuses(_record([_cell("fast", 1.0, 1), _cell("slowed", 1.10, 2), _cell("other", 1.0, 3)]))
    assert statuses["slowed"] == "FAIL"
    assert statuses["fast"] == statuses["other"] == "OK"
    warned = _statuses(_record([_cell("a", 1.05, 4), _cell("b", 1.05, 5)]))
    assert warned["a"] in ("WARN", "FAIL") and warned["b"] in ("WARN", "FAIL")
    assert _statuses(_record([_cell("a", 0.90, 6)]))["a"] == "IMPROVED"


def test_what_the_head_cannot_build_blocks_and_nothing_compared_is_bad_input() -> None:
    head_only = _cell("new", 1.0, 1, status=Status.FAILED, failed_side="head", rounds=[])
    head_only.reason = "head: this revision rejects the config"
    rows = {
        r.metric.split("/")[0]: r
        for r in compare_ab(_record([head_only, _cell("ok", 1.0, 2)]), load_thresholds()).comparison.rows
    }
    assert rows["new"].status == "CRASHED" and rows["new"].blocking
    base_gap = _cell("gap", 1.0, 3, status=Status.UNSUPPORTED, failed_side="base", rounds=[])
    base_gap.reason = "base: this revision's ConformerConfig has no field fancy"
    with pytest.raises(BenchError, match="no cell could be timed on both revisions"):
        compare_ab(_record([base_gap]), load_thresholds())


def test_the_clock_follows_the_cell_threads() -> None:
    from conformer_bench.ab.compare import cell_clock

    one, two = _cell("one", 1.0, 1), _cell("two", 1.0, 2, threads=2)
    assert (cell_clock("auto", one), cell_clock("auto", two)) == ("cpu", "wall")
    assert cell_clock("wall", one) == "wall" and cell_clock("cpu", two) == "cpu"
    # a head that lost its parallelism: the same CPU time, twice the wall time
    for r in two.rounds:
        object.__setattr__(r, "head_wall_s", 2 * r.base_wall_s)
    record = _record([two])
    record.settings = dataclasses.replace(record.settings, clock="auto")
    assert _statuses(record)["two"] == "FAIL"
    record.settings = dataclasses.replace(record.settings, clock="cpu")
    assert _statuses(record)["two"] == "OK", "CPU time cannot see lost parallelism"


def test_instruction_counts_gate_on_their_own_threshold() -> None:
    flagged = _cell("more", 1.0, 1, instructions=InstructionCounts(1_000_000, 1_013_000, 3, "callgrind"))
    steady = _cell("same", 1.0, 2, instructions=InstructionCounts(1_000_000, 1_000_400, 3, "callgrind"))
    result = compare_ab(_record([flagged, steady]), load_thresholds())
    rows = {r.metric: r for r in result.comparison.rows}
    assert rows["more/paired.infer.instructions"].status == "FAIL"
    assert rows["same/paired.infer.instructions"].status == "OK"


def test_cells_a_side_could_not_run() -> None:
    unsupported = _cell("new-toggle", 1.0, 1, status=Status.UNSUPPORTED, failed_side="base", rounds=[])
    unsupported.reason = "base: this revision's ConformerConfig has no field fancy"
    crashed = _cell("broken", 1.0, 2, status=Status.FAILED, failed_side="head", rounds=[])
    crashed.reason = "head: RuntimeError: boom"
    result = compare_ab(_record([unsupported, crashed, _cell("ok", 1.0, 3)]), load_thresholds())
    rows = {r.metric.split("/")[0]: r for r in result.comparison.rows}
    assert rows["new-toggle"].status == "NOT COMPARABLE" and not rows["new-toggle"].blocking
    assert rows["broken"].status == "CRASHED" and rows["broken"].blocking
    text = render_markdown(result)
    assert "no field fancy" in text and "Not measured on both revisions (1)" in text


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["cells"][0]["rounds"][0].update(base_cpu_s=float("nan")),
        lambda d: d["cells"][0]["rounds"][0].update(head_wall_s=0),
        lambda d: d["cells"][0]["rounds"][0].update(head_cpu_s="fast"),
        lambda d: d["cells"][0].pop("rounds"),
        lambda d: d["cells"][0].pop("label"),
        lambda d: d["cells"][0].update(status="weird"),
        lambda d: d["cells"][0].update(batch_size=None),
        lambda d: d.update(settings=None),
        lambda d: d.update(cells={"a": 1}),
        lambda d: d["settings"].update(clock="sundial"),
        lambda d: d["settings"].update(seed="0"),
        lambda d: d["cells"][0].update(instructions={"base": 0, "head": 5, "count_steps": 3, "tool": "t"}),
        lambda d: d["cells"][0].update(
            instructions={"base": float("inf"), "head": 5, "count_steps": 3, "tool": "t"}
        ),
        lambda d: d.update(schema_version=99),
    ],
)
def test_a_damaged_saved_record_is_one_line_and_exit_2(damage: Any, tmp_path: Path) -> None:
    data = _record([_cell("a", 1.0, 1)]).to_dict()
    damage(data)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["ab", "--from", str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --from"), result.output


def test_from_refuses_measuring_options_and_judges_on_another_clock(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_record([_cell("a", 1.10, 1)]).to_dict()))
    refused = runner.invoke(app, ["ab", "--from", str(path), "--rounds", "50"])
    assert refused.exit_code == 2 and "drop --rounds" in refused.output
    same_file = runner.invoke(app, ["ab", "--from", str(path), "--json", str(path)])
    assert same_file.exit_code == 2 and "is an input" in same_file.output
    assert json.loads(path.read_text())["schema"] == "conformer-bench.ab", "the input is untouched"
    wall = runner.invoke(app, ["ab", "--from", str(path), "--clock", "wall"])
    assert wall.exit_code == 1 and "gated on the wall clock" in wall.output


def test_record_round_trip_and_rendering() -> None:
    record = _record([_cell("a", 1.10, 1), _cell("b", 1.0, 2)])
    again = ABRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    result = compare_ab(again, load_thresholds())
    text = render_markdown(result)
    assert text.startswith("**conformer-bench ab: FAIL**")
    assert "Resolution:" in text and "`a/paired.infer.img_per_s`" in text
    verdict = render_json(result)
    assert verdict["verdict"] == "FAIL" and verdict["blocking"] == ["a/paired.infer.img_per_s"]
    assert set(verdict["detectable_drop"]) == {"a/paired.infer.img_per_s", "b/paired.infer.img_per_s"}


# --------------------------------------------------------------------------- revisions


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A copy of this project in a new repository: ``base``, then ``head`` with every forward 10 % slower."""
    repo = tmp_path_factory.mktemp("ab") / "repo"
    base = inject.throwaway_repo(ROOT, repo)
    (repo / "nano_ab.toml").write_text(NANO_AB)
    subprocess.run(["git", "-C", str(repo), "add", "nano_ab.toml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "experiment"], check=True, env=_git_env())
    base = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    head = inject.commit_change(repo, "slow:0.10")
    return repo, base, head


def _git_env() -> dict[str, str]:
    import os

    return {**os.environ, **inject._GIT_ENV}


def test_revisions_resolve_extract_and_read(throwaway: tuple[Path, str, str]) -> None:
    repo, base, head = throwaway
    rev = resolve_revision(repo, "HEAD~1")
    assert rev.sha == base and rev.subject == "experiment"
    tree = source_tree(rev)
    assert (tree / "conformer" / "model.py").is_file() and "Injected" not in (
        tree / "conformer" / "model.py"
    ).read_text()
    assert source_tree(rev) == tree, "extracted once, then reused"
    assert "Injected" in (source_tree(resolve_revision(repo, head)) / "conformer" / "model.py").read_text()
    assert read_text_at(rev, "nano_ab.toml") == NANO_AB
    assert read_text_at(resolve_revision(repo, "HEAD~2"), "nano_ab.toml") is None
    assert resolve_revision(repo, WORKTREE).sha is None
    for bad in ("no-such-branch", "-rf", ""):
        with pytest.raises(BenchError, match="revision"):
            resolve_revision(repo, bad)


def test_the_revision_cache_keeps_the_most_recently_used(tmp_path: Path) -> None:
    import os

    from conformer_bench.revisions import prune_cache

    for i in range(5):
        (tmp_path / f"rev{i}").mkdir()
        (tmp_path / f"rev{i}" / ".complete").write_text("x")
        os.utime(tmp_path / f"rev{i}" / ".complete", (1000 + i, 1000 + i))
    (tmp_path / "half-extracted").mkdir()
    removed = prune_cache(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["rev0", "rev1", "rev2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half-extracted", "rev3", "rev4"]


def test_shallow_clone_without_the_base_names_the_fix(
    throwaway: tuple[Path, str, str], tmp_path: Path
) -> None:
    repo, base, _ = throwaway
    clone = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(clone)], check=True)
    with pytest.raises(BenchError, match=r"shallow.*git fetch --unshallow"):
        resolve_revision(clone, base)


def test_unmet_requirements_are_named() -> None:
    assert unmet_requirements(Requirements(">=3.11", ("numpy>=1.0", "torch>=2.5"))) == []
    unmet = unmet_requirements(
        Requirements(">=99", ("numpy>=999", "no-such-package-here", "torch; python_version < '3'"))
    )
    assert unmet[0].startswith("Python >=99")
    assert any(u.startswith("numpy>=999 (installed") for u in unmet)
    assert "no-such-package-here (not installed)" in unmet
    assert len(unmet) == 3, "a requirement whose marker does not apply is not needed"


def test_cores_for_each_schedule() -> None:
    import os

    usable = sorted(os.sched_getaffinity(0))
    base, head = cores_for("same-core", 1)
    assert base == head == (usable[-1],)
    if len(usable) >= 2:
        base, head = cores_for("split-cores", 1)
        assert base != head and len(base) == len(head) == 1
    with pytest.raises(BenchError, match="same-core"):
        cores_for("duet", len(usable))


# --------------------------------------------------------------------------- the worker


def test_worker_protocol_on_this_tree(tmp_path: Path) -> None:
    from conformer import get_config

    worker = Worker(Launch("head", ROOT, (), tmp_path / "head.log"))
    try:
        started = hello(worker)
        assert started.ok and started.pid == worker.proc.pid
        assert started.sent["conformer"] == str(ROOT / "conformer" / "__init__.py")
        cell = {
            "label": "nano", "config": get_config("nano", img_size=32).to_dict(), "phase": "infer",
            "batch_size": 2, "img_size": 32, "precision": "fp32", "path": "plain", "threads": 1, "warmup": 1,
            "pad_bytes": 12345,
        }  # fmt: skip
        assert worker.request({"op": "build", "cell": cell}, 120).sent == {"ok": True, "threads": 1}
        turn = worker.request({"op": "turn", "steps": 2}, 120)
        assert turn.ok and len(turn.wall_s) == len(turn.cpu_s) == 2
        assert all(t > 0 for t in turn.wall_s) and turn.page_faults >= 0
        odd = worker.request({"op": "build", "cell": {**cell, "config": {**cell["config"], "fancy": 1}}}, 120)
        assert odd == Reply(False, "unsupported", "this revision's ConformerConfig has no field fancy")
        compiled = worker.request({"op": "build", "cell": {**cell, "path": "compiled"}}, 120)
        assert compiled.status == "unsupported"
        train = worker.request({"op": "build", "cell": {**cell, "phase": "train"}}, 120)
        assert train.ok and worker.request({"op": "turn", "steps": 1}, 120).ok
        missing = {k: v for k, v in cell.items() if k != "threads"}
        refused = worker.request({"op": "build", "cell": missing}, 120)
        assert refused.status == "failed" and "threads" in str(refused.reason)
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_callgrind_dump_is_read(tmp_path: Path) -> None:
    (tmp_path / "base.123.2").write_text(
        "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 987654321\n"
    )
    assert _dumped_instructions(tmp_path, "base", 123, 2) == 987654321.0
    with pytest.raises(BenchError, match="no dump"):
        _dumped_instructions(tmp_path, "base", 123, 3)


# --------------------------------------------------------------------------- the command


def test_bad_input_is_one_line_and_exit_2(throwaway: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, head = throwaway
    cases = [
        ["ab", "nope", head, "-e", str(repo / "nano_ab.toml"), "--repo", str(repo)],
        ["ab", base, head, "-e", "missing.toml", "--repo", str(repo)],
        ["ab", "HEAD~1", "HEAD~2", "-e", str(repo / "nano_ab.toml"), "--repo", str(repo)],  # not at HEAD~2
        ["ab", base, head, "--repo", str(repo)],
        ["ab", "--from", str(tmp_path / "none.json")],
        ["ab", base, head, "-e", str(repo / "nano_ab.toml"), "--repo", str(tmp_path)],
        ["ab", base, head, "-e", str(repo / "nano_ab.toml"), "--repo", str(repo), "--only", "nosuch"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_gate_bites_on_a_ten_percent_slower_forward(
    throwaway: tuple[Path, str, str], tmp_path: Path
) -> None:
    """The proof: base against a revision 10 % slower FAILs; that revision against itself PASSes."""
    repo, base, head = throwaway
    experiment = str(repo / "nano_ab.toml")
    common = ["--repo", str(repo), "--rounds", "60", "--epochs", "2", "--quiet"]
    record = tmp_path / "slow.json"
    slowed = runner.invoke(
        app,
        ["ab", base, head, "-e", experiment, *common, "--json", str(tmp_path / "v.json"), "-o", str(record)],
    )
    assert slowed.exit_code == 1, slowed.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["verdict"] == "FAIL"
    assert {"dual/paired.infer.img_per_s", "cnn-only/paired.infer.img_per_s"} <= set(verdict["blocking"])
    ratios = [r["delta_rel"] for r in verdict["rows"] if r["metric"].startswith(("dual/", "cnn-only/"))]
    assert all(-0.15 < r < -0.05 for r in ratios), ratios  # 1/1.10 - 1 = -9.1 %
    rejudged = runner.invoke(app, ["ab", "--from", str(record)])
    assert rejudged.exit_code == 1 and "FAIL" in rejudged.output.splitlines()[0]

    unchanged = inject.commit_change(repo, "none")  # a new commit with the slowed code: a tree of its own
    same = runner.invoke(app, ["ab", head, unchanged, "-e", experiment, *common])
    assert same.exit_code == 0, same.output
    assert not any(line.startswith("| **FAIL") for line in same.output.splitlines())


@pytest.mark.slow
def test_a_worktree_change_is_measured(throwaway: tuple[Path, str, str], tmp_path: Path) -> None:
    """WORKTREE: the uncommitted edit (every forward 50 % slower) is what the head worker runs."""
    repo, _, head = throwaway
    model = repo / "conformer" / "model.py"
    original = model.read_text()
    model.write_text(original + inject.patch_text("slow:0.5"))
    try:
        result = runner.invoke(
            app, ["ab", head, WORKTREE, "-e", str(repo / "nano_ab.toml"), "--repo", str(repo), "--rounds", "12",
                  "--epochs", "1", "--quiet", "-o", str(tmp_path / "r.json"), "--json", str(tmp_path / "v.json")],
        )  # fmt: skip
    finally:
        model.write_text(original)
    assert result.exit_code == 1, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["head"]["name"] == WORKTREE and record["workers"]["head"]["conformer"].startswith(str(repo))
    rows = json.loads((tmp_path / "v.json").read_text())["rows"]
    ratios = [r["delta_rel"] for r in rows if r["metric"].startswith(("dual/", "cnn-only/"))]
    assert len(ratios) == 2 and all(-0.45 < r < -0.2 for r in ratios), ratios  # 1/1.5 - 1 = -33 %


def test_a_worker_reply_is_read_once_into_its_fields() -> None:
    reply = Reply.read({"ok": True, "wall_s": [1, 2], "cpu_s": [0.5, 1], "page_faults": 3, "torch": "2.x"})
    assert (reply.ok, reply.wall_s, reply.cpu_s, reply.page_faults) == (True, (1.0, 2.0), (0.5, 1.0), 3)
    assert reply.sent["torch"] == "2.x" and reply.reason is None
    refused = Reply.read({"ok": False, "status": "unsupported", "reason": "no such path"})
    assert (refused.ok, refused.status, refused.reason) == (False, "unsupported", "no such path")
    with pytest.raises(ValueError):
        Reply.read({"ok": True, "wall_s": ["fast"]})
