"""Shared fixtures: a private data cache per test session, a tiny fake MNIST for the runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def zoo_data(tmp_path, monkeypatch):
    """Point $ZOO_DATA at an empty temporary cache."""
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_fake_mnist(n_train: int = 200, n_valid: int = 50, n_test: int = 100, seed: int = 0):
    """Digit-like fake images: a bright blob whose position depends on the label (uint8, (n, 784))."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 10, n)
        x = np.zeros((n, 28, 28), np.float64)
        yy, xx = np.mgrid[:28, :28]
        for i, lab in enumerate(y):
            cy, cx = 7 + 14 * (lab // 5) / 1.0, 4 + 5 * (lab % 5)
            x[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        x = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 0.996)
        return (np.floor(x * 256)).astype(np.uint8).reshape(n, 784), y.astype(np.int64)

    return {"train": split(n_train), "valid": split(n_valid), "test": split(n_test)}


@pytest.fixture
def fake_mnist(zoo_data):
    """A small generated MNIST stored in the cache exactly as the real one is."""
    from zoo.common import data

    data._store(make_fake_mnist())
    return zoo_data


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


# One intra-op thread: the suite's tensors are small, and on a 2-core machine shared with other
# processes torch's default thread pool spins and slows small ops by orders of magnitude.
torch.set_num_threads(1)

# The `zoo` command's host memory policy (zoo/common/allocator.py: freed tensor memory stays mapped for
# reuse), so the suite runs as the command does; ZOO_MALLOC=system keeps glibc's defaults.
from zoo.common.allocator import apply_policy  # noqa: E402

apply_policy()


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Each device test runs on the CPU, and on CUDA where a GPU is present (`make gpu-check` runs -k cuda)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    return torch.device(request.param)


@pytest.fixture(params=["cpu-emulated", "cuda"])
def graphs(request, monkeypatch) -> torch.device:
    """The device a CUDA graph test runs on: CUDA with real graphs where present, and always the CPU under
    tests/cuda_graph_emulation.py's EmulatedGraphs (in zoo.common.trainer.GRAPHS)."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device here")
        return torch.device("cuda")
    from tests.cuda_graph_emulation import EmulatedGraphs
    from zoo.common import trainer

    monkeypatch.setattr(trainer, "GRAPHS", EmulatedGraphs)
    return torch.device("cpu")


def run_zoo(capsys, *args) -> str:
    """`zoo ARGS` in-process; asserts exit 0 and returns stdout."""
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out.out
