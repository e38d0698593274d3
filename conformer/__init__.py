"""The released Conformer (Peng et al., ICCV 2021) as one config-driven model, with ablation toggles.

Configs and presets import without torch; the model, checkpoint and optimisation names load torch on
first use, so listings and cost counts start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ConformerConfig
from .presets import get_config, list_models, register_preset, resolve_name

if TYPE_CHECKING:
    from .checkpoint import (
        CheckpointError,
        LoadReport,
        from_release,
        load_checkpoint,
        save_checkpoint,
        to_release,
    )
    from .model import Conformer, ConformerOutput
    from .optimize import optimize_for_inference
    from .registry import create_model

# Names that need torch -> the module that defines them.
_LAZY: dict[str, str] = {
    "CheckpointError": "checkpoint",
    "LoadReport": "checkpoint",
    "from_release": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "to_release": "checkpoint",
    "Conformer": "model",
    "ConformerOutput": "model",
    "optimize_for_inference": "optimize",
    "create_model": "registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointError",
    "Conformer",
    "ConformerConfig",
    "ConformerOutput",
    "LoadReport",
    "create_model",
    "from_release",
    "get_config",
    "list_models",
    "load_checkpoint",
    "optimize_for_inference",
    "register_preset",
    "resolve_name",
    "save_checkpoint",
    "to_release",
]
