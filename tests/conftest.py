from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def release_fixture() -> dict:
    """Release weights, input and eval-mode outputs of the micro config (written by the authors' code)."""
    return torch.load(FIXTURES / "official_conformer_micro.pt", weights_only=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _flops_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """FLOP records cached on disk go to a folder of this test session, not the user's cache."""
    import os

    os.environ["CONFORMER_BENCH_CACHE"] = str(tmp_path_factory.mktemp("flops-cache"))


@pytest.fixture(autouse=True, scope="session")
def _revisions_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Revisions extracted by `ab` go to a folder of this test session, not the user's cache."""
    import os

    os.environ["CONFORMER_BENCH_REVISIONS"] = str(tmp_path_factory.mktemp("revisions"))
