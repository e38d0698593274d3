"""The ``conformer-bench.variants`` record: every preset and every toggle alone, with params and MACs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Record, SchemaRecord

VARIANTS_SCHEMA = "conformer-bench.variants"


@dataclass(frozen=True)
class PresetRow(Record):
    """A registered preset at the size its MACs were counted at (``macs`` None: not counted)."""

    name: str
    aliases: list[str]  # release names that resolve to it
    from_paper: bool
    params: int
    macs: int | None
    img_size: int
    config: dict[str, Any]  # ConformerConfig.to_dict()


@dataclass(frozen=True)
class ToggleRow(Record):
    """One toggle applied alone to the base preset, by its command-line spelling."""

    option: str
    params: int
    macs: int | None
    img_size: int
    config: dict[str, Any]


@dataclass
class VariantsRecord(SchemaRecord):
    """A ``conformer-bench.variants`` record: the presets, then the toggles on ``toggle_base`` (the first
    toggle row is the base itself)."""

    SCHEMA = VARIANTS_SCHEMA
    VERSION = 1

    macs_convention: str
    toggle_base: str
    presets: list[PresetRow] = field(default_factory=list)
    toggles: list[ToggleRow] = field(default_factory=list)
