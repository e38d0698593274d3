"""``torchrun --nproc_per_node=2 -m conformer_bench finetune``: DDP over gloo on CPU, one record from rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import conformer
from conformer_bench import distributed
from conformer_bench.data import load_dataset
from conformer_bench.finetune import evaluate

ROOT = Path(__file__).resolve().parent.parent


def test_single_process_context_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.init_from_env("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.backend is None
    assert distributed.shard_indices(5, ctx) == [0, 1, 2, 3, 4]
    ranks = [distributed.DistContext(rank=r, world_size=2) for r in (0, 1)]
    assert sorted(distributed.shard_indices(5, ranks[0]) + distributed.shard_indices(5, ranks[1])) == list(
        range(5)
    )


def test_epoch_shuffle_seeds_are_not_shared_across_seed_and_epoch() -> None:
    """Seed s at epoch e + 1 must not replay seed s + 1 at epoch e (as seed + epoch would)."""

    def order(seed: int, epoch: int) -> list[int]:
        sampler = distributed.EpochShuffle(50, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) != order(1, 0) and order(3, 2) != order(4, 1)
    assert order(0, 1) == order(0, 1) and sorted(order(7, 3)) == list(range(50))
    assert order(0, 0) != order(0, 1)


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    weights = tmp_path / "ddp.pth"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # 21 validation images: not divisible by 2, so padding would show up as 22 evaluated images.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "conformer_bench",
        "finetune",
        "--variant",
        "nano",
        "--device",
        "cpu",
        "--steps",
        "6",
        "--batch-size",
        "16",
        "--train-size",
        "160",
        "--val-size",
        "21",
        "--format",
        "json",
        "--no-progress",
        "--output",
        str(out),
        "--save",
        str(weights),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert json.loads(proc.stdout) == record  # exactly one rank printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.json", "ddp.pth"]  # and only it wrote

    assert record["status"] == "ok"
    assert record["environment"]["world_size"] == 2 and record["environment"]["dist_backend"] == "gloo"
    hyper = record["hyper"]
    assert hyper["distributed"] == {"world_size": 2, "backend": "gloo", "sampler": "DistributedSampler"}
    # 160 images over 2 ranks = 80 per rank = 5 steps of 16 per epoch; global batch 32.
    assert (hyper["steps_per_epoch"], hyper["epochs"], hyper["global_batch_size"]) == (5, 2, 32)
    assert record["final"]["val_count"] == 21

    # The reduced metrics equal a single-process evaluation of the saved (rank 0) weights.
    model = conformer.create_model("nano")
    conformer.load_checkpoint(model, weights, strict=True)
    data = load_dataset("digits", 32, seed=0, train_size=160, val_size=21)
    single = evaluate(
        model,
        data.val,
        distributed.DistContext(),
        device="cpu",
        batch_size=16,
        precision="fp32",
        channels_last=False,
        num_classes=10,
    )
    assert single.count == 21
    assert single.top1 == record["final"]["top1"] and single.top5 == record["final"]["top5"]
    assert single.val_loss == pytest.approx(record["final"]["val_loss"], rel=1e-5)
