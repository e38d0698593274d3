"""Build a Conformer from a preset name or a config (the presets themselves live in :mod:`.presets`)."""

from __future__ import annotations

from typing import Any

from .config import ConformerConfig, with_overrides
from .model import Conformer
from .presets import get_config, list_models, register_preset, resolve_name

__all__ = ["create_model", "get_config", "list_models", "register_preset", "resolve_name"]


def create_model(name: str | ConformerConfig, **overrides: Any) -> Conformer:
    """Build a Conformer from a preset name (or a config) plus overrides."""
    cfg = name if isinstance(name, ConformerConfig) else get_config(name)
    if overrides:
        cfg = with_overrides(cfg, **overrides)
    return Conformer(cfg)
