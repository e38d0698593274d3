"""Release checkpoints: key mapping between the release's flat layout and this package's stages."""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import ConformerConfig

# Top-level renames (release prefix -> internal prefix); coupled blocks are added per config.
_FIXED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("conv1.", "stem.conv."),
    ("bn1.", "stem.bn."),
    ("conv_1.", "cnn_entry."),
    ("trans_patch_conv.", "patch_embed."),
    ("trans_1.", "trans_entry."),
    ("conv_cls_head.", "conv_head."),
    ("trans_cls_head.", "trans_head."),
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def block_prefixes(cfg: ConformerConfig) -> list[tuple[str, str]]:
    """``conv_trans_<i>.`` <-> ``stages.<s>.<j>.`` for every coupled block, in order."""
    pairs = []
    release_index = 2
    for stage in range(3):
        count = cfg.blocks_per_stage - 1 if stage == 0 else cfg.blocks_per_stage
        for j in range(count):
            pairs.append((f"conv_trans_{release_index}.", f"stages.{stage}.{j}."))
            release_index += 1
    return pairs


def _prefix_table(cfg: ConformerConfig) -> list[tuple[str, str]]:
    return [*_FIXED_PREFIXES, *block_prefixes(cfg)]


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src) :]
    return key


def from_release(state_dict: Mapping[str, Tensor], cfg: ConformerConfig) -> dict[str, Tensor]:
    """Release key names -> this package's names (keys that are not the release's pass through)."""
    table = _prefix_table(cfg)
    return {_rename(k, table): v for k, v in state_dict.items()}


def to_release(state_dict: Mapping[str, Tensor], cfg: ConformerConfig) -> dict[str, Tensor]:
    """This package's names -> the release's key names (for saving checkpoints the release can load)."""
    table = [(dst, src) for src, dst in _prefix_table(cfg)]
    return {_rename(k, table): v for k, v in state_dict.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_file(path: Path) -> None:
    """A checkpoint path that is missing, a directory or not a regular file (a FIFO would block) is refused."""
    try:
        kind = path.stat().st_mode
    except OSError:
        kind = None
    if kind is None or not stat.S_ISREG(kind):
        what = (
            "does not exist"
            if kind is None
            else "is a directory"
            if stat.S_ISDIR(kind)
            else "is not a regular file"
        )
        raise CheckpointError(f"checkpoint {str(path)!r} {what}; pass the path of a release .pth file")


def _load(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``; anything that is not a torch save is one CheckpointError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # e.g. the pickle-protocol notice of a legacy file we refuse anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            # torch's message suggests weights_only=False, which runs arbitrary code: never advised.
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds Python objects besides tensors and is refused (only weights "
                "are loaded); export its state dict with torch.save(model.state_dict(), path)"
            ) from None
        detail = re.search(r"WeightsUnpickler error: *\n*\s*(.+)", str(exc))
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read ({detail.group(1).strip() if detail else _first_line(exc)}); "
            "it must be a torch .pth state dict"
        ) from None
    except Exception as exc:  # any failure to parse untrusted bytes is the same bad input
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
            "it must be a torch .pth state dict"
        ) from None


def _bad_entry(key: object, value: object) -> str | None:
    """Why one entry of a state dict cannot be loaded (None when it can)."""
    if not isinstance(key, str):
        return f"holds a key that is not a name ({type(key).__name__} {str(key)[:40]})"
    if not isinstance(value, Tensor):
        return f"holds {type(value).__name__} at {key!r}, not a tensor"
    if value.is_meta or value.layout != torch.strided or value.is_quantized or value.is_complex():
        kind = "meta" if value.is_meta else str(value.layout).removeprefix("torch.")
        return f"holds a {kind} tensor at {key!r}, not dense real weights"
    return None


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.pth`` holding a state dict or ``{"model": state_dict, ...}`` with ``weights_only=True``.

    Only a dict of dense real tensors keyed by names is a state dict: anything else is a CheckpointError.
    """
    path = Path(path)
    _check_file(path)
    obj = _load(path)
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict", "model_state"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no state dict (expected a dict of tensors or {{'model': state_dict}})"
        )
    for key, value in obj.items():
        problem = _bad_entry(key, value)
        if problem is not None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} {problem}; it must be a state dict of dense weights "
                "(torch.save(model.state_dict(), path))"
            )
    return {k.removeprefix("module."): v for k, v in obj.items()}


@dataclass
class LoadReport:
    """What a (possibly non-strict) load did."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_conflicts: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_conflicts)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        if self.shape_conflicts:
            shown = ", ".join(
                f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shape_conflicts[:limit]
            )
            more = ", ..." if len(self.shape_conflicts) > limit else ""
            parts.append(f"{len(self.shape_conflicts)} shape conflict(s): {shown}{more}")
        return "; ".join(parts) or "all keys matched"


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike[str] | Mapping[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load a release checkpoint (release key names, unchanged) into a Conformer.

    ``strict=True`` raises :class:`CheckpointError` on any missing/unexpected key or shape conflict.
    ``strict=False`` loads every key that fits and returns the report (used to fine-tune with new heads).
    """
    cfg: ConformerConfig = model.cfg  # type: ignore[assignment]
    raw = dict(path) if isinstance(path, Mapping) else read_state_dict(path)
    state = from_release(raw, cfg)
    own = model.state_dict()
    report = LoadReport(
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
        shape_conflicts=[
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in sorted(state.items())
            if k in own and v.shape != own[k].shape
        ],
    )
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint does not fit {cfg.name!r}: {report.describe()}")
    conflicts = {k for k, _, _ in report.shape_conflicts}
    fitting = {k: v for k, v in state.items() if k in own and k not in conflicts}
    model.load_state_dict(fitting, strict=False)
    return report


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], **extra: object) -> None:
    """Write ``{"model": state_dict}`` with the release's key names, atomically.

    On any failure (disk full, size limit) ``path`` is left as it was and the temporary file is removed.
    """
    cfg: ConformerConfig = model.cfg  # type: ignore[assignment]
    payload = {"model": to_release(model.state_dict(), cfg), **extra}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory first: a failed write then raises OSError with its errno
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
