"""Sanity bounds: what can only be a mistake is refused before anything is built, counted or run.

One check for every command that takes a variant: ``profile``, ``finetune``, ``speed``, each cell of
``ablate`` (when its experiment file is read, so ``--dry-run`` refuses too) and a search's trials all call
:func:`check_bounds`. Its model bounds give way to ``force``; the memory bounds do not (an input larger than
the machine cannot run). The order matters: the structural bounds are O(1), so a 100,000-block variant is
refused before the closed-form count walks its blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .errors import BenchError

if TYPE_CHECKING:
    from conformer import ConformerConfig


MAC_LIMIT = 10**12  # per image: past this a variant is almost surely a typo (the release's base is ~23 G)
PARAM_LIMIT = 10**10  # parameters: 10 G, 120 times the release's base (83 M)
MED_BLOCK_LIMIT = 2000  # extra bottlenecks in the whole model (the paper's grid: at most 3 per block, 36)
DEPTH_LIMIT = 3000  # transformer blocks (the release: 12); past it the count alone would take seconds
CELL_LIMIT = 100_000  # cells of one experiment grid (a dry run lists ten thousand in seconds)
SEED_LIMIT = 2**32 - 1  # largest seed: NumPy's range, and seed + rank still fits torch's generator
THREAD_LIMIT = 1024  # intra-op threads (torch takes a C int; past the cores it only oversubscribes)
WORKER_LIMIT = 256  # data-loading processes of a fine-tune
FORCE_HINT = "or pass --force to run it anyway"


class RunSettings(Protocol):
    """What the bounds read of a command's settings (ProfileSettings, FinetuneSettings, SpeedSettings)."""

    @property
    def img_size(self) -> int | None: ...

    @property
    def batch_size(self) -> int | None: ...


def check_bounds(
    cfg: ConformerConfig,
    settings: RunSettings | None = None,
    *,
    img_size: int | None = None,
    force: bool = False,
) -> None:
    """Refuse ``cfg`` (a ConformerConfig) past the sanity bounds, with one line naming the fix.

    ``settings`` (ProfileSettings, FinetuneSettings or SpeedSettings, or ``None``) gives the image size and
    the batch; ``img_size`` overrides the size (else the config's). ``force`` lifts the model bounds (size,
    depth, MACs, parameters), never the memory bound of the input batch.
    """
    size = img_size or getattr(settings, "img_size", None) or cfg.img_size
    if not force:
        _check_structure(cfg)
        _check_costs(cfg, size)
    batch = getattr(settings, "batch_size", None)
    if batch is not None and getattr(settings, "mode", "") != "none":
        check_input_memory(cfg.in_chans, batch, size)


def _check_structure(cfg: ConformerConfig) -> None:
    """O(1) bounds on how many blocks the config builds."""
    if cfg.depth > DEPTH_LIMIT:
        raise BenchError(
            f"depth {cfg.depth:,} is past the sanity bound of {DEPTH_LIMIT:,} blocks (the release uses 12); "
            f"lower it, {FORCE_HINT}"
        )
    extra = (cfg.depth - 1) * cfg.num_med_block  # every coupled block after the first stem-side one
    if extra > MED_BLOCK_LIMIT:  # building alone would take minutes, whatever it costs per image
        raise BenchError(
            f"--num-med-block {cfg.num_med_block} builds {extra:,} extra bottlenecks ({cfg.depth - 1} coupled blocks), "
            f"past the sanity bound of {MED_BLOCK_LIMIT:,} (the paper uses at most 3 per block); "
            "lower it, or pass --force to build it anyway"
        )


def _check_costs(cfg: ConformerConfig, img_size: int) -> None:
    """Parameters and MACs per image, in closed form (microseconds once the structure is bounded)."""
    from .flops import costs_of

    costs = costs_of(cfg, img_size)
    params = costs.params.total
    if params > PARAM_LIMIT:
        raise BenchError(
            f"{cfg.name} has {params:.3g} parameters, past the sanity bound of {PARAM_LIMIT:.0e}; check "
            f"embed_dim, base_channel, channel_ratio, mlp_ratio and num_classes, {FORCE_HINT}"
        )
    macs = costs.paper_macs
    if macs > MAC_LIMIT:
        raise BenchError(
            f"{cfg.name} at {img_size} px costs {macs / 1e12:.3g} TMACs per image (batch 1), "
            f"past the {MAC_LIMIT / 1e12:g} TMAC sanity bound; check --num-med-block / --img-size, "
            f"{FORCE_HINT}"
        )


def memory_available() -> int:
    """Bytes of memory a tensor could live in: the host's, or the first GPU's when it is larger."""
    import psutil

    have = int(psutil.virtual_memory().total)
    try:
        import torch

        if torch.cuda.is_available():
            have = max(have, int(torch.cuda.get_device_properties(0).total_memory))
    except (ImportError, RuntimeError):  # pragma: no cover
        pass
    return have


def check_memory(need: int, what: str, purpose: str, fix: str) -> None:
    """Refuse ``what`` when it needs more bytes (for ``purpose``) than this machine has at all."""
    have = memory_available()
    if need > have:
        raise BenchError(
            f"{what} needs {need / 2**30:,.0f} GiB for {purpose}, more than this machine's "
            f"{have / 2**30:,.0f} GiB; {fix}"
        )


def check_input_memory(in_chans: int, batch_size: int, img_size: int) -> None:
    """Refuse a batch whose fp32 input tensor alone is larger than this machine's memory (host or GPU)."""
    need = batch_size * in_chans * img_size**2 * 4
    check_memory(
        need, f"--batch-size {batch_size} at {img_size} px", "the input batch alone", "lower --batch-size"
    )


def check_seed(seed: Any, option: str = "--seed") -> int:
    """A seed as an integer from 0 to :data:`SEED_LIMIT`, else one line naming the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_LIMIT:
        raise BenchError(f"{option} must be an integer from 0 to {SEED_LIMIT}, got {str(seed)[:40]}")
    return seed


def check_count(value: Any, option: str, limit: int) -> None:
    """``value`` (when given) as an integer from 1 to ``limit``, else one line naming the range."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit
    ):
        raise BenchError(f"{option} must be an integer from 1 to {limit:,}, got {str(value)[:40]}")
