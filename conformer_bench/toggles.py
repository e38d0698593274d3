"""Variant selection shared by every command: a preset name plus toggle options -> a ConformerConfig."""

from __future__ import annotations

from typing import Any

from conformer import get_config
from conformer.config import ConformerConfig

from .errors import BenchError


def parse_stages(text: str | None) -> tuple[int, ...] | None:
    """``"1,3"`` -> ``(1, 3)``; ``"none"`` or ``""`` -> ``()``."""
    if text is None:
        return None
    text = text.strip().lower()
    if not text:
        raise BenchError("--fcu-stages is empty; give stage numbers such as 1,2,3, or 'none' for no FCU")
    if text == "none":
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BenchError(
            f"--fcu-stages {text!r} is not valid; give stage numbers such as 1,2,3 or 'none'"
        ) from None


def build_config(
    variant: str,
    *,
    branches: str | None = None,
    coupling: str | None = None,
    no_fcu: bool = False,
    cnn_only: bool = False,
    transformer_only: bool = False,
    num_med_block: int | None = None,
    fcu_down: str | None = None,
    fcu_up: str | None = None,
    fcu_stages: str | None = None,
    pos_embed: bool | None = None,
    heads: str | None = None,
    fused_attn: bool | None = None,
    num_classes: int | None = None,
    drop_path_rate: float | None = None,
    **more: Any,
) -> Any:
    """Resolve CLI toggles into a validated config; every invalid input becomes a :class:`BenchError`."""
    overrides: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    if cnn_only and transformer_only:
        raise BenchError("--cnn-only and --transformer-only exclude each other; pick one")
    shortcut = "cnn" if cnn_only else "transformer" if transformer_only else None
    if shortcut and branches and branches != shortcut:
        raise BenchError(f"--branches {branches} contradicts --{shortcut}-only; pick one")
    if no_fcu and coupling and coupling != "none":
        raise BenchError(f"--coupling {coupling} contradicts --no-fcu; pick one")
    for key, value in (
        ("branches", shortcut or branches),
        ("coupling", "none" if no_fcu else coupling),
        ("num_med_block", num_med_block),
        ("fcu_down", fcu_down),
        ("fcu_up", fcu_up),
        ("fcu_stages", parse_stages(fcu_stages)),
        ("pos_embed", pos_embed),
        ("heads", heads),
        ("fused_attn", fused_attn),
        ("num_classes", num_classes),
        ("drop_path_rate", drop_path_rate),
    ):
        if value is not None:
            overrides[key] = value
    try:
        cfg = get_config(variant, **overrides)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    _refuse_no_ops(cfg, fcu_down=fcu_down, fcu_up=fcu_up, fcu_stages=fcu_stages)
    return cfg


def _refuse_no_ops(
    cfg: ConformerConfig, *, fcu_down: str | None, fcu_up: str | None, fcu_stages: str | None
) -> None:
    """An FCU option given where no FCU of its kind is built changes nothing: say so instead of measuring."""
    stages = (1, 2, 3)
    down = any(cfg.couples_down(s) for s in stages)
    up = any(cfg.couples_up(s) for s in stages)
    where = f"coupling {cfg.coupling}, FCU stages {','.join(map(str, cfg.fcu_stages)) or 'none'}"
    if fcu_down is not None and not down:
        raise BenchError(
            f"--fcu-down {fcu_down} changes nothing: this variant has no CNN->tokens FCU ({where}); "
            "drop --fcu-down or use --coupling both or down"
        )
    if fcu_up is not None and not up:
        raise BenchError(
            f"--fcu-up {fcu_up} changes nothing: this variant has no tokens->CNN FCU ({where}); "
            "drop --fcu-up or use --coupling both or up"
        )
    if fcu_stages is not None and cfg.fcu_stages and cfg.coupling == "none":
        raise BenchError(
            f"--fcu-stages {fcu_stages} changes nothing with --coupling none (no FCU is built); drop one of them"
        )
