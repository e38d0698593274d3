"""Data sources for ``conformer-bench finetune``; nothing is ever downloaded.

``digits``
    scikit-learn's bundled handwritten digits: 1,797 real 8x8 greyscale images (values 0..16), 10 classes.
    Scaled to [0, 1], resized bilinearly to the chosen size, repeated to 3 channels, normalised to [-1, 1],
    and split into train/validation stratified by class with the seed (20 % of each class for validation:
    1,438 train / 359 validation images).

``local-global``
    A generated diagnostic set whose label needs a *local* cue and a *global* cue together. The image
    (S x S, S a multiple of 16, default 32) is a 4 x 4 grid of cells over Gaussian background noise
    (std 0.35). Two patches of the same fine texture sit in two different cells:

    * local cue, the texture: a checkerboard of period 2 px, or a sparse dot lattice (one bright pixel per
      2 x 2 block). Both are scaled to zero mean and unit variance, so the cue is invisible to anything that
      averages over more than a couple of pixels; it has to be read off fine detail.
    * global cue, the arrangement: the two patches share a grid *row* (side by side) or a grid *column*
      (one above the other). Which cells are used is random, so the cue is the relation between two parts
      that may lie at opposite ends of the image; it has to be read off the whole image.

    ``label = 2 * texture + arrangement`` (4 balanced classes: checker-row, checker-column, dots-row,
    dots-column). Texture and arrangement are drawn independently, so either cue alone gives at most 50 %
    top-1; only a model that combines both reaches 100 %. The record reports, besides top-1, how often the
    predicted class has the right texture (``cue_top1.local``) and the right arrangement (``cue_top1.global``),
    which tells a model that misses fine detail from one that misses layout. (A transformer-only variant
    without a position embedding, as in the release, sees the tokens as a set and cannot tell a row from a
    column beyond what fits inside one patch; in the dual variants the CNN features bring position in.)
    Patches are (S/4 - S/16) px squares jittered inside their cell by up to S/16 px. Default sizes: 2,000
    train and 800 validation images, drawn one after the other from one generator seeded with the seed,
    so a seed fixes the whole set.

``PATH`` (ImageFolder)
    ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``; without ``val``, ``train`` is split 80/20 by class
    with the seed. Files whose extension is not an image type, and files Pillow cannot fully decode (the scan
    decodes every image, so a truncated file is caught before training), are skipped and counted, each with
    its reason. Images are read with Pillow as RGB. Training: random resized crop (area 35-100 %, aspect
    3/4-4/3) to S, random horizontal flip; validation: resize the short side to S/0.875 then centre crop S
    (the release's 256 -> 224 convention). Both bicubic, normalised with the ImageNet mean/std. Training
    augmentation draws from a generator keyed by (seed, epoch, index), so it does not depend on workers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from .errors import BenchError
from .records.finetune import FinetuneData, SkippedFile

T = TypeVar("T")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
VAL_FRACTION = 0.2
BUILTIN = ("digits", "local-global")
DEFAULT_IMG_SIZE = {"digits": 32, "local-global": 32}  # an image folder: FOLDER_IMG_SIZE
FOLDER_IMG_SIZE = 64
LOCAL_GLOBAL_SIZES = (2000, 800)  # default (train, val) images
LOCAL_GLOBAL_CLASSES = ("checker-row", "checker-column", "dots-row", "dots-column")


class TensorImages(Dataset[tuple[Tensor, int]]):
    """Images held in memory as one float tensor (N, 3, S, S) with int64 labels (N,)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        assert images.shape[0] == labels.shape[0], "one label per image"
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def set_epoch(self, epoch: int) -> None:
        """No augmentation: nothing depends on the epoch."""


@dataclass
class DataBundle:
    """A train and a validation set plus their description, the record's ``data`` section."""

    train: Dataset[Any]
    val: Dataset[Any]
    description: FinetuneData
    val_labels: Tensor | None = None  # for cue accuracies of local-global

    @property
    def num_classes(self) -> int:
        return self.description.num_classes

    @property
    def classes(self) -> list[str]:
        return self.description.classes

    @property
    def img_size(self) -> int:
        return self.description.img_size

    @property
    def cues(self) -> bool:
        """Whether the label is made of a local and a global cue (local-global), scored apart."""
        return self.description.cues is not None

    @property
    def train_size(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def val_size(self) -> int:
        return len(self.val)  # type: ignore[arg-type]


def default_img_size(source: str) -> int:
    return DEFAULT_IMG_SIZE.get(source, FOLDER_IMG_SIZE)


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): each class contributes ``round(val_fraction * n_class)`` (>= 1) to val."""
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        order = torch.randperm(len(idx), generator=gen).tolist()
        n_val = max(1, round(val_fraction * len(idx))) if len(idx) > 1 else 0
        val += [idx[j] for j in order[:n_val]]
        train += [idx[j] for j in order[n_val:]]
    # Interleave classes deterministically so a prefix (train_size/val_size) stays roughly balanced.
    perm_t = torch.randperm(len(train), generator=gen).tolist()
    perm_v = torch.randperm(len(val), generator=gen).tolist()
    return [train[i] for i in perm_t], [val[i] for i in perm_v]


def _cap(indices: list[T], size: int | None, what: str) -> list[T]:
    if size is None:
        return indices
    if size < 1:
        raise BenchError(f"{what} must be at least 1; got {size}")
    if size > len(indices):
        raise BenchError(f"{what} {size} exceeds the {len(indices)} images available; lower it")
    return indices[:size]


# --- digits ----------------------------------------------------------------------------------------------
@cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read once per process: images (1797, 8, 8) 0..16, labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float32), np.asarray(digits.target, dtype=np.int64)


def load_digits_data(img_size: int, seed: int, train_size: int | None, val_size: int | None) -> DataBundle:
    images, targets = _digits_arrays()
    raw = torch.from_numpy(images.copy()) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = torch.from_numpy(targets.copy())
    x = F.interpolate(raw[:, None], size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S) in [-1, 1]
    train_idx, val_idx = stratified_split(labels.tolist(), VAL_FRACTION, seed)
    train_idx = _cap(train_idx, train_size, "--train-size")
    val_idx = _cap(val_idx, val_size, "--val-size")
    t, v = torch.tensor(train_idx), torch.tensor(val_idx)
    return DataBundle(
        train=TensorImages(x[t], labels[t]),
        val=TensorImages(x[v], labels[v]),
        description=FinetuneData(
            source="digits",
            num_classes=10,
            classes=[str(d) for d in range(10)],
            train_size=len(train_idx),
            val_size=len(val_idx),
            img_size=img_size,
            skipped_files=0,
            origin="sklearn.datasets.load_digits (bundled, 1797 real 8x8 images)",
            preprocessing="x/16, bilinear resize, 3 channels, (x-0.5)/0.5",
            split=f"stratified by class, {VAL_FRACTION:.0%} validation, seed {seed}",
        ),
    )


# --- local-global ----------------------------------------------------------------------------------------
def _textures(patch: int) -> Tensor:
    """(2, patch, patch): checkerboard and dot lattice, each zero-mean, unit-variance."""
    yy, xx = torch.meshgrid(torch.arange(patch), torch.arange(patch), indexing="ij")
    checker = ((yy + xx) % 2).float() * 2 - 1  # +-1
    on = ((yy % 2 == 0) & (xx % 2 == 0)).float()
    dots = on * 3**0.5 + (1 - on) * (-(3**0.5) / 3)  # mean 0, variance 1 over a 2x2 block
    return torch.stack([checker, dots])


def generate_local_global(n: int, img_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` images (n, 3, S, S), labels (n,), and the (texture, arrangement) cues (n, 2)."""
    if img_size % 16:
        raise BenchError(f"local-global needs --img-size a multiple of 16 (got {img_size}); use 32 or 64")
    cell = img_size // 4
    jitter = img_size // 16
    patch = cell - jitter
    tex = _textures(patch)
    images = torch.randn(n, img_size, img_size, generator=gen) * 0.35
    texture = torch.randint(0, 2, (n,), generator=gen)
    arrangement = torch.randint(0, 2, (n,), generator=gen)  # 0: same row, 1: same column
    line = torch.randint(0, 4, (n,), generator=gen)
    # Two distinct positions along the line: first from 4, second from the 3 others.
    first = torch.randint(0, 4, (n,), generator=gen)
    second = (first + 1 + torch.randint(0, 3, (n,), generator=gen)) % 4
    offsets = torch.randint(0, jitter + 1, (n, 2, 2), generator=gen)
    for i in range(n):
        for k, pos in enumerate((int(first[i]), int(second[i]))):
            row, col = (int(line[i]), pos) if int(arrangement[i]) == 0 else (pos, int(line[i]))
            y0 = row * cell + int(offsets[i, k, 0])
            x0 = col * cell + int(offsets[i, k, 1])
            images[i, y0 : y0 + patch, x0 : x0 + patch] = tex[int(texture[i])]
    labels = 2 * texture + arrangement
    return images[:, None].expand(-1, 3, -1, -1).contiguous(), labels, torch.stack([texture, arrangement], 1)


def load_local_global(img_size: int, seed: int, train_size: int | None, val_size: int | None) -> DataBundle:
    n_train = LOCAL_GLOBAL_SIZES[0] if train_size is None else train_size
    n_val = LOCAL_GLOBAL_SIZES[1] if val_size is None else val_size
    if n_train < 1 or n_val < 1:
        raise BenchError("--train-size and --val-size must be at least 1 for local-global")
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, _ = generate_local_global(n_train, img_size, gen)
    x_val, y_val, _ = generate_local_global(n_val, img_size, gen)
    return DataBundle(
        train=TensorImages(x_train, y_train),
        val=TensorImages(x_val, y_val),
        description=FinetuneData(
            source="local-global",
            num_classes=4,
            classes=list(LOCAL_GLOBAL_CLASSES),
            train_size=n_train,
            val_size=n_val,
            img_size=img_size,
            skipped_files=0,
            origin="generated on the fly (conformer_bench.data); label = 2*texture + arrangement",
            cues={
                "local": "texture: checkerboard | dot lattice",
                "global": "patch pair: same row | same column",
            },
            split=f"train then val drawn from one generator seeded with {seed}",
        ),
        val_labels=y_val,
    )


# --- ImageFolder -----------------------------------------------------------------------------------------
@dataclass
class _Scan:
    files: list[tuple[Path, int]]
    skipped: list[SkippedFile]


def _decode_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scan_split(split_dir: Path, classes: list[str] | None) -> tuple[list[str], _Scan]:
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise BenchError(
            f"no class folders in {str(split_dir)!r}; expected {split_dir}/<class>/<image files>"
        )
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise BenchError(
                f"{str(split_dir)!r} has classes missing from train: {', '.join(extra[:5])}; "
                "give train and val the same class folders"
            )
    files: list[tuple[Path, int]] = []
    skipped: list[SkippedFile] = []
    for label, name in enumerate(classes):
        cdir = split_dir / name
        if not cdir.is_dir():
            continue
        count = 0
        for path in sorted(cdir.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
                skipped.append(SkippedFile(str(path), "not an image file extension"))
                continue
            try:
                with Image.open(path) as img:
                    img.load()  # decode the whole file: a truncated image fails here, not mid-training
            except (
                UnidentifiedImageError,
                Image.DecompressionBombError,
                OSError,
                ValueError,
                SyntaxError,
            ) as exc:
                skipped.append(SkippedFile(str(path), _decode_error(exc)))
                continue
            files.append((path, label))
            count += 1
        if count == 0:
            raise BenchError(f"class folder {str(cdir)!r} holds no readable images; add images or remove it")
    return classes, _Scan(files, skipped)


class FolderImages(Dataset[tuple[Tensor, int]]):
    """Images read with Pillow on access; random resized crop + flip when ``train``."""

    def __init__(self, files: list[tuple[Path, int]], img_size: int, train: bool, seed: int) -> None:
        self.files = files
        self.img_size = img_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.files[index]
        try:
            with Image.open(path) as raw:
                img = raw.convert("RGB")
        except (
            Image.DecompressionBombError,
            OSError,
            ValueError,
            SyntaxError,
        ) as exc:  # changed since the scan
            raise BenchError(
                f"cannot decode image {str(path)!r} ({_decode_error(exc)}); replace or remove the file"
            ) from None
        s = self.img_size
        if self.train:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            img = _random_resized_crop(img, s, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = _resize_center_crop(img, s)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (arr - self.mean) / self.std, label


def _random_resized_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.35, 1.0)
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw = round((target * ratio) ** 0.5)
        ch = round((target / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            x0 = rng.randint(0, w - cw)
            y0 = rng.randint(0, h - ch)
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    return _resize_center_crop(img, size)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    short = max(size, round(size / 0.875))
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


def load_image_folder(
    root: Path, img_size: int, seed: int, train_size: int | None, val_size: int | None
) -> DataBundle:
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise BenchError(
            f"{str(root)!r} has no 'train' folder; lay images out as {root}/train/<class>/* (and optionally val/)"
        )
    classes, train_scan = _scan_split(train_dir, None)
    if len(classes) < 2:
        raise BenchError(
            f"{str(train_dir)!r} holds one class ({classes[0] if classes else 'none'}): every prediction would "
            f"be right; add a folder per class (at least two) under {train_dir}"
        )
    val_dir = root / "val"
    skipped = list(train_scan.skipped)
    if val_dir.is_dir():
        _, val_scan = _scan_split(val_dir, classes)
        skipped += val_scan.skipped
        train_files, val_files = train_scan.files, val_scan.files
        split = "train/ and val/ folders"
        # Folder order is sorted; shuffle a fixed prefix when subsetting so classes stay mixed.
        gen = torch.Generator().manual_seed(seed)
        train_files = [train_files[i] for i in torch.randperm(len(train_files), generator=gen).tolist()]
        val_files = [val_files[i] for i in torch.randperm(len(val_files), generator=gen).tolist()]
    else:
        t_idx, v_idx = stratified_split([y for _, y in train_scan.files], VAL_FRACTION, seed)
        if not v_idx:
            raise BenchError(
                f"{str(train_dir)!r} has too few images to split off a validation set; add a val/ folder"
            )
        train_files = [train_scan.files[i] for i in t_idx]
        val_files = [train_scan.files[i] for i in v_idx]
        split = f"train/ split by class, {VAL_FRACTION:.0%} validation, seed {seed}"
    train_files = _cap(train_files, train_size, "--train-size")
    val_files = _cap(val_files, val_size, "--val-size")
    return DataBundle(
        train=FolderImages(train_files, img_size, train=True, seed=seed),
        val=FolderImages(val_files, img_size, train=False, seed=seed),
        description=FinetuneData(
            source="folder",
            num_classes=len(classes),
            classes=classes,
            train_size=len(train_files),
            val_size=len(val_files),
            img_size=img_size,
            skipped_files=len(skipped),
            path=str(root),
            split=split,
            skipped_examples=skipped[:10],
            normalisation={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            train_transform="random resized crop (area 0.35-1, aspect 3/4-4/3, bicubic), horizontal flip",
            val_transform="resize short side to S/0.875 (bicubic), centre crop S",
        ),
    )


def load_dataset(
    source: str, img_size: int | None, seed: int, train_size: int | None = None, val_size: int | None = None
) -> DataBundle:
    """Build the train/validation sets for ``digits``, ``local-global`` or an ImageFolder path."""
    size = default_img_size(source if source in BUILTIN else "folder") if img_size is None else img_size
    if size < 8:
        raise BenchError(f"--img-size {size} is too small; use 32 or more")
    if source == "digits":
        bundle = load_digits_data(size, seed, train_size, val_size)
    elif source == "local-global":
        bundle = load_local_global(size, seed, train_size, val_size)
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise BenchError(
                f"--dataset {source!r} is neither {' nor '.join(BUILTIN)} nor a folder; "
                "pass digits, local-global or an ImageFolder path"
            )
        bundle = load_image_folder(root, size, seed, train_size, val_size)
    assert bundle.description.train_size == bundle.train_size, "the description counts the training set"
    assert bundle.description.val_size == bundle.val_size, "the description counts the validation set"
    return bundle
