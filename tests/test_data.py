"""Data sources of ``finetune``: digits, the generated local-global set, ImageFolder layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conformer_bench.data import _textures, generate_local_global, load_dataset, stratified_split
from conformer_bench.errors import BenchError


def test_digits_split_is_stratified_and_seeded() -> None:
    a = load_dataset("digits", None, seed=0)
    b = load_dataset("digits", None, seed=0)
    c = load_dataset("digits", None, seed=1)
    assert a.img_size == 32 and a.num_classes == 10
    assert a.train.images.shape == (1438, 3, 32, 32) and a.val.images.shape == (359, 3, 32, 32)
    assert a.train_size + a.val_size == 1797
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.val.images, c.val.images)
    # Every class gets about 20 % of its images in validation.
    counts = Counter(a.val.labels.tolist())
    assert set(counts) == set(range(10)) and all(33 <= n <= 38 for n in counts.values())
    assert a.val.images.min() >= -1 and a.val.images.max() <= 1
    assert a.description.skipped_files == 0 and a.description.val_size == 359


def test_digits_resize_and_caps() -> None:
    d = load_dataset("digits", 64, seed=0, train_size=100, val_size=20)
    assert d.train.images.shape == (100, 3, 64, 64) and d.val_size == 20
    assert torch.equal(d.train.images[:, 0], d.train.images[:, 2])  # grey repeated to 3 channels
    with pytest.raises(BenchError, match="exceeds"):
        load_dataset("digits", None, seed=0, train_size=5000)


def test_stratified_split_disjoint_and_complete() -> None:
    labels = [i % 3 for i in range(30)]
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(30))
    assert Counter(labels[i] for i in val) == {0: 2, 1: 2, 2: 2}


def test_local_global_labels_follow_both_cues() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y, cues = generate_local_global(400, 32, gen)
    assert x.shape == (400, 3, 32, 32)
    assert torch.equal(y, 2 * cues[:, 0] + cues[:, 1])
    assert Counter(y.tolist()).keys() == {0, 1, 2, 3}
    # Either cue alone is independent of the other: all four combinations occur about equally often.
    assert min(Counter(y.tolist()).values()) > 70
    tex = _textures(6)
    assert torch.allclose(tex.mean((1, 2)), torch.zeros(2), atol=1e-6)
    assert torch.allclose(tex.var((1, 2), unbiased=False), torch.ones(2), atol=1e-5)
    # Recover the arrangement from the image: the two textured cells share a row or a column.
    for i in range(20):
        img = x[i, 0]
        energy = (img - img.mean()).abs().reshape(4, 8, 4, 8).mean((1, 3))  # per 8x8 cell
        cells = torch.topk(energy.flatten(), 2).indices
        rows, cols = (cells // 4).tolist(), (cells % 4).tolist()
        assert (rows[0] == rows[1]) == (cues[i, 1] == 0)
        assert (cols[0] == cols[1]) == (cues[i, 1] == 1)


def test_local_global_deterministic_for_seed() -> None:
    a = load_dataset("local-global", 32, seed=5, train_size=50, val_size=20)
    b = load_dataset("local-global", 32, seed=5, train_size=50, val_size=20)
    c = load_dataset("local-global", 32, seed=6, train_size=50, val_size=20)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.num_classes == 4 and a.description.cues["local"].startswith("texture")
    with pytest.raises(BenchError, match="multiple of 16"):
        load_dataset("local-global", 40, seed=0)


def _write_images(
    folder: Path, n: int, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.clip(rng.normal(color, 20, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")


def test_image_folder_with_val_and_stray_files(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2)):
        _write_images(tmp_path / split / "cat", n, (200, 50, 50))
        _write_images(tmp_path / split / "dog", n, (50, 50, 200))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png either")
    d = load_dataset(str(tmp_path), 32, seed=0)
    assert d.classes == ["cat", "dog"] and d.num_classes == 2
    assert d.train_size == 12 and d.val_size == 4
    assert d.description.skipped_files == 2
    assert d.description.split == "train/ and val/ folders"
    x, y = d.val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1)
    # Validation is deterministic; training augmentation depends on (seed, epoch, index) only.
    assert torch.equal(d.val[1][0], d.val[1][0])
    assert torch.equal(d.train[3][0], d.train[3][0])
    first = d.train[3][0]
    d.train.set_epoch(1)
    assert not torch.equal(first, d.train[3][0])
    # ImageNet normalisation: a red image has a high red channel.
    red = next(d.val[i][0] for i in range(d.val_size) if d.val[i][1] == 0)
    assert red[0].mean() > 1 > red[2].mean()


def test_truncated_image_is_skipped_with_its_reason(tmp_path: Path) -> None:
    for name, color in (("a", (20, 20, 20)), ("b", (230, 230, 230))):
        _write_images(tmp_path / "train" / name, 5, color, size=(64, 64))
    whole = (tmp_path / "train" / "a" / "img0.png").read_bytes()
    truncated = tmp_path / "train" / "a" / "cut.png"
    truncated.write_bytes(whole[: len(whole) // 2])  # a valid header, half the pixel data
    d = load_dataset(str(tmp_path), 32, seed=0)
    assert d.description.skipped_files == 1
    (entry,) = d.description.skipped_examples
    assert entry.path == str(truncated) and "truncated" in entry.reason.lower()
    assert truncated not in [p for p, _ in d.train.files + d.val.files]


def test_image_damaged_after_the_scan_is_a_bench_error(tmp_path: Path) -> None:
    for name, color in (("a", (20, 20, 20)), ("b", (230, 230, 230))):
        _write_images(tmp_path / "train" / name, 5, color, size=(64, 64))
    d = load_dataset(str(tmp_path), 32, seed=0)
    path, _ = d.train.files[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchError, match="cannot decode image") as info:
        d.train[0]
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_image_folder_without_val_splits_train(tmp_path: Path) -> None:
    _write_images(tmp_path / "train" / "a", 10, (10, 10, 10))
    _write_images(tmp_path / "train" / "b", 10, (240, 240, 240))
    d = load_dataset(str(tmp_path), 32, seed=0)
    assert d.train_size == 16 and d.val_size == 4
    assert "split by class" in d.description.split


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="neither"):
        load_dataset(str(tmp_path / "missing"), 32, seed=0)
    with pytest.raises(BenchError, match="no 'train' folder"):
        load_dataset(str(tmp_path), 32, seed=0)
    (tmp_path / "train").mkdir()
    with pytest.raises(BenchError, match="no class folders"):
        load_dataset(str(tmp_path), 32, seed=0)
    _write_images(tmp_path / "train" / "a", 3, (0, 0, 0))
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "readme.md").write_text("x")
    with pytest.raises(BenchError, match="holds no readable images"):
        load_dataset(str(tmp_path), 32, seed=0)
