"""`parameterisation` smoke preset on fake MNIST: complete run directory, finite FIDs for each column."""

from __future__ import annotations

import math

from experiments import run_experiment
from experiments.parameterisation import PRESETS


def test_parameterisation_smoke(fake_mnist, tmp_path):
    cfg = PRESETS["smoke"]
    m = run_experiment("parameterisation", preset="smoke", out_dir=tmp_path)
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "samples.png", "losses.png"):
        assert (tmp_path / f).exists(), f
    assert not list(tmp_path.glob("*.ckpt"))
    assert set(m["results"]) == set(cfg.params) and {"mean", "eps"} <= set(cfg.params)
    for param, r in m["results"].items():
        assert r["diverged"] is None, param
        assert math.isfinite(r["pixel_fid"]) and r["pixel_fid"] >= 0, param
        assert math.isfinite(r["classifier_fid"]) and r["classifier_fid"] >= 0, param
        assert len(m["train_curves"][param]) == cfg.train.epochs and math.isfinite(r["final_train_loss"])
    assert "rho0" in m["results"]["mean"] and "rho0" not in m["results"]["eps"]
    assert math.isfinite(m["results"]["mean"]["rho0"]) and math.isfinite(m["results"]["mean"]["rho1"])
    assert math.isfinite(m["real_floor"]["pixel_fid"]) and isinstance(m["reproduced"], bool)
    assert m["noise_ceiling"]["classifier_fid"] > m["real_floor"]["classifier_fid"]  # real digits beat noise
    assert isinstance(m["informative"], bool)
