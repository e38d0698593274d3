"""Kernel choices made by measurement at first use, cached per CPU fingerprint.

Which kernel is fastest for an op depends on the CPU, not on its vendor's name: on a Zen 4 EPYC (AVX512-BF16,
no AMX) the explicit matmul-softmax beat ``scaled_dot_product_attention`` in bf16 at ViT-Ti shapes while on
Xeons with AMX SDPA won, and oneDNN's fp32 GEMM beat MKL's on the EPYC while MKL won on a Xeon. So the
optimised modules (``conformer.optimize``) offer their candidate kernels for each shape they meet to a
:class:`KernelTuner`, which times them on synthetic inputs of that shape (a few interleaved calls each, wall
clock; each candidate's fastest call counts, since load on a shared host only adds time), keeps the fastest, and stores the decision in a JSON file per CPU fingerprint (CPU model, ISA flags,
logical CPUs, torch and oneDNN versions, kernel-selection overrides) keyed by op, shape, dtype and threads.
A later process on the same kind of CPU reads the decision instead of measuring again; another CPU, torch
build or thread count measures afresh.

The file lives in ``~/.cache/conformer-bench/kernel-choices`` (``CONFORMER_BENCH_CACHE=<folder>`` ->
``<folder>/kernel-choices``; ``=off`` keeps decisions in memory for the process only) and is written
atomically under a lock, so concurrent processes lose nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "Decision",
    "KernelTuner",
    "cpu_fingerprint",
    "default_tuner",
    "fingerprint_id",
    "using_tuner",
]

CACHE_ENV = "CONFORMER_BENCH_CACHE"  # shared with conformer-bench's other caches; "off" disables the files
SCHEMA = 2  # 2: a candidate's time is its fastest call (1: the median, which one preemption could swing)
# ISA flags that change which kernels oneDNN / MKL / ATen pick.
ISA_FLAGS: tuple[str, ...] = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
)  # fmt: skip
# Environment variables that override the libraries' kernel selection.
KERNEL_OVERRIDES: tuple[str, ...] = (
    "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
)  # fmt: skip

Thunk = Callable[[], Any]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """Which candidate ``kind`` uses at ``key``, and the evidence: each candidate's fastest call, in seconds.

    ``source``: ``measured`` (timed now), ``cached`` (read from the fingerprint's file or memory),
    ``only`` (one candidate runs here, nothing to choose).
    """

    kind: str
    key: str
    chosen: str
    seconds: dict[str, float] = field(default_factory=dict)
    source: str = "measured"
    rounds: int = 0
    measured_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            kind=str(data["kind"]),
            key=str(data["key"]),
            chosen=str(data["chosen"]),
            seconds={str(k): float(v) for k, v in dict(data.get("seconds", {})).items()},
            source=str(data.get("source", "measured")),
            rounds=int(data.get("rounds", 0)),
            measured_at=data.get("measured_at"),
        )

    def describe(self) -> str:
        """``attention bf16 b8 ... -> matmul (measured: matmul 5.8 ms, sdpa 9.2 ms)``."""
        times = ", ".join(
            f"{name} {1e3 * s:.3g} ms" for name, s in sorted(self.seconds.items(), key=_by_value)
        )
        return f"{self.kind} {self.key} -> {self.chosen} ({self.source}{': ' + times if times else ''})"


def _by_value(item: tuple[str, float]) -> float:
    return item[1]


@cache
def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _onednn_version() -> str | None:
    import torch

    found = re.search(r"MKL-DNN v([0-9][\w.]*)", torch.__config__.show())
    return found.group(1) if found else None


def cpu_fingerprint() -> dict[str, Any]:
    """What decides which CPU kernel is fastest: CPU model, ISA flags, CPUs, library versions, overrides."""
    import torch

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
        "logical_cpus": os.cpu_count(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "onednn": _onednn_version(),
        "overrides": {k: os.environ[k] for k in KERNEL_OVERRIDES if k in os.environ},
    }


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """A short stable name for a fingerprint (the cache file's name)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path | None:
    """``<CONFORMER_BENCH_CACHE>/kernel-choices``, else ``~/.cache/conformer-bench/kernel-choices``; ``None``
    when the cache is off."""
    root = os.environ.get(CACHE_ENV)
    if root is not None and root.strip().lower() == "off":
        return None
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "conformer-bench"
    return base / "kernel-choices"


class KernelTuner:
    """Times candidate kernels once per (kind, key, threads) on this CPU and remembers the fastest.

    ``fingerprint`` (default: :func:`cpu_fingerprint`), ``cache_dir`` (default: :func:`default_cache_dir`;
    ``None`` keeps decisions in memory) and ``clock`` can be replaced, which is how tests stand in for CPUs
    that are not there. Each candidate is called once to warm up (a candidate that raises is dropped), then
    all are called in ``rounds`` interleaved rounds (order rotated), stopping after ``budget_s`` once three
    rounds are in; the candidate with the fastest call wins (the minimum: on a shared, loaded host
    preemption only adds time, and one preempted call in three swings a median).
    """

    def __init__(
        self,
        *,
        fingerprint: Mapping[str, Any] | None = None,
        cache_dir: Path | str | None = "default",
        clock: Clock = time.perf_counter,
        rounds: int = 7,
        budget_s: float = 1.0,
        threads: Callable[[], int] | None = None,
    ) -> None:
        self.fingerprint = dict(fingerprint) if fingerprint is not None else cpu_fingerprint()
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.cache_dir = (
            default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        )
        self.clock = clock
        self.rounds = rounds
        self.budget_s = budget_s
        self._threads = threads
        self._memory: dict[str, Decision] | None = None
        self.measured = 0  # decisions timed by this tuner (not read from a cache)

    def __deepcopy__(self, memo: dict[int, Any]) -> KernelTuner:  # models copied with their tuner share it
        return self

    @property
    def cache_file(self) -> Path | None:
        return self.cache_dir / f"{self.fingerprint_id}.json" if self.cache_dir else None

    def threads(self) -> int:
        if self._threads is not None:
            return self._threads()
        import torch

        return torch.get_num_threads()

    def choose(self, kind: str, key: str, candidates: Mapping[str, Thunk]) -> Decision:
        """The decision for ``kind`` at ``key`` (``threads=<n>`` is added): from memory, the cache file,
        or by timing ``candidates`` (name -> a call that runs that kernel on inputs of the key's shape)."""
        if not candidates:
            raise ValueError(f"{kind}: no candidate kernels to choose from")
        full_key = f"{key} threads={self.threads()}"
        if len(candidates) == 1:
            return Decision(kind, full_key, next(iter(candidates)), source="only")
        slot = f"{kind}|{full_key}"
        known = self._decisions().get(slot)
        if known is not None and known.chosen in candidates:
            return Decision(**{**known.to_dict(), "source": "cached"})
        decision = self._measure(kind, full_key, candidates)
        self.measured += 1
        self._decisions()[slot] = decision
        self._store(slot, decision)
        return decision

    def decisions(self) -> list[Decision]:
        """Every decision this tuner knows (measured here or read from its cache file)."""
        return list(self._decisions().values())

    # --- measuring ---------------------------------------------------------------------------------------
    def _measure(self, kind: str, key: str, candidates: Mapping[str, Thunk]) -> Decision:
        live: dict[str, Thunk] = {}
        errors: dict[str, str] = {}
        for name, thunk in candidates.items():
            try:
                thunk()
            except Exception as exc:  # a kernel this build or shape cannot run is not a candidate
                errors[name] = f"{type(exc).__name__}: {exc}"
            else:
                live[name] = thunk
        if not live:
            raise RuntimeError(f"{kind} {key}: every candidate failed ({errors})")
        names = list(live)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        started = self.clock()
        rounds = 0
        for r in range(self.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t0 = self.clock()
                live[name]()
                seconds[name].append(self.clock() - t0)
            rounds += 1
            if rounds >= 3 and self.clock() - started > self.budget_s:
                break
        fastest = {name: min(s) for name, s in seconds.items()}
        chosen = min(names, key=lambda name: fastest[name])  # first listed wins a tie
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return Decision(kind, key, chosen, fastest, "measured", rounds, now)

    # --- the cache file ----------------------------------------------------------------------------------
    def _decisions(self) -> dict[str, Decision]:
        if self._memory is None:
            self._memory = self._read()
        return self._memory

    def _read(self) -> dict[str, Decision]:
        path = self.cache_file
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != SCHEMA or data.get("fingerprint") != self.fingerprint:
                return {}  # another layout or a hash collision: measure afresh, the write replaces it
            return {slot: Decision.from_dict(d) for slot, d in data["decisions"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # a corrupt or partial file is measured over and rewritten whole

    def _store(self, slot: str, decision: Decision) -> None:
        path = self.cache_file
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path.with_suffix(".lock")):
                merged = self._read()
                merged[slot] = decision
                payload = {
                    "schema": SCHEMA,
                    "fingerprint": self.fingerprint,
                    "decisions": {s: d.to_dict() for s, d in sorted(merged.items())},
                }
                _write_atomically(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # an unwritable cache costs a measurement next time, never a failed forward


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DEFAULT: list[KernelTuner] = []


def default_tuner() -> KernelTuner:
    """The process's tuner (created on first use, reading this CPU's cache file)."""
    if not _DEFAULT:
        _DEFAULT.append(KernelTuner())
    return _DEFAULT[-1]


@contextlib.contextmanager
def using_tuner(tuner: KernelTuner) -> Iterator[KernelTuner]:
    """Make ``tuner`` the default within the block (e.g. a stand-in CPU in a test)."""
    _DEFAULT.append(tuner)
    try:
        yield tuner
    finally:
        _DEFAULT.remove(tuner)
