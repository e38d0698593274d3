"""What each CPU kernel choice of the optimized path gains, interleaved in one process, and where the time goes.

    python scripts/kernel_steps.py [--variant tiny] [--batch 8] [--rounds 7] [--precision fp32|bf16] [--out FILE]

Times the plain model (fp32) and the optimized copy under fixed kernel choices and under the measured ones
(``KernelChoices()``), one forward per variant per round, order rotated; prints each one's median images/s, its
ratio to plain fp32, its logits error against plain fp32, and the top self-time ops (``torch.profiler``,
five forwards) of the fixed-rule path and of the measured one. Writes the same as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from conformer import create_model
from conformer.optimize import KernelChoices, describe_kernels, optimize_for_inference
from conformer_bench.files import atomic_write_text


def choices_to_time(dtype: torch.dtype) -> dict[str, KernelChoices]:
    """The fixed rules, each kernel flipped from them, and the measured choices."""
    rules = KernelChoices.rules("cpu", dtype)
    flips = {
        "attention": "bmm" if rules.attention == "sdpa" else "sdpa",
        "conv": "aten",
        "linear": "onednn" if rules.linear == "mkl" else "mkl",
    }
    out = {"rules": rules}
    for kind, other in flips.items():
        if kind == "linear" and dtype != torch.float32:
            continue  # bf16 linears are oneDNN's only
        out[f"rules, {kind}={other}"] = KernelChoices(**{**rules.__dict__, kind: other})
    out["measured"] = KernelChoices()
    return out


def top_ops(model: Any, x: torch.Tensor, n: int = 12) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_forward": e.count / 5}
        for e in events[:n]
    ]


def max_rel(out: Any, ref: Any) -> float:
    return max(
        float((a - b).abs().max() / b.abs().max()) for a, b in zip(out, ref, strict=True) if b is not None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    plain = create_model(args.variant).eval()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    runs: dict[str, Any] = {"plain fp32": plain}
    for name, choices in choices_to_time(dtype).items():
        runs[f"{name} ({args.precision})"] = optimize_for_inference(plain, dtype=dtype, kernels=choices)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        ref = plain(x)
        errors = {name: max_rel(run(x), ref) for name, run in runs.items()}  # first calls: packing, tuning
        for run in runs.values():
            run(x)
        names = list(runs)
        for r in range(args.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                runs[name](x)
                seconds[name].append(time.perf_counter() - t0)
        rules_name, measured_name = (f"{n} ({args.precision})" for n in ("rules", "measured"))
        profiles = {name: top_ops(runs[name], x) for name in (rules_name, measured_name)}
    plain_s = statistics.median(seconds["plain fp32"])
    rows = {
        name: {
            "img_per_s": args.batch / statistics.median(s),
            "vs_plain_fp32": plain_s / statistics.median(s),
            "max_rel_err_vs_plain_fp32": errors[name],
            "kernels": describe_kernels(runs[name]),
        }
        for name, s in seconds.items()
    }
    print(f"{args.variant} b{args.batch} {args.img_size}² {args.precision}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    for name, row in rows.items():
        print(f"  {name:<32} {row['img_per_s']:7.2f} img/s  {row['vs_plain_fp32']:.2f}x  "
              f"err {row['max_rel_err_vs_plain_fp32']:.1e}  {row['kernels'] or ''}")  # fmt: skip
    for name, ops in profiles.items():
        print(f"top self-time ops, {name}:")
        for op in ops:
            print(f"  {100 * op['share']:5.1f} %  {op['calls_per_forward']:6.1f}/fwd  {op['op']}")
    if args.out:
        record = {
            "settings": vars(args),
            "threads": torch.get_num_threads(),
            "runs": rows,
            "profiles": profiles,
        }
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
