"""`loss-variance` smoke preset on fake MNIST: complete run directory, finite curves of the right shape,
and the one relationship that holds by construction: for one model and the same draws, sum = d x mean."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import run_experiment
from experiments.loss_variance import PRESETS, disjoint_subsets


def test_loss_variance_smoke(fake_mnist, tmp_path):
    cfg = PRESETS["smoke"]
    m = run_experiment("loss-variance", preset="smoke", out_dir=tmp_path)
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "loss_variance.png"):
        assert (tmp_path / f).exists(), f
    assert not list(tmp_path.glob("*.ckpt"))
    assert m["d"] == 784
    for red in ("sum", "mean"):
        per_subset = np.array(m["per_subset"][red])
        assert per_subset.shape == (cfg.n_subsets, cfg.train.epochs)
        assert np.isfinite(per_subset).all() and (per_subset > 0).all()
        for key in ("mean", "std", "rel_spread"):
            curve = np.array(m["curves"][red][key])
            assert curve.shape == (cfg.train.epochs,) and np.isfinite(curve).all()
        np.testing.assert_allclose(m["curves"][red]["mean"], per_subset.mean(0), rtol=1e-6)
    assert np.isfinite(m["std_ratio_mean_over_sum"]).all() and len(m["std_ratio_mean_over_sum"]) == cfg.train.epochs
    # One model, same t / noise / posterior draws: the summed loss is exactly d times the mean.
    assert len(m["eval_sum_over_mean"]) == 2 * cfg.n_subsets
    np.testing.assert_allclose(m["eval_sum_over_mean"], 784.0, rtol=1e-5)
    assert json.loads((tmp_path / "metrics.json").read_text())["experiment"] == "loss-variance"


def test_disjoint_subsets():
    x = np.arange(100)[:, None].repeat(3, 1)
    import torch

    subsets = disjoint_subsets(torch.from_numpy(x), 4, 25, seed=0)
    rows = np.concatenate([s[:, 0].numpy() for s in subsets])
    assert len(set(rows.tolist())) == 100
    with pytest.raises(ValueError, match="need 200"):
        disjoint_subsets(torch.from_numpy(x), 8, 25, seed=0)
