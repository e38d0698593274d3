"""Parameter counts, total and by component, defined from the model's module names in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import ParamCounts

if TYPE_CHECKING:
    import torch

COMPONENTS: tuple[str, ...] = ("stem", "cnn", "transformer", "fcu", "heads")

# Top-level attributes of ``conformer.Conformer`` -> component.
_TOP_LEVEL: dict[str, str] = {
    "stem": "stem",
    "cnn_entry": "cnn",
    "patch_embed": "transformer",
    "cls_token": "transformer",
    "pos_embed": "transformer",
    "trans_entry": "transformer",
    "trans_norm": "transformer",
    "conv_head": "heads",
    "trans_head": "heads",
}
# Children of a coupled block (``stages.<s>.<j>.<child>``) -> component.
_BLOCK_CHILD: dict[str, str] = {
    "cnn_block": "cnn",
    "med_block": "cnn",
    "fusion_block": "cnn",
    "trans_block": "transformer",
    "squeeze_block": "fcu",
    "expand_block": "fcu",
}
# Depth (number of dotted parts) at which a name under ``stages`` names a block child.
_BLOCK_CHILD_DEPTH = 4


def component_of(name: str) -> str | None:
    """Component of a parameter or module name; ``None`` for containers above the component level.

    ``stages.0.1.trans_block.attn.qkv.weight`` -> ``transformer``; ``stages.0.1`` -> ``None``.
    An unknown name raises ``KeyError`` so that a new module is never silently left out.
    """
    parts = name.split(".")
    if parts[0] == "stages":
        if len(parts) < _BLOCK_CHILD_DEPTH:
            return None
        child = parts[_BLOCK_CHILD_DEPTH - 1]
        if child not in _BLOCK_CHILD:
            raise KeyError(f"no component defined for block child {child!r} (in {name!r})")
        return _BLOCK_CHILD[child]
    if parts[0] == "":
        return None
    if parts[0] not in _TOP_LEVEL:
        raise KeyError(f"no component defined for top-level module {parts[0]!r} (in {name!r})")
    return _TOP_LEVEL[parts[0]]


def component_roots(names: list[str]) -> dict[str, str]:
    """The coarsest module names that map to a component (``stem``, ``stages.0.1.trans_block`` ...)."""
    roots: dict[str, str] = {}
    for name in names:
        comp = component_of(name) if name else None
        if comp is None:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent and component_of(parent) is not None:
            continue  # a descendant of a root already listed
        roots[name] = comp
    return roots


def _count_model(model: torch.nn.Module) -> ParamCounts:
    """The parameters of a built model by component; shared ones counted once (as ``model.parameters()``)."""
    by_component = dict.fromkeys(COMPONENTS, 0)
    total = trainable = 0
    for name, param in model.named_parameters():
        comp = component_of(name)
        if comp is None:
            raise KeyError(f"parameter {name!r} sits above the component level")
        n = int(param.numel())
        by_component[comp] += n
        total += n
        if param.requires_grad:
            trainable += n
    return ParamCounts(total=total, trainable=trainable, by_component=by_component)
