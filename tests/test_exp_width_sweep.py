"""`width-sweep` smoke preset on fake MNIST: complete run directory, finite numbers of the right shape."""

from __future__ import annotations

import math

from experiments import run_experiment
from experiments.width_sweep import PRESETS


def test_width_sweep_smoke(fake_mnist, tmp_path):
    cfg = PRESETS["smoke"]
    m = run_experiment("width-sweep", preset="smoke", out_dir=tmp_path)
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "losses.png"):
        assert (tmp_path / f).exists(), f
    assert not list(tmp_path.glob("*.ckpt"))
    assert set(m["widths"]) == {"small", "medium", "large"}
    params = [m["widths"][n]["params"] for n in ("small", "medium", "large")]
    assert params[0] < params[1] < params[2]  # wider is bigger
    for name, r in m["widths"].items():
        assert r["diverged"] is None, name
        assert len(m["curves"][name]["train"]) == len(m["curves"][name]["val"]) == cfg.train.epochs
        assert all(math.isfinite(v) and v > 0 for v in m["curves"][name]["train"] + m["curves"][name]["val"])
        q = r["val_quantiles"]
        assert set(q) == {"min", "q25", "median", "q75", "max", "variance"}
        assert q["min"] <= q["q25"] <= q["median"] <= q["q75"] <= q["max"] and q["variance"] >= 0
        assert r["seconds_per_epoch"] > 0 and math.isfinite(r["rho0"]) and math.isfinite(r["rho1"])
        assert len(m["curves"][name]["rho0"]) == cfg.train.epochs
    assert math.isfinite(m["copy_x_t_val_loss"]) and m["copy_x_t_val_loss"] > 0
    assert set(m["unstable"]) == {"medium", "large"} and m["large_unstable"] == m["unstable"]["large"]
