"""Command line of the GPU check (``scripts/gpu_check.py``, ``make gpu-check``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ..env import cpu_model
from ..errors import BenchError
from .plan import gpu_plan, rehearsal_plan
from .run import ROOT, Runner, gpu_name_slug, prepare_output, run_check, write_summary

NO_CUDA = (
    "error: no CUDA GPU is visible to torch {version} ({build}); the GPU check needs one. "
    'On a GPU machine install a CUDA build: make install TORCH_SPEC="torch --index-url '
    'https://download.pytorch.org/whl/cu128"'
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="Run every CUDA path of conformer-bench once, check what must hold on a GPU, write records "
        "and a summary table under results/gpu/<gpu-name>/. Exit 0: every check passed; 1: a check failed; "
        "2: no CUDA GPU or bad input.",
    )
    parser.add_argument("--output-dir", type=Path, help="Records folder (default: results/gpu/<gpu-name>).")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="Wall-clock budget in seconds (default 285 on a GPU); late steps are skipped.",
    )
    parser.add_argument(
        "--checks-only",
        type=Path,
        metavar="DIR",
        help="Re-run the checks and the summary on a folder's records.",
    )
    parser.add_argument("--rehearse-on-cpu", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.checks_only is not None:
        if not (args.checks_only / "environment.json").is_file():
            raise BenchError(
                f"{args.checks_only} holds no GPU-check records; pass a folder written by the check"
            )
        return write_summary(Runner(rehearsal_plan(), args.checks_only), args.checks_only, keep_console=True)

    import torch

    if not args.rehearse_on_cpu and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(NO_CUDA.format(version=torch.__version__, build=build), file=sys.stderr)
        return 2
    if args.budget_s is not None and args.budget_s < 60:
        raise BenchError(f"--budget-s {args.budget_s:g} is too short for any step; use 60 or more")
    _check_imports()
    budget = {"budget_s": args.budget_s} if args.budget_s is not None else {}
    if args.rehearse_on_cpu:
        plan = rehearsal_plan(**budget)
        default_dir = ROOT / "runs" / "gpu-rehearsal" / gpu_name_slug(cpu_model())
    else:
        plan = gpu_plan(**budget)
        default_dir = ROOT / "results" / "gpu" / gpu_name_slug(torch.cuda.get_device_name(0))
    return run_check(plan, prepare_output(args.output_dir or default_dir))


# What the steps import; a missing one would fail every profile, so it stops the check before it starts.
REQUIRED_MODULES = (
    "fvcore.nn",
    "pynvml",
    "typer",
    "rich",
    "pandas",
    "sklearn",
    "matplotlib",
    "scipy",
    "psutil",
    "PIL",
)


def _check_imports() -> None:
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or name
            raise BenchError(
                f"cannot import {name} (missing module {missing!r}); install it or put its wheel on PYTHONPATH"
            ) from None
