"""`conformer-bench history`: the store (idempotent adds, concurrent writers, migration), what each record kind
adds, the change points (a 25 % step found where it is, none in a flat series), the backfill on a throwaway
repository killed with SIGKILL and resumed, and the published dashboard opened in headless Chromium."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ab import NANO_AB, _cell, _record  # the A/B tests' nano experiment, paired cells and records
from test_report import finetune_record, profile_record, report_cli, write
from typer.testing import CliRunner

from conformer_bench.ab import inject
from conformer_bench.cli import app
from conformer_bench.history.changes import exact_steps, find_steps, series_steps
from conformer_bench.history.ingest import Revisions, entries_from_path
from conformer_bench.history.render import Gate, render_markdown
from conformer_bench.history.series import load_series
from conformer_bench.history.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    HistoryStore,
    Machine,
    Result,
    RevisionInfo,
    RunEntry,
    digest,
)

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
MACHINE = Machine(device="cpu", cpu_model="Test CPU", cpu_count=2, torch="2.13.0")
OTHER_MACHINE = Machine(device="cpu", cpu_model="Other CPU", cpu_count=4, torch="2.13.0")


def _revision(i: int) -> RevisionInfo:
    return RevisionInfo(f"{i:040x}", f"commit {i}", f"2026-01-{i + 1:02d}T00:00:00+00:00", i + 1)


def _entry(i: int, value: float, cell: str = "micro", machine: Machine = MACHINE, run: str = "") -> RunEntry:
    result = Result(cell, "paired.infer.img_per_s", value, "x anchor", "higher", "paired",
                    value * 0.98, value * 1.02, 40, "ctx")  # fmt: skip
    return RunEntry(
        kind="backfill",
        key=f"run-{machine.fingerprint}-{i}-{run}",
        revision=_revision(i),
        machine=machine,
        experiment="ci",
        source="test",
        parts={"": {"i": i}, f"cell:{cell}/infer": {"value": value}},
        results={f"cell:{cell}/infer": [result]},
        anchor=_revision(0),
    )


def _one_line_error(result: Any) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --------------------------------------------------------------------------- the store


def test_a_run_added_twice_is_a_no_op_and_its_missing_parts_are_added(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.db") as store:
        first = store.add(_entry(1, 1.0))
        again = store.add(_entry(1, 1.0))
        assert first.new_run and first.parts == ("", "cell:micro/infer") and again.nothing
        more = _entry(1, 0.9, cell="no-fcu")
        added = store.add(more)
        assert not added.new_run and added.parts == ("cell:no-fcu/infer",), "the header is not added twice"
        assert store.counts() == {"machines": 1, "revisions": 2, "runs": 1, "parts": 3, "results": 2}
        assert store.record(_entry(1, 1.0).key, "cell:no-fcu/infer") == {"value": 0.9}
        assert store.version == SCHEMA_VERSION


def _writer(path: str, worker: int, runs: int) -> None:
    with HistoryStore(path) as store:
        for i in range(runs):
            store.add(_entry(i, 1.0, cell=f"w{worker}", run=f"w{worker}"))


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Four processes add 25 runs each at once (and all race to create the file): every run is there."""
    path = str(tmp_path / "h.db")
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with HistoryStore(path) as store:
        assert store.counts()["runs"] == 100 and store.counts()["results"] == 100
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    """A file written by schema version 1 (before runs named their anchor) keeps its rows."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    conn.execute("INSERT INTO machines VALUES (1, 'fp', '{}', 'old machine')")
    conn.execute("INSERT INTO revisions VALUES ('abc', 'old commit', NULL, 1)")
    conn.execute("INSERT INTO runs VALUES (1, 'k', 'profile', 'abc', 1, 'micro', 'p.json', 'then')")
    conn.commit()
    conn.close()
    with HistoryStore(path) as store:
        assert store.version == SCHEMA_VERSION == 2
        assert store.counts()["runs"] == 1
        row = sqlite3.connect(path).execute("SELECT key, anchor FROM runs").fetchone()
        assert row == ("k", None)


def test_a_newer_or_foreign_file_is_refused_in_one_line(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert "upgrade conformer-bench" in _one_line_error(
        runner.invoke(app, ["history", "changes", "--db", str(newer)])
    )
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database, " * 100)
    _one_line_error(runner.invoke(app, ["history", "changes", "--db", str(garbage)]))
    assert garbage.read_text().startswith("not a database"), "a foreign file is left as it was"
    _one_line_error(runner.invoke(app, ["history", "changes", "--db", str(tmp_path / "none.db")]))


# --------------------------------------------------------------------------- records -> runs


def test_records_of_every_kind_are_added_once(tmp_path: Path) -> None:
    """A profile record and an ablate folder (results/ in this repository), filed under HEAD."""
    db = str(tmp_path / "h.db")
    args = ["history", "add", "results/presets/tiny.json", "results/ci", "--db", db, "--revision", "HEAD"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "tiny.json: 1 run(s) added" in first.output and "results/ci: 16 run(s) added" in first.output
    again = runner.invoke(app, args)
    assert "results/ci: 0 run(s) added, 16 already in" in again.output
    with HistoryStore(db) as store:
        series = {(s.key.cell, s.key.metric): s for s in load_series(store)}
    params = series[("tiny", "params.total")]
    assert params.kind == "exact" and params.points[0].value == 23_524_704
    assert ("no-fcu", "finetune.top1.sum") in series and series[
        ("no-fcu", "finetune.top1.sum")
    ].kind == "accuracy"


def test_a_record_of_uncommitted_code_needs_a_revision(tmp_path: Path) -> None:
    record = json.loads((ROOT / "results/presets/tiny.json").read_text())
    record["environment"]["commit"] = "0123456789ab+dirty"
    path = tmp_path / "dirty.json"
    path.write_text(json.dumps(record))
    assert "uncommitted changes" in _one_line_error(
        runner.invoke(app, ["history", "add", str(path), "--db", str(tmp_path / "h.db")])
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "conformer-bench.baseline"}))
    _one_line_error(runner.invoke(app, ["history", "add", str(other), "--db", str(tmp_path / "h.db")]))


# --------------------------------------------------------------------------- change points


def _noisy(levels: list[float], noise: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [level * math.exp(rng.normal(0, noise)) for level in levels]


def test_a_step_is_found_where_it_is_with_its_size() -> None:
    values = _noisy([1.0] * 6 + [0.8] * 6, 0.03, 1)
    (step,) = find_steps(values)
    assert step.index == 6 and step.low < 0.8 < step.high and step.p_value < 0.01
    (step,) = find_steps(_noisy([1.0] * 3 + [0.8] * 4, 0.03, 2), [0.03] * 7)
    assert step.index == 3, "seven points, as a short backfill: found with the points' own errors"
    two = find_steps(_noisy([1.0] * 5 + [0.8] * 5 + [1.0] * 5, 0.02, 3))
    assert [s.index for s in two] == [5, 10]


def test_flat_series_have_no_step() -> None:
    """50 flat series of 12 points at 3 % noise: at most 3 with a step (measured: 2 of 50, as otava)."""
    false = sum(bool(find_steps(_noisy([1.0] * 12, 0.03, seed))) for seed in range(50))
    assert false <= 3
    assert find_steps([1.0, 1.01, 0.99]) == [], "too short to hold a step"
    assert find_steps(_noisy([1.0] * 6 + [0.99] * 6, 0.001, 4), min_change=0.02) == [], (
        "a 1 % step is below 2 %"
    )


def test_exact_metrics_step_at_every_change() -> None:
    steps = exact_steps([10.0, 10.0, 12.0, 12.0, 12.0])
    assert [(s.index, s.ratio, s.p_value) for s in steps] == [(2, 1.2, 0.0)]


def test_series_never_cross_machines(tmp_path: Path) -> None:
    """The same metric on a faster machine: two flat series, no step where the machine changed."""
    with HistoryStore(tmp_path / "h.db") as store:
        for i in range(6):
            store.add(_entry(i, 1.0 + 0.001 * (i % 2)))
        for i in range(6, 12):
            store.add(_entry(i, 1.5 + 0.001 * (i % 2), machine=OTHER_MACHINE))
        found = [series_steps(s) for s in load_series(store)]
    assert len(found) == 2 and all(not f.change_points for f in found)


def _step_store(path: Path) -> None:
    """Two cells over 8 revisions; `micro` drops 20 % at revision 5 (kept small to draw)."""
    with HistoryStore(path) as store:
        for i in range(8):
            store.add(_entry(i, (1.0 if i < 5 else 0.8) * (1 + 0.004 * ((-1) ** i))))
            store.add(_entry(i, 1.0 + 0.004 * ((-1) ** i), cell="no-fcu"))


def test_changes_lists_steps_and_gates_on_the_newest(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    _step_store(db)
    out = tmp_path / "changes.json"
    result = runner.invoke(app, ["history", "changes", "--db", str(db), "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("**conformer-bench history: FAIL**")
    verdict = json.loads(out.read_text())
    steps = {s["cell"]: s["change_points"] for s in verdict["series"]}
    assert [cp["revision"] for cp in steps["micro"]] == [_revision(5).sha] and steps["no-fcu"] == []
    assert steps["micro"][0]["regression"] and steps["micro"][0]["low"] < 0.8 < steps["micro"][0]["high"]
    ungated = runner.invoke(app, ["history", "changes", "--db", str(db), "--gate", "nothing.*"])
    assert ungated.exit_code == 0, "a step of a metric that does not gate is listed, not gated"
    picked = runner.invoke(app, ["history", "changes", "--db", str(db), "--cell", "no-fcu"])
    assert picked.exit_code == 0 and "0 change point(s) in 0 of 1 series" in picked.output
    assert "no series matches" in _one_line_error(
        runner.invoke(app, ["history", "changes", "--db", str(db), "--metric", "x"])
    )


# --------------------------------------------------------------------------- the dashboard

_BROWSER_REASON = "needs Debian's chromium and playwright (scripts/browser.sh installs both; CI runs it)"


def _browser_ready() -> bool:
    return Path("/usr/bin/chromium").is_file() and importlib.util.find_spec("playwright") is not None


def _browse() -> Any:
    spec = importlib.util.spec_from_file_location(
        "dashboard_screenshot", ROOT / "scripts" / "dashboard_screenshot.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.browse


@pytest.mark.slow
def test_publish_writes_a_site_that_opens_in_chromium(tmp_path: Path) -> None:
    """The front page names the regression and links its commit; the metric page draws one line per cell
    and marks the step, with no console error; picking a cell in the menu hides the other; the screenshot
    shows the red regression marker."""
    if not _browser_ready():
        if os.environ.get("CONFORMER_BENCH_REQUIRE_BROWSER"):
            pytest.fail(_BROWSER_REASON)
        pytest.skip(_BROWSER_REASON)
    db, site = tmp_path / "h.db", tmp_path / "site"
    _step_store(db)
    url = "https://example.invalid/commit/{sha}"
    done = runner.invoke(app, ["history", "publish", str(site), "--db", str(db), "--commit-url", url])
    assert done.exit_code == 0, done.output
    assert "1 metric page(s), 1 plot(s), 1 change point(s) marked" in done.output
    browse = _browse()
    front = browse(site / "index.html")
    assert front["errors"] == [] and "paired.infer.img_per_s.html" in front["links"]
    assert url.format(sha=_revision(5).sha) in front["links"]
    shot = tmp_path / "page.png"
    page = browse(site / "paired.infer.img_per_s.html", shot)
    assert page["errors"] == [] and page["plots"] == 1
    traces = {t["name"]: t for t in page["traces"][0]}
    assert {n for n in traces if not n.endswith("change points")} == {"micro", "no-fcu"}
    assert len(traces["micro"]["x"]) == 8 and traces["micro: change points"]["x"] == [_revision(5).short]
    assert traces["no-fcu: change points"]["x"] == []
    picked = browse(site / "paired.infer.img_per_s.html", select="no-fcu")
    visible = {t["name"] for t in picked["traces"][0] if t["visible"] is True}
    assert visible == {"no-fcu", "no-fcu: change points"}
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    red = np.sum(np.abs(pixels - np.array([0xD6, 0x27, 0x28])).sum(axis=1) < 30)
    assert red > 30, "the regression's red marker is drawn"


# --------------------------------------------------------------------------- the backfill


@pytest.fixture(scope="module")
def slowed_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """base (with a nano experiment), an unchanged commit, and a commit making every forward 25 % slower."""
    repo = tmp_path_factory.mktemp("history") / "repo"
    inject.throwaway_repo(ROOT, repo)
    (repo / "nano.toml").write_text(NANO_AB)
    env = {**os.environ, **inject._GIT_ENV}
    subprocess.run(["git", "-C", str(repo), "add", "nano.toml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "experiment"], check=True, env=env)
    commits = [
        inject.commit_change(repo, change, f"r{i}: {change}")
        for i, change in enumerate(("none", "slow:0.25"), 1)
    ]
    return repo, commits


def _backfill(repo: Path, db: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "conformer_bench", "history", "backfill", "HEAD~2..HEAD", "-e",
               str(repo / "nano.toml"), "--repo", str(repo), "--db", str(db), "--rounds", "10", "--epochs", "1",
               *extra]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _stored_cells(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute(
                "SELECT runs.revision, parts.name FROM parts JOIN runs ON runs.id = parts.run WHERE parts.name LIKE 'cell:%'"
            ).fetchall()
    except sqlite3.OperationalError:  # the schema is being created
        return []


@pytest.mark.slow
def test_backfill_killed_and_resumed_then_the_step_is_found(
    slowed_repo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """SIGKILL a backfill once it has stored some cells; the resumed one times only the others (nothing twice,
    nothing lost). The ratio over the anchor is about 1 at the anchor and the unchanged commit and about 0.8 at
    the slowed one, for both cells; no step is listed anywhere else (three points are too few for a step: the
    detection on a backfill is proven by scripts/history_proof.py, README)."""
    repo, commits = slowed_repo
    db = tmp_path / "h.db"
    first = _backfill(repo, db)
    deadline = time.monotonic() + 600
    while len(_stored_cells(db)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, f"finished before it could be killed: {first.communicate()}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _stored_cells(db)
    assert 2 <= len(before) < 6
    kept = _cell_records(db)
    resumed = _backfill(repo, db)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert f"{6 - len(before)} cell(s) timed, {len(before)} already in" in out, out
    after = _stored_cells(db)
    assert len(after) == len(set(after)) == 6, "every cell of the 3 revisions once"
    now = _cell_records(db)
    assert all(now[part] == record for part, record in kept.items()), (
        "the cells stored before the kill are kept"
    )
    verdict = tmp_path / "changes.json"
    listed = runner.invoke(
        app,
        ["history", "changes", "--db", str(db), "--metric", "paired.infer.img_per_s", "--json", str(verdict)],
    )
    assert listed.exit_code in (0, 1), listed.output
    series = json.loads(verdict.read_text())["series"]
    assert {s["cell"] for s in series} == {"dual", "cnn-only"}
    for s in series:
        ratios = {p["revision"]: p["value"] for p in s["points"]}
        slowed = [sha for sha, ratio in ratios.items() if ratio < 0.9]
        assert slowed == [commits[1]], (s["cell"], ratios)  # 1 / 1.25 = 0.8
        assert all(0.9 < ratios[sha] < 1.1 for sha in ratios if sha not in slowed), (s["cell"], ratios)
        assert all(cp["revision"] == commits[1] for cp in s["change_points"]), "no step anywhere else"


def _cell_records(db: Path) -> dict[tuple[str, str], Any]:
    with sqlite3.connect(db) as conn:
        keys = conn.execute(
            "SELECT runs.key, parts.name FROM parts JOIN runs ON runs.id = parts.run WHERE parts.name LIKE 'cell:%'"
        ).fetchall()
    with HistoryStore(db) as store:
        return {(key, part): store.record(key, part) for key, part in keys}


def test_backfill_bad_input_is_one_line(slowed_repo: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = slowed_repo
    db = str(tmp_path / "h.db")
    base = ["history", "backfill", "-e", str(repo / "nano.toml"), "--repo", str(repo), "--db", db]
    for spec in ("nope..HEAD", "HEAD..HEAD~1", "HEAD~1...HEAD", "..HEAD"):
        _one_line_error(runner.invoke(app, [*base[:2], spec, *base[2:]]))
    _one_line_error(runner.invoke(app, [*base[:2], "HEAD~1..HEAD", *base[2:], "--only", "nosuch"]))
    with HistoryStore(db) as store:
        assert store.counts()["runs"] == 0


def test_report_and_finetune_records_are_read_typed_and_keyed_by_their_json(tmp_path: Path) -> None:
    """A run's key is the digest of its record's JSON, as before records were typed: adding again is a no-op."""
    base = write(tmp_path / "b.json", profile_record())
    cur = write(tmp_path / "c.json", profile_record(params=1))
    verdict = tmp_path / "verdict.json"
    report_cli("--baseline", base, "--current", cur, "--json", verdict)
    fine = write(tmp_path / "f.json", finetune_record(71.0))
    revs = Revisions(ROOT, "HEAD")
    (report_run,) = entries_from_path(verdict, revs)
    (fine_run,) = entries_from_path(fine, revs)
    (tiny_run,) = entries_from_path(ROOT / "results/presets/tiny.json", revs)
    for run, path in (
        (report_run, verdict),
        (fine_run, fine),
        (tiny_run, ROOT / "results/presets/tiny.json"),
    ):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert run.parts[""] == data and run.key == digest({"kind": run.kind, "record": data}, 32)
    current = {(r.cell, r.metric): r for r in report_run.results[""]}
    assert current[("", "params.total")].value == 1 and report_run.experiment == str(cur)
    assert {r.metric for r in fine_run.results[""]} >= {"finetune.top1.sum", "finetune.val_loss"}
    assert next(r for r in fine_run.results[""] if r.metric == "finetune.top1.sum").value == 71.0
    db = str(tmp_path / "h.db")
    args = ["history", "add", str(verdict), str(fine), "--db", db, "--revision", "HEAD"]
    assert runner.invoke(app, args).exit_code == 0
    assert "0 run(s) added, 1 already in" in runner.invoke(app, args).output


def test_a_baseline_is_no_run_of_the_history(tmp_path: Path) -> None:
    line = _one_line_error(
        runner.invoke(app, ["history", "add", "results/baselines/ci.json", "--db", str(tmp_path / "h.db")])
    )
    assert "'conformer-bench.baseline' is not a run the history keeps" in line


def test_an_ab_record_is_filed_under_its_head_against_its_base(tmp_path: Path) -> None:
    record = _record([_cell("micro", 0.8, 1, n=40), _cell("no-fcu", 1.0, 2, n=40)])
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    record.head = dataclasses.replace(record.head, sha=sha)
    record.base = dataclasses.replace(record.base, sha=sha)
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(record.to_dict()))
    (run,) = entries_from_path(path, Revisions(ROOT))
    assert run.kind == "ab" and run.revision.sha == sha and run.anchor is not None and run.experiment == "t"
    assert run.key == digest({"kind": "ab", "record": record.to_dict()}, 32)
    ratio = run.results["cell:micro/infer"][0]
    assert ratio.metric == "paired.infer.img_per_s" and ratio.value == pytest.approx(
        1 / 0.8, rel=0.05
    )  # times 0.8: throughput 1.25


def test_the_changes_table_escapes_a_pipe_in_a_cell_label(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.db") as store:
        for i in range(8):
            store.add(_entry(i, (1.0 if i < 5 else 0.8) * (1 + 0.004 * ((-1) ** i)), cell="a|b"))
        found = [series_steps(s) for s in load_series(store)]
    text = render_markdown(found, Gate(), len(found))
    (row,) = [line for line in text.splitlines() if "paired.infer.img_per_s" in line]
    assert (
        "`a\\|b/paired.infer.img_per_s`" in row and row.count(" | ") == 7 and "regression **blocks**" in row
    )
