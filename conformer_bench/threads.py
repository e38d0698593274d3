"""torch's intra-op thread count, set for a block of code and restored after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def set_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads from now on (``None``: leave the count as it is)."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: as they are) and restore the count after it,
    also when code inside the block changes it."""
    import torch

    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
