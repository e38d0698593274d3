"""A long-lived measuring process for one revision of the project (``conformer-bench ab``).

Started by path, not as a module: ``python -P worker.py --source TREE --reply-fd N [--cores 0,1]``, with the
revision's tree first on ``PYTHONPATH``. It imports the standard library, torch and the revision's
``conformer`` package, and nothing of ``conformer_bench``: both revisions run this one file as their harness,
each with its own model code, so only the model code differs between the two sides.

Commands arrive as JSON lines on stdin; each gets one JSON line on the reply descriptor (stdout and stderr
stay free for whatever the revision's code prints):

  {"op": "hello"}                  -> {"ok": true, "conformer": file, "torch": version, "threads": n, ...}
  {"op": "build", "cell": {...}}   -> build the cell's model, input and step; run its warm-up steps
  {"op": "turn", "steps": k}       -> {"ok": true, "wall_s": [k values], "cpu_s": [k values]}
  {"op": "count", "steps": k}      -> under callgrind: k steps with collection on, then a dump
  {"op": "pin", "cores": [2, 3]}   -> every thread of the worker moves to these cores
  {"op": "quit"}                   -> exit 0

A cell is ``{"label", "config": ConformerConfig fields, "phase": infer|train, "batch_size", "img_size",
"precision": fp32|bf16, "path": plain|optimized, "threads", "warmup", "seed"}``. A command that fails
answers ``{"ok": false, "status": "unsupported"|"failed", "reason": one line}``: unsupported when this
revision's code cannot express the cell (a config field or path it does not have), failed otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class Unsupported(Exception):
    """The revision's code cannot build what the cell asks for."""


@dataclass(frozen=True)
class Cell:
    """The cell of a build message (see above), read once; ``config`` holds the fields set away from the
    defaults."""

    config: dict[str, Any]
    phase: str
    batch_size: int
    img_size: int
    precision: str
    path: str
    threads: int
    label: str = ""
    warmup: int = 1
    seed: int = 0
    pad_bytes: int = 0

    @classmethod
    def read(cls, raw: dict[str, Any]) -> Cell:
        """A TypeError names a missing key; integers are taken as integers."""
        given: dict[str, Any] = {
            f.name: int(raw[f.name]) if f.type == "int" else raw[f.name] for f in fields(cls) if f.name in raw
        }
        return cls(**given)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:400]


class Harness:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.step: Any = None
        self.pad: Any = None
        self.cfg: Any = None  # the built cell's ConformerConfig
        self.torch: Any = None
        self.instrumented = False

    # --- commands -------------------------------------------------------------------------------------

    def hello(self, _: dict[str, Any]) -> dict[str, Any]:
        import torch

        import conformer

        self.torch = torch
        where = Path(conformer.__file__).resolve()
        if not where.is_relative_to(self.source.resolve()):
            raise RuntimeError(
                f"conformer was imported from {where}, not from the revision's tree {self.source}"
            )
        return {
            "ok": True,
            "conformer": str(where),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "pid": os.getpid(),
            "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        }

    def pin(self, message: dict[str, Any]) -> dict[str, Any]:
        cores = {int(c) for c in message["cores"]}
        for task in os.listdir("/proc/self/task"):  # the threads torch has started too
            os.sched_setaffinity(int(task), cores)
        return {"ok": True}

    def build(self, message: dict[str, Any]) -> dict[str, Any]:
        self.step = self.pad = None
        gc.collect()
        cell = Cell.read(message["cell"])
        torch = self.torch
        # Bytes held before the model is built: each build then lands at other heap addresses, so that
        # rebuilding samples another memory layout instead of keeping one layout's luck (or bad luck).
        self.pad = torch.empty(cell.pad_bytes, dtype=torch.uint8) if cell.pad_bytes > 0 else None
        torch.set_num_threads(cell.threads)
        torch.manual_seed(cell.seed)
        model = self._model(cell)
        self.step = self._step(model, cell)
        for _ in range(cell.warmup):
            self.step()
        strays = _modules_outside(self.source)
        if strays:
            raise RuntimeError(f"{strays[0]} was imported from outside the revision's tree {self.source}")
        return {"ok": True, "threads": torch.get_num_threads()}

    def turn(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.step is None:
            raise RuntimeError("no cell built")

        wall, cpu = [], []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(int(message["steps"])):
            w0, c0 = time.perf_counter(), time.process_time()
            self.step()
            c1, w1 = time.process_time(), time.perf_counter()
            wall.append(w1 - w0)
            cpu.append(c1 - c0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return {"ok": True, "wall_s": wall, "cpu_s": cpu, "page_faults": faults}

    def count(self, message: dict[str, Any]) -> dict[str, Any]:
        """Callgrind counts only between the two toggles. The run starts with instrumentation off (torch
        imports at valgrind's base cost), so it is switched on once, with one more uncounted step after."""
        if self.step is None:
            raise RuntimeError("no cell built")
        c = self.torch._C
        if not c._valgrind_supported_platform():
            raise Unsupported("this torch build has no valgrind client requests")
        if not self.instrumented:
            done = subprocess.run(
                ["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, text=True
            )
            said = (done.stdout + done.stderr).strip()
            if done.returncode != 0 or "error" in said.lower():  # it exits 0 when it finds no callgrind
                raise RuntimeError(f"callgrind_control could not switch instrumentation on: {said[:200]}")
            self.instrumented = True
        self.step()
        gc.collect()
        gc.disable()  # a collection inside the counted steps would land in one process and not the other
        try:
            c._valgrind_toggle()
            for _ in range(int(message["steps"])):
                self.step()
            c._valgrind_toggle_and_dump_stats()
        finally:
            gc.enable()
        return {"ok": True}

    # --- the measured step ----------------------------------------------------------------------------

    def _model(self, cell: Cell) -> Any:
        import conformer

        given: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in cell.config.items()
        }  # fcu_stages
        known = set(getattr(conformer.ConformerConfig, "__dataclass_fields__", {}))
        extra = sorted(k for k in given if k not in known)
        if extra:
            raise Unsupported(f"this revision's ConformerConfig has no field {', '.join(extra)}")
        try:
            self.cfg = conformer.ConformerConfig(**given)
        except (TypeError, ValueError) as exc:
            raise Unsupported(f"this revision rejects the config: {_line(exc)}") from None
        return conformer.create_model(self.cfg)

    def _step(self, model: Any, cell: Cell) -> Any:
        torch = self.torch
        size = cell.img_size
        generator = torch.Generator().manual_seed(cell.seed)
        x = torch.randn(cell.batch_size, getattr(self.cfg, "in_chans", 3), size, size, generator=generator)
        dtype = {"fp32": None, "bf16": torch.bfloat16}.get(cell.precision, "?")
        if dtype == "?":
            raise Unsupported(f"precision {cell.precision!r} is not measured by the A/B (fp32 or bf16)")
        if cell.phase == "train":
            return self._train_step(model, x, cell, dtype)
        model.eval()
        runner, autocast_dtype = self._runner(model, cell.path, dtype)
        if cell.path != "plain":
            x = x.contiguous(memory_format=torch.channels_last)

        def infer() -> None:
            with torch.inference_mode(), _autocast(torch, autocast_dtype):
                runner(x)

        return infer

    def _runner(self, model: Any, path: str, dtype: Any) -> tuple[Any, Any]:
        """The module timed and the autocast dtype around it (a bf16 optimized copy casts by itself)."""
        if path == "plain":
            return model, dtype
        if path != "optimized":
            raise Unsupported(f"path {path!r} is not measured by the A/B (plain or optimized)")
        import conformer

        optimize = getattr(conformer, "optimize_for_inference", None)
        if optimize is None:
            raise Unsupported("this revision has no optimize_for_inference")

        bf16 = dtype is self.torch.bfloat16
        options = {
            "dtype": dtype if bf16 else None, "channels_last": True, "fold_bn": True, "compile": False,
            "fuse_pointwise": True,
        }  # fmt: skip
        try:
            inspect.signature(optimize).bind(model, **options)
        except TypeError as exc:
            raise Unsupported(f"this revision's optimize_for_inference takes other options: {exc}") from None
        return optimize(model, **options), None if bf16 else dtype

    def _train_step(self, model: Any, x: Any, cell: Cell, dtype: Any) -> Any:
        torch = self.torch
        import torch.nn.functional as F

        if cell.path != "plain":
            raise Unsupported("training is measured on the plain path only")
        model.train()
        classes = int(getattr(self.cfg, "num_classes", 1000)) or 1
        generator = torch.Generator().manual_seed(cell.seed + 1)
        y = torch.randint(0, classes, (x.shape[0],), generator=generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)

        def train() -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(torch, dtype):
                heads = _logits(model(x))
            losses = [F.cross_entropy(h.float(), y) for h in heads]
            loss = losses[0]
            for more in losses[1:]:
                loss = loss + more
            (loss / len(losses)).backward()
            optimizer.step()

        return train


def _modules_outside(source: Path) -> list[str]:
    """The project's modules this process loaded from anywhere but the revision's tree."""
    root = source.resolve()
    strays = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in ("conformer", "conformer_bench"):
            continue
        where = getattr(module, "__file__", None)
        if where and not Path(where).resolve().is_relative_to(root):
            strays.append(name)
    return sorted(strays)


def _forget_editable_installs() -> None:
    """An editable install of the project adds import hooks that map its packages to the developer's
    checkout; a module the revision lacks would quietly come from there. Drop them."""
    sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
    sys.path_importer_cache.clear()


def _editable(hook: Any) -> bool:
    owner = getattr(hook, "__module__", "") or getattr(type(hook), "__module__", "")
    return "__editable__" in owner or "__editable__" in getattr(hook, "__qualname__", "")


def _autocast(torch: Any, dtype: Any) -> Any:

    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def _logits(out: Any) -> list[Any]:
    """The logit tensors a training step's loss is taken over (each present head)."""
    heads = [getattr(out, name, None) for name in ("conv_logits", "trans_logits")]
    heads = [h for h in heads if h is not None]
    if heads:
        return heads
    if isinstance(out, (list, tuple)):
        return [h for h in out if h is not None]
    return [out]


def serve(harness: Harness, reply: Any) -> int:
    handlers = {
        "hello": harness.hello, "build": harness.build, "turn": harness.turn, "count": harness.count,
        "pin": harness.pin,
    }  # fmt: skip
    for raw in sys.stdin:
        if not raw.strip():
            continue
        message = json.loads(raw)
        op = message.get("op")
        if op == "quit":
            return 0
        try:
            answer = handlers[op](message)
        except Unsupported as exc:
            answer = {"ok": False, "status": "unsupported", "reason": str(exc)[:400]}
        except Exception as exc:  # the cell failed; the worker lives on for the next cell
            answer = {"ok": False, "status": "failed", "reason": _line(exc)}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--cores", default="")
    args = parser.parse_args(argv)
    _forget_editable_installs()
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})  # before torch starts its threads
    with os.fdopen(args.reply_fd, "w", encoding="utf-8") as reply:
        return serve(Harness(args.source), reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
