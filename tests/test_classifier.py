"""The shipped MNIST classifier: accuracy, hash check, features, training, CLI (SPEC section 10)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from zoo.common import classifier as clf
from zoo.common import data


def _real_test_set():
    """The full real test set when cached (in the default cache), else None."""
    return data.load_mnist("test", view="unit") if data.is_cached() else None


def test_accuracy_on_grey_and_binarised_test_images():
    net = clf.load_classifier()
    real = _real_test_set()
    if real is not None:  # the acceptance figures, on all 10k test images
        x, y = real
        assert len(x) == 10000
        assert clf.accuracy(net, x, y) >= 0.990
        assert clf.accuracy(net, (x > 0.5).float(), y) >= 0.985
    else:  # the 200 real test digits shipped with the package
        x, y = clf.test_slice()
        assert len(x) == 200
        assert clf.accuracy(net, x, y) >= 0.98
        assert clf.accuracy(net, (x > 0.5).float(), y) >= 0.975
    # the stochastically binarised view is also classified well above chance
    coins = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < x).float()
    assert clf.accuracy(net, coins[:1000], y[:1000]) >= 0.95


def test_shipped_files_small_weights_only_and_recorded():
    raw = clf.WEIGHTS_PATH.read_bytes()
    assert len(raw) < 2 * 2**20
    info = json.loads(clf.INFO_PATH.read_text())
    assert info["sha256"] == hashlib.sha256(raw).hexdigest()
    assert info["command"].startswith("zoo classifier train") and f"--seed {info['seed']}" in info["command"]
    assert info["test_accuracy_grey"] >= 0.990 and info["test_accuracy_binarised"] >= 0.985
    state = torch.load(clf.WEIGHTS_PATH, weights_only=True)
    assert state["format"] == clf.FORMAT and 64 <= state["feature_dim"] <= 256


def test_hash_check_rejects_a_corrupted_copy(tmp_path):
    pt, js = tmp_path / "classifier.pt", tmp_path / "classifier.json"
    shutil.copy(clf.WEIGHTS_PATH, pt)
    shutil.copy(clf.INFO_PATH, js)
    clf.load_classifier(pt, js)  # an exact copy loads
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside the tensors
    pt.write_bytes(bytes(raw))
    with pytest.raises(clf.ClassifierError) as e:
        clf.load_classifier(pt, js)
    assert "SHA-256" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(clf.ClassifierError, match="missing"):
        clf.load_classifier(tmp_path / "absent.pt", js)


def test_features_shape_and_determinism():
    from zoo.common.metrics import classifier_features

    x, _ = clf.test_slice()
    f = classifier_features(x[:50])
    assert f.shape == (50, clf.FEATURE_DIM) and f.dtype == torch.float32
    torch.testing.assert_close(classifier_features(x[:50]), f, rtol=0, atol=0)
    # batch composition does not matter (eval mode: no batch statistics, no dropout)
    torch.testing.assert_close(classifier_features(x[:50], batch_size=7), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(classifier_features(x[:50].reshape(50, 784)), f)
    # features separate the classes: each image is nearer its own class mean than another's
    ff, y = classifier_features(x), _
    y = clf.test_slice()[1]
    means = torch.stack([ff[y == k].mean(0) for k in range(10)])
    nearest = torch.cdist(ff, means).argmin(1)
    assert (nearest == y).float().mean() >= 0.95


def test_training_writes_loadable_hash_checked_weights_and_learns(fake_mnist, tmp_path):
    """A tiny run of the real training path on generated blobs (label = blob position)."""
    info = clf.train_classifier(epochs=8, seed=1, batch_size=50, lr=1e-2, warmup_steps=3, out_dir=tmp_path,
                                command="test", progress=False)
    net = clf.load_classifier(tmp_path / "classifier.pt", tmp_path / "classifier.json")
    x, y = data.load_mnist("test", view="unit")
    assert info["test_accuracy_grey"] == pytest.approx(clf.accuracy(net, x, y))
    assert info["test_accuracy_grey"] >= 0.5  # chance is 0.1; measured 0.77 after 32 steps
    assert info["seed"] == 1 and info["sha256"] == hashlib.sha256((tmp_path / "classifier.pt").read_bytes()).hexdigest()


def test_cli_classifier_info_and_eval_data(fake_mnist, capsys):
    from zoo.cli import main

    main(["classifier", "info"])  # returns normally on success
    out = capsys.readouterr().out
    assert "(verified)" in out and "self-check" in out
    main(["eval-data", "--n", "60"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "vs test" in line]
    assert len(rows) == 4  # floor and ceiling, grey and binarised
    for floor, ceiling in (rows[0], rows[1]), (rows[2], rows[3]):
        assert floor[0] == ceiling[0] and float(ceiling[-2]) > float(floor[-2])  # classifier FID


def test_cli_eval_data_without_data_is_a_one_line_error(zoo_data, capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval-data"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "zoo data fetch" in err
