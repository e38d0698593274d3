"""Named presets: the four released Conformers and small variants for fast tests (no torch needed)."""

from __future__ import annotations

import difflib
from typing import Any

from .config import ConformerConfig, with_overrides

_PRESETS: dict[str, ConformerConfig] = {}
_ALIASES: dict[str, str] = {}


def register_preset(cfg: ConformerConfig, aliases: tuple[str, ...] = ()) -> ConformerConfig:
    """Add a preset; names and aliases must be unique."""
    for name in (cfg.name, *aliases):
        if name in _PRESETS or name in _ALIASES:
            raise ValueError(f"model name {name!r} is already registered")
    _PRESETS[cfg.name] = cfg
    for alias in aliases:
        _ALIASES[alias] = cfg.name
    return cfg


# The release: base channel 64, depth 12, mlp ratio 4, qkv bias, 1000 classes (ConformerConfig defaults).
register_preset(
    ConformerConfig(name="tiny", channel_ratio=1, embed_dim=384, num_heads=6, from_paper=True),
    aliases=("Conformer_tiny_patch16",),
)
register_preset(
    ConformerConfig(name="small", channel_ratio=4, embed_dim=384, num_heads=6, from_paper=True),
    aliases=("Conformer_small_patch16",),
)
register_preset(
    ConformerConfig(
        name="small-p32", channel_ratio=4, embed_dim=384, num_heads=6, patch_size=32, from_paper=True
    ),
    aliases=("Conformer_small_patch32",),
)
register_preset(
    ConformerConfig(name="base", channel_ratio=6, embed_dim=576, num_heads=9, from_paper=True),
    aliases=("Conformer_base_patch16",),
)
# Not from the paper: small variants that run the real code paths in seconds.
register_preset(
    ConformerConfig(
        name="micro",
        channel_ratio=0.5,
        embed_dim=64,
        depth=6,
        num_heads=2,
        num_med_block=1,
        num_classes=10,
        img_size=64,
    )
)
register_preset(
    ConformerConfig(
        name="nano", channel_ratio=0.25, embed_dim=32, depth=3, num_heads=2, num_classes=10, img_size=32
    )
)


def list_models(include_aliases: bool = False) -> list[str]:
    """Registered preset names (release presets first, in registration order)."""
    names = list(_PRESETS)
    return names + sorted(_ALIASES) if include_aliases else names


def resolve_name(name: str) -> str:
    """Canonical preset name for a name or release alias; ``ValueError`` suggests close names."""
    if name in _PRESETS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = list(_PRESETS) + list(_ALIASES)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown model {name!r}; {hint}known models: {', '.join(_PRESETS)}")


def get_config(name: str, **overrides: Any) -> ConformerConfig:
    """The preset's config with ``overrides`` applied (release constructor names plus toggles)."""
    cfg = _PRESETS[resolve_name(name)]
    return with_overrides(cfg, **overrides) if overrides else cfg
