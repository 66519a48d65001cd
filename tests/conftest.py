"""Shared fixtures: one small generated mini set per test session (the real generator, not a fake)."""

from pathlib import Path

import pytest
import torch

from model.data.mini import ensure_mini

# CI has 2 cores; torch's default of one thread per core oversubscribes with DataLoader workers.
torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mini WIDER set small enough for CPU tests (the same generator as the demo's)."""
    return ensure_mini(tmp_path_factory.mktemp("data") / "wider-mini", seed=0, num_train=96, num_val=32)


@pytest.fixture(scope="session")
def full_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's mini set (400 train / 100 val): the failure diagnoses were calibrated on it."""
    return ensure_mini(tmp_path_factory.mktemp("data") / "wider-mini-full")


@pytest.fixture
def one_thread():
    """Small tensors in the data pipeline: intra-op threads only add contention on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
