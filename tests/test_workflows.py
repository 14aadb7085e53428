"""`zoo train`, `zoo sample`, `zoo eval` end to end on a formulation, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.cli import main
from zoo.common.metrics import sliced_wasserstein
from zoo.workflows import parse_kwargs


def _zoo(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out.out


def test_train_sample_eval_and_resume(capsys, tmp_path):
    out = tmp_path / "run"
    common = ["--set", "data=swiss-roll", "--set", "arch=mlp", "--set", "T=50", "--set", "schedule=cosine",
              "--train", "batch_size=128", "--train", "lr=3e-3", "--limit", "1024", "--out", str(out)]
    _zoo(capsys, "train", "gaussian", *common, "--train", "epochs=2")
    assert (out / "train.ckpt").exists() and json.loads((out / "summary.json").read_text())["steps"] == 16
    _zoo(capsys, "train", "gaussian", *common, "--train", "epochs=4", "--resume")
    assert json.loads((out / "summary.json").read_text())["steps"] == 32  # continued, not restarted

    _zoo(capsys, "sample", str(out / "train.ckpt"), "-n", "64", "--kw", "sampler=ddim", "--kw", "steps=10",
         "--out", str(tmp_path / "s.png"))
    samples = torch.load(tmp_path / "s.pt", weights_only=True)
    assert samples.shape == (64, 2) and (tmp_path / "s.png").stat().st_size > 1000

    res = json.loads(_zoo(capsys, "eval", str(out / "train.ckpt"), "--n-samples", "200", "--n-test", "200",
                          "--kw", "sampler=ddim", "--kw", "steps=10"))
    assert res["formulation"] == "gaussian" and res["n_test"] == 200
    assert res["nll_nats"] > 0 and res["sliced_wasserstein"] > 0


def test_parse_kwargs():
    assert parse_kwargs(["a=1", "b=0.5", "c=ddim", "d=true", "e=none"]) == \
        {"a": 1, "b": 0.5, "c": "ddim", "d": True, "e": None}


def test_sliced_wasserstein_against_1d_closed_form():
    # Two 1-D point sets shifted by 0.7: every projection (+-1) gives W1 = 0.7.
    a = torch.linspace(-1, 1, 2001)[:, None]
    assert sliced_wasserstein(a, a + 0.7) == pytest.approx(0.7, abs=1e-6)
    assert sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)


def test_eval_of_a_conditional_mnist_model_reports_fid_and_agreement(capsys, fake_mnist, tmp_path):
    out = tmp_path / "cond"
    _zoo(capsys, "train", "gaussian", "--set", "num_classes=10", "--set", "T=10", "--set", "channels=8,16",
         "--train", "max_steps=3", "--train", "batch_size=16", "--limit", "64", "--out", str(out))
    res = json.loads(_zoo(capsys, "eval", str(out / "train.ckpt"), "--n-samples", "20", "--n-test", "4",
                          "--kw", "sampler=ddim", "--kw", "steps=5"))
    assert 0.0 <= res["agreement"] <= 1.0
    assert res["classifier_fid"] > 0 and res["pixel_fid"] > 0 and res["bits_per_dim"] > 0
