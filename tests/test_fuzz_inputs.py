"""Fuzzing the two front doors: `report` fed random mutations of the committed baseline (and of the CI
thresholds), the experiment loader fed random mutations of every committed experiment file.

Whatever the mutation, the answer is exit 0, 1 or 2, never a traceback; exit 2 comes with exactly one
``error:`` line; nothing is written outside the output folder (the inputs are byte-identical afterwards and
no other file appears). The generator is seeded, so a failure reproduces; the counts of each exit code are
printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import copy
import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conformer_bench.cli import app

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baselines" / "ci.json"
THRESHOLDS = ROOT / "experiments" / "ci_thresholds.toml"
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.toml") if p != THRESHOLDS)
SEED = 23
BASELINE_MUTATIONS = 240
THRESHOLD_MUTATIONS = 60
EXPERIMENT_MUTATIONS = 240

ODD_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, None, "", "x", "1", True, False, -1, 0, 1e308, 10**30, -(10**30), [], {},
    [None], ["1", 2], {"samples": [1]}, "../../../escaped", "a" * 5000,
]  # fmt: skip
TOML_VALUES = [
    "nan", "inf", "-inf", "1e999", "1e8", "100000", "-1", "0", "1e-320", "99999999999999999999999", '"x"', '""',
    '"../../escaped"', '"a/../../b"', "[]", "[[[]]]", "true", "{}", "[1, 2, 3]", '"' + "z" * 3000 + '"',
    "[" * 200 + "]" * 200, "[" * 3000 + "]" * 3000, "{ a = " * 2000 + "1" + " }" * 2000,
]  # fmt: skip


# --- mutations ---------------------------------------------------------------------------------------------


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a JSON document (inner nodes too)."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _leaves(v, (*path, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return {}
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


def mutate_json(rng: random.Random, doc: dict[str, Any]) -> bytes:
    """One structural or textual mutation of a JSON document, as the bytes of a file."""
    doc = copy.deepcopy(doc)
    paths = _leaves(doc)
    kind = rng.choice(["value", "value", "value", "delete", "samples", "text", "text"])
    if kind == "value":
        doc = _set(doc, rng.choice(paths), copy.deepcopy(rng.choice(ODD_VALUES)))
    elif kind == "delete":
        doc = _delete(doc, rng.choice(paths[1:]))
    elif kind == "samples":
        metric = rng.choice(list(doc["metrics"].values()))
        metric["samples"] = rng.choice(
            [[], [math.nan], [1.0, math.inf], [v / 3 for v in metric["samples"]], ["2"], [0.0] * 3, [-5.0]]
        )
    text = json.dumps(doc)  # writes NaN and Infinity literally, as a hostile writer would
    data = text.encode("utf-8")
    if kind == "text":
        data = _mutate_bytes(rng, data)
    return data


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    choice = rng.choice(["truncate", "flip", "insert", "number", "nest"])
    if choice == "truncate":
        return data[:at]
    if choice == "flip":
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    if choice == "insert":
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[at:]
    if choice == "number":
        return data[:at] + rng.choice([b"1e999", b"NaN", b"-Infinity", b"1" * 5000]) + data[at:]
    depth = rng.choice([70, 3000])
    return data[:at] + b"[" * depth + b"]" * depth + data[at:]


def mutate_toml(rng: random.Random, text: str) -> bytes:
    """One mutation of a TOML file: a value swapped, a line dropped, doubled or added, or its bytes damaged."""
    lines = text.splitlines()
    settings = [i for i, ln in enumerate(lines) if "=" in ln and not ln.lstrip().startswith("#")]
    kind = rng.choice(["value", "value", "value", "drop", "double", "add", "bytes"])
    if kind == "value" and settings:
        i = rng.choice(settings)
        key = lines[i].split("=", 1)[0]
        lines[i] = f"{key}= {rng.choice(TOML_VALUES)}"
    elif kind == "drop":
        del lines[rng.randrange(len(lines))]
    elif kind == "double":
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == "add":
        key = rng.choice(["name", "output_dir", "embed_dim", "num_med_block", "mlp_ratio", "qk_scale", "depth",
                          "label", "seeds", "img_size", "batch_size", "fail_rel", "alpha", "kind", "unknown"])  # fmt: skip
        lines.insert(rng.randrange(len(lines) + 1), f"{key} = {rng.choice(TOML_VALUES)}")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if kind == "bytes":
        data = _mutate_bytes(rng, data)
    return data


# --- running them ------------------------------------------------------------------------------------------


def _snapshot(root: Path, skip: Path) -> dict[str, bytes]:
    """Every file under ``root`` but those in ``skip`` (the output folder), with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


def _check(result: Any, label: str) -> int:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        label,
        repr(result.exception),
    )
    assert result.exit_code in (0, 1, 2), (label, result.exit_code, result.output)
    if result.exit_code == 2:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.output, (label, result.stderr)
    return int(result.exit_code)


def _run_all(
    tmp_path: Path, cases: list[tuple[str, bytes, Callable[[Path, Path], list[Any]]]]
) -> collections.Counter[tuple[str, int]]:
    """Write each mutated input to ``in/``, run the command it builds, and hold it to the rules above."""
    runner = CliRunner()
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    for n, (target, data, command) in enumerate(cases):
        source = inputs / f"{n:03d}{Path(target).suffix}"
        source.write_bytes(data)
        out.mkdir()
        before = _snapshot(tmp_path, out)
        result = runner.invoke(app, [str(a) for a in command(source, out)])
        counts[(target, _check(result, f"case {n} ({target})"))] += 1
        assert _snapshot(tmp_path, out) == before, f"case {n} ({target}) wrote outside {out}"
        source.unlink()
        shutil.rmtree(out, ignore_errors=True)
    return counts


def _pristine_side(tmp_path: Path) -> Path:
    """The committed baseline cut to one cell: the unmutated side of each comparison (fast to compare)."""
    doc = json.loads(BASELINE.read_text(encoding="utf-8"))
    doc["metrics"] = {k: v for k, v in doc["metrics"].items() if k.startswith("micro/")}
    path = tmp_path / "pristine.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.slow
def test_report_survives_mutated_baselines_and_thresholds(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    doc = json.loads(BASELINE.read_text(encoding="utf-8"))
    (tmp_path / "fixed").mkdir()
    pristine = _pristine_side(tmp_path / "fixed")
    thresholds_text = THRESHOLDS.read_text(encoding="utf-8")

    def as_side(mutated_is_baseline: bool) -> Callable[[Path, Path], list[Any]]:
        def command(source: Path, out: Path) -> list[Any]:
            base, cur = (source, pristine) if mutated_is_baseline else (pristine, source)
            return ["report", "--baseline", base, "--current", cur, "--json", out / "r.json",
                    "--markdown", out / "r.md"]  # fmt: skip

        return command

    def with_thresholds(source: Path, out: Path) -> list[Any]:
        return ["report", "--baseline", pristine, "--current", pristine, "--thresholds", source,
                "--json", out / "r.json"]  # fmt: skip

    cases = [
        ("ci.json", mutate_json(rng, doc), as_side(rng.random() < 0.5)) for _ in range(BASELINE_MUTATIONS)
    ]
    cases += [
        ("ci_thresholds.toml", mutate_toml(rng, thresholds_text), with_thresholds)
        for _ in range(THRESHOLD_MUTATIONS)
    ]
    counts = _run_all(tmp_path, cases)
    print(f"\nreport fuzz, seed {SEED}: {len(cases)} mutations:", dict(sorted(counts.items())))
    assert sum(counts.values()) == len(cases)
    assert counts[("ci.json", 0)] and counts[("ci.json", 2)] and counts[("ci_thresholds.toml", 2)]


@pytest.mark.slow
def test_experiment_loader_survives_mutated_experiment_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformer_bench.ablate.experiment import load_experiment
    from conformer_bench.errors import BenchError

    rng = random.Random(SEED)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where results/<name> would go
    texts = {p.name: p.read_text(encoding="utf-8") for p in EXPERIMENTS}

    def dry_run(source: Path, out: Path) -> list[Any]:
        return ["ablate", source, "--dry-run", "--limit", "3"]

    cases = []
    for _ in range(EXPERIMENT_MUTATIONS):
        name = rng.choice(sorted(texts))
        cases.append((name, mutate_toml(rng, texts[name]), dry_run))
    counts = _run_all(tmp_path, cases)
    print(f"\nexperiment fuzz, seed {SEED}: {len(cases)} mutations:", dict(sorted(counts.items())))
    assert sum(n for (_, code), n in counts.items() if code == 0) and sum(
        n for (_, code), n in counts.items() if code == 2
    )
    # With its output_dir line taken out, every file that loads derives a folder under ./results.
    confined = 0
    for _, data, _ in cases:
        source = tmp_path / "loaded.toml"
        lines = data.split(b"\n")
        source.write_bytes(b"\n".join(ln for ln in lines if not ln.lstrip().startswith(b"output_dir")))
        try:
            exp = load_experiment(source)
        except BenchError:
            continue
        assert (work / "results").resolve() in exp.output_dir.resolve().parents, exp.output_dir
        confined += 1
    print(f"{confined} loaded files derived their output folder from the name, each under ./results")
    assert sorted(p.name for p in work.iterdir()) == []
