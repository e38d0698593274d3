"""Where the cells of a grid run, and the scheduler settings of their jobs.

``local`` runs the cells in this command (today's behaviour); ``submitit-local`` and ``slurm`` submit each
cell as a job through submitit (see :mod:`.cluster`). The settings come from an experiment's ``[executor]``
table, overridden by command-line options; they never enter a cell's hashes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EXECUTORS = ("local", "submitit-local", "slurm")
JOB_EXECUTORS = ("submitit-local", "slurm")
DEFAULT_TIME_LIMIT_MIN = 60
# sbatch parameters submitit writes itself, and those that have a setting of their own.
SBATCH_MANAGED = ("output", "error", "array", "open-mode", "signal", "wrap", "parsable", "job-name")
SBATCH_OWN_SETTING = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "time": "time_limit",
    "cpus-per-task": "cpus_per_task",
    "gpus-per-task": "gpus_per_task",
    "mem": "mem",
    "constraint": "constraint",
}
SLURM_ONLY = ("partition", "account", "qos", "mem", "constraint", "array_parallelism", "sbatch")
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,:+@=/-]+$")
_SBATCH_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class ExecutorSettings:
    """Scheduler settings of a grid's jobs (``None``: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit_min: int = DEFAULT_TIME_LIMIT_MIN  # per job, i.e. per cell
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    mem: str | None = None  # sbatch --mem, e.g. "16G"
    constraint: str | None = None
    array_parallelism: int | None = None  # jobs of the array running at once; None: as many as fit
    max_requeues: int = 0  # timeouts a job is requeued after (a preempted job is always requeued)
    sbatch: dict[str, str | int | bool] = field(default_factory=dict)  # extra sbatch parameters

    def set_fields(self) -> list[str]:
        """Names of the settings that differ from the defaults."""
        default = ExecutorSettings()
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)]


# --- checking one setting --------------------------------------------------------------------------------


def _positive_int(value: Any, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not valid; give an integer >= 1, e.g. {example}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not valid; give an integer >= 0, e.g. 1")
    return value


def _name(value: Any, example: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{value!r} is not valid; give a Slurm name such as {example!r}")
    return value


def parse_time_limit(value: Any) -> int:
    """Minutes from an integer (minutes) or a Slurm time ``[D-]HH:MM:SS``; seconds round up."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) >= 1:
            return int(text)
        m = _TIME_RE.match(text)
        if m:
            days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
            total = days * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
            if total >= 1:
                return total
    raise ValueError(f"{value!r} is not valid; give minutes (e.g. 90) or [D-]HH:MM:SS (e.g. 1:30:00)")


def _mem(value: Any) -> str:
    text = str(value).strip().upper() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _MEM_RE.match(text) or int(text.rstrip("KMGT")) < 1:
        raise ValueError(f"{value!r} is not valid; give a size such as 16G or 4000M (sbatch --mem)")
    return text


def _sbatch(value: Any) -> dict[str, str | int | bool]:
    if not isinstance(value, Mapping):
        raise ValueError(
            "must be a table of sbatch parameters, e.g. sbatch = { exclusive = true, nice = 10 }"
        )
    out: dict[str, str | int | bool] = {}
    for key, item in value.items():
        flag = str(key).replace("_", "-")
        if not _SBATCH_KEY_RE.match(flag):
            raise ValueError(
                f"{key!r} is not an sbatch parameter name; write it without dashes, e.g. exclusive"
            )
        if flag in SBATCH_MANAGED:
            raise ValueError(f"--{flag} is set by conformer-bench for each job; remove it")
        if flag in SBATCH_OWN_SETTING:
            raise ValueError(f"--{flag} has a setting of its own: use {SBATCH_OWN_SETTING[flag]} instead")
        if item is True or (isinstance(item, (str, int)) and not isinstance(item, bool) and str(item) != ""):
            out[flag] = item
        else:
            raise ValueError(f"{key} = {item!r} is not valid; give a string, an integer, or true for a flag")
    return out


CHECKS: dict[str, Callable[[Any], Any]] = {
    "partition": lambda v: _name(v, "gpu"),
    "account": lambda v: _name(v, "my-lab"),
    "qos": lambda v: _name(v, "normal"),
    "time_limit": parse_time_limit,
    "cpus_per_task": lambda v: _positive_int(v, 4),
    "gpus_per_task": lambda v: _positive_int(v, 1),
    "mem": _mem,
    "constraint": lambda v: _name(v, "a100"),
    "array_parallelism": lambda v: _positive_int(v, 8),
    "max_requeues": _count,
    "sbatch": _sbatch,
}
TABLE_KEYS = tuple(CHECKS)


def _field_of(key: str) -> str:
    return "time_limit_min" if key == "time_limit" else key


def settings_from_table(table: Any, fail: Callable[[str | None, str], Exception]) -> ExecutorSettings:
    """The ``[executor]`` table as settings; ``fail(key, message)`` builds the error for a bad key."""
    import difflib

    if not isinstance(table, Mapping):
        raise fail(None, "must be a table: [executor] with partition, time_limit, ... (see the README)")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in CHECKS:
            close = difflib.get_close_matches(key, TABLE_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise fail(key, f"unknown key {key!r}; {hint}valid keys: {', '.join(TABLE_KEYS)}")
        try:
            values[_field_of(key)] = CHECKS[key](value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None
    return ExecutorSettings(**values)


def parse_sbatch_options(items: list[str]) -> dict[str, str | int | bool]:
    """``--sbatch KEY=VALUE`` (or ``--sbatch KEY`` for a flag) into the table form, checked."""
    table: dict[str, str | int | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key.strip():
            raise ValueError(f"--sbatch {item!r} is not valid; give KEY=VALUE, e.g. --sbatch nice=10")
        table[key.strip().lstrip("-")] = value.strip() if sep else True
    return _sbatch(table)


def with_options(settings: ExecutorSettings, options: Mapping[str, Any]) -> ExecutorSettings:
    """``settings`` with the command-line options that were given (``None`` values are left out), checked.

    ``options`` maps table keys (``time_limit``, ``cpus_per_task``, ...) to values; an invalid one raises
    ``ValueError`` naming its option.
    """
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        try:
            checked = CHECKS[key](value)
        except ValueError as exc:
            raise ValueError(f"--{key.replace('_', '-')}: {exc}") from None
        if key == "sbatch":
            checked = {**settings.sbatch, **checked}
        changes[_field_of(key)] = checked
    return dataclasses.replace(settings, **changes)
