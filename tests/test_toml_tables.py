"""The typed TOML table reader every input file goes through (experiments, searches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from conformer_bench.ablate.experiment import ExperimentFile, load_experiment, read_experiment_file
from conformer_bench.errors import BenchError
from conformer_bench.toml_tables import Checker, fits, fix, read_table

TEXT = """\
[table]
count = 3
mode = "fast"
"""


@dataclass(frozen=True)
class _Table:
    count: int = field(metadata=fix("{value} is not valid; give an integer", missing="add count = 1"))
    mode: Literal["fast", "slow"] = "slow"
    ratio: float = 1.0
    tags: list[str] = field(default_factory=list)
    seeds: list[int] | None = None


def _chk() -> Checker:
    return Checker(Path("f.toml"), TEXT)


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (3, int, True),
        (True, int, False),  # TOML's true is not a number
        (3, float, True),
        (2.5, int, False),
        ("x", Literal["x", "y"], True),
        ("z", Literal["x", "y"], False),
        ([1, 2], list[int], True),
        ([1, "2"], list[int], False),
        ({"a": 1}, dict[str, int], True),
        ({"a": "1"}, dict[str, int], False),
        (None, int | None, True),
        ([0], list[int] | None, True),
        ("anything", Any, True),
    ],
)
def test_fits(value: Any, hint: Any, expected: bool) -> None:
    assert fits(value, hint) is expected


def test_a_table_reads_into_its_dataclass_with_defaults() -> None:
    table, rest = read_table(_chk(), ("table",), {"count": 3, "mode": "fast"}, _Table)
    assert table == _Table(count=3, mode="fast") and rest == {}
    assert table.ratio == 1.0 and table.tags == [] and table.seeds is None


def test_keys_the_table_does_not_declare_are_an_error_or_the_rest() -> None:
    with pytest.raises(BenchError, match=r"f\.toml: table\.cont: unknown key 'cont'; did you mean 'count'"):
        read_table(_chk(), ("table",), {"cont": 3}, _Table)  # not in the text: no line to name
    table, rest = read_table(_chk(), ("table",), {"count": 1, "embed_dim": 64}, _Table, rest=True)
    assert table.count == 1 and rest == {"embed_dim": 64}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"count": "3"}, r"table\.count: '3' is not valid; give an integer"),
        ({"count": 1, "mode": "quick"}, r"table\.mode: 'quick' is not valid; choose one of: fast, slow"),
        ({"count": 1, "ratio": "x"}, r"table\.ratio: 'x' is not valid; expected float"),
        ({"count": 1, "tags": ["a", 2]}, r"table\.tags: \['a', 2\] is not valid"),
        ({}, r"f\.toml:1: table: add count = 1"),
        ("not a table", r"table: must be a table"),
    ],
)
def test_a_wrong_value_names_the_key_the_line_and_the_fix(raw: Any, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        read_table(_chk(), ("table",), raw, _Table)


def _experiment(tmp_path: Path, text: str) -> Path:
    """A nano costs-only experiment with ``text`` added: top-level keys before the tables, tables after."""
    top, tables = ("", text) if text.startswith("[") else (text, "")
    path = tmp_path / "exp.toml"
    path.write_text(top + '[base]\nvariant = "nano"\n\n[profile]\nmode = "none"\nimg_size = 32\n' + tables)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[cells]]\nlabel = "a"\nrepeat = "yes"\n', "cells[0].repeat: must be true or false"),
        ('[[cells]]\nlabel = "a"\nvariant = 3\n', 'cells[0].variant: must be a preset name string such as "small"'),
        ('[[cells]]\nlabel = 7\n', "cells[0].label: label 7 is not valid"),
        ('[[cells]]\nlabel = "a"\nprofile = 3\n', "cells[0].profile: must be a table such as [profile]"),
        ('[finetune]\ndataset = "digits"\nrun = 1\n', "finetune.run: must be true or false"),
        ('[finetune]\ndataset = "digits"\njobs = 0\n', "finetune.jobs: 0 is not valid; give an integer >= 1"),
        ('[executor]\npartition = 3\n', "executor.partition"),
        ('cells = 3\n', "cells: must be an array of tables"),
        ('axes_mode = "grid"\n', "axes_mode: 'grid' is not valid; choose one of: each, product"),
        ('description = 1\n', "description: must be a string"),
    ],
)  # fmt: skip
def test_experiment_tables_are_checked_by_type(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BenchError) as info:
        load_experiment(_experiment(tmp_path, text))
    assert message in str(info.value) and "exp.toml:" in str(info.value), str(info.value)


def test_the_experiment_file_is_read_as_typed_tables(tmp_path: Path) -> None:
    path = _experiment(tmp_path, "[axes]\nnum_med_block = [0, 1]\n")
    top, _ = read_experiment_file(path)
    assert isinstance(top, ExperimentFile)
    assert top.base == {"variant": "nano"} and top.axes == {"num_med_block": [0, 1]}
    assert top.axes_mode == "each" and top.finetune is None and top.cells == []
    experiment = load_experiment(path)
    assert experiment.labels() == ["base", "num_med_block=1"]
    assert all(cell.img_size == 32 and cell.costs_only(False) for cell in experiment.cells)
