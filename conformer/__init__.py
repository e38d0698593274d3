"""The released Conformer (Peng et al., ICCV 2021) as one config-driven model, with ablation toggles."""

from .checkpoint import (
    CheckpointError,
    LoadReport,
    from_release,
    load_checkpoint,
    save_checkpoint,
    to_release,
)
from .config import ConformerConfig
from .model import Conformer, ConformerOutput
from .optimize import optimize_for_inference
from .registry import create_model, get_config, list_models, register_preset, resolve_name

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
