"""Every record kind, in every status, and every record file under results/ round-trips through its type."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from conformer_bench import readers
from conformer_bench.records import KINDS, SchemaRecord, Status

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _objects(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    value = json.loads(text)
    return value if isinstance(value, list) else [value]


def _committed() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(RESULTS.rglob("*.json*")):
        if path.suffix in (".json", ".jsonl"):
            out.extend((path, obj) for obj in _objects(path) if isinstance(obj, dict) and "schema" in obj)
    return out


COMMITTED = _committed()


def test_results_hold_records_of_every_written_kind() -> None:
    """The walk below sees the kinds the tool commits (a walk over nothing would prove nothing)."""
    seen = {obj["schema"] for _, obj in COMMITTED}
    assert {"conformer-bench.profile", "conformer-bench.speed", "conformer-bench.finetune"} <= seen
    assert len(COMMITTED) > 100


def _round_trip(kind: type[SchemaRecord], data: dict[str, Any]) -> None:
    migrated = kind.migrate(data)
    record = kind.from_dict(data)
    assert record.to_dict() == migrated
    assert json.dumps(kind.from_dict(record.to_dict()).to_dict()) == json.dumps(record.to_dict())


@pytest.mark.parametrize(
    ("path", "data"),
    [pytest.param(p, d, id=f"{p.relative_to(RESULTS)}:{i}") for i, (p, d) in enumerate(COMMITTED)],
)
def test_every_committed_record_round_trips(path: Path, data: dict[str, Any]) -> None:
    kind = KINDS.get(data["schema"])
    if kind is None:
        pytest.fail(f"{path}: no record kind reads schema {data['schema']!r}")
    _round_trip(kind, data)
    for nested in ("profile", "finetune"):  # an ablation cell carries the records of its cell
        inner = data.get(nested)
        if isinstance(inner, dict) and inner.get("schema") in KINDS:
            _round_trip(KINDS[inner["schema"]], inner)


def test_read_returns_typed_records_for_every_results_folder() -> None:
    import conformer_bench

    folders = [p for p in sorted(RESULTS.iterdir()) if p.is_dir()]
    assert folders
    for folder in folders:
        records = conformer_bench.read(folder)
        assert all(isinstance(r, SchemaRecord) for r in records)
        expected = sum(
            1 for path, obj in COMMITTED if folder in path.parents and not path.name.startswith(".")
        )
        assert len(records) == expected, folder


def _first_of(kind: type[SchemaRecord]) -> SchemaRecord | None:
    for _, data in COMMITTED:
        if data["schema"] == kind.SCHEMA and data.get("status", "ok") == "ok":
            return kind.from_dict(data)
    if kind.SCHEMA == "conformer-bench.ab":  # no A/B record is committed: one cell of two rounds
        from conformer_bench.records import ABRecord, PairedCell, PairedRound

        rounds = [PairedRound(order, 0, 1.0, 1.1, 0.9, 1.0, 0, 0) for order in ("base,head", "head,base")]
        cell = PairedCell("micro", "infer", Status.OK, None, None, "h", 2, 32, "fp32", "plain", 1, 3, rounds)
        sides = {"name": "HEAD", "sha": "0" * 40}
        return ABRecord(Status.OK, None, sides, sides, {"name": "e"}, {}, {"clock": "cpu"}, {}, [cell], 2.0)
    return None


STATUS_KINDS = sorted(s for s, k in KINDS.items() if "status" in {f.name for f in dataclasses.fields(k)})  # type: ignore[arg-type]


def test_status_kinds_are_the_measuring_ones() -> None:
    assert {"conformer-bench.profile", "conformer-bench.speed", "conformer-bench.finetune"} <= set(
        STATUS_KINDS
    )
    assert {"conformer-bench.ab", "conformer-bench.cell"} <= set(STATUS_KINDS)


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("schema", STATUS_KINDS)
def test_every_status_of_every_kind_reads_back(schema: str, status: Status) -> None:
    """A record in any status writes and reads back; what a non-ok record never measured is left out."""
    kind = KINDS[schema]
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    sample = _first_of(kind)
    if sample is None:
        pytest.skip(f"no committed {schema} record to start from")
    unmeasured = {} if status is Status.OK else dict.fromkeys(kind.MEASURED & names)
    changed = dataclasses.replace(sample, status=status, reason=f"{status.value} on purpose", **unmeasured)  # type: ignore[type-var]
    data = json.loads(json.dumps(changed.to_dict()))
    for name in unmeasured:
        assert name not in data
    back = kind.from_dict(data)
    assert back.status is status
    assert back.to_dict() == data


def test_failed_sweep_point_reads_back_through_the_reader(tmp_path: Path) -> None:
    import conformer
    from conformer_bench import sweep
    from conformer_bench.profiling import ProfileSettings

    point = sweep.Point(conformer.get_config("micro"), 4, 32, "fp32")
    record = sweep.failed_record(point, ProfileSettings(), RuntimeError("boom"))
    data = record if isinstance(record, dict) else record.to_dict()
    path = tmp_path / "sweep.jsonl"
    path.write_text(json.dumps(data) + "\n")
    (back,) = readers.records_in_file(path)
    assert back.status is Status.FAILED
    assert "boom" in (back.reason or "")
    assert back.to_dict() == data


def test_torn_last_line_is_left_out_and_a_bad_middle_line_is_named(tmp_path: Path) -> None:
    from conformer_bench.errors import BenchError

    line = json.dumps(next(d for _, d in COMMITTED if d["schema"] == "conformer-bench.profile"))
    path = tmp_path / "records.jsonl"
    path.write_text(line + "\n" + line[: len(line) // 2])
    assert len(readers.records_in_file(path)) == 1
    path.write_text(line + "\n{not json\n" + line + "\n")
    with pytest.raises(BenchError, match=r"records\.jsonl line 2 is not valid JSON"):
        readers.records_in_file(path)


def _through_a_file(record: SchemaRecord, tmp_path: Path) -> SchemaRecord:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record.to_dict()))
    (back,) = readers.records_in_file(path)
    assert type(back) is type(record) and back.to_dict() == record.to_dict()
    return back


def test_an_out_of_memory_profile_reads_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    import conformer
    from conformer_bench import profiling

    def always_oom(*args: Any) -> Any:
        raise torch.OutOfMemoryError("fake")

    monkeypatch.setattr(profiling, "_run_phase", always_oom)
    settings = profiling.ProfileSettings(
        batch_size=2, img_size=32, mode="infer", warmup=1, iters=2, count_flops=False
    )
    record = profiling.profile_variant(conformer.get_config("nano"), settings)
    assert record.status is Status.OOM
    assert _through_a_file(record, tmp_path).status is Status.OOM


def test_an_unsupported_speed_path_reads_back(tmp_path: Path) -> None:
    from conformer_bench.records import SpeedRecord

    sample = _first_of(SpeedRecord)
    assert isinstance(sample, SpeedRecord)
    name, path = next(iter(sample.paths.items()))
    unsupported = dataclasses.replace(path, status=Status.UNSUPPORTED, reason="no bf16 kernels here")
    record = dataclasses.replace(sample, paths={**sample.paths, name: unsupported})
    back = _through_a_file(record, tmp_path)
    assert isinstance(back, SpeedRecord) and back.paths[name].status is Status.UNSUPPORTED


def test_to_frame_of_a_run_folder_is_its_cells_and_mixed_tables_are_refused() -> None:
    import conformer_bench
    from conformer_bench.errors import BenchError

    frame = conformer_bench.to_frame(conformer_bench.read(RESULTS / "ci"))  # cells and the experiment
    assert len(frame) == sum(1 for p, d in COMMITTED if p == RESULTS / "ci" / "cells.jsonl")
    assert "label" in frame.columns and "top1_sum" in frame.columns
    with pytest.raises(BenchError, match="pass one kind"):
        conformer_bench.to_frame(conformer_bench.read(RESULTS / "gpu"))  # profiles, cells, speed ...
    with pytest.raises(BenchError, match="no table form"):
        conformer_bench.to_frame(conformer_bench.read(RESULTS / "baselines"))
