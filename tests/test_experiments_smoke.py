"""Each registered experiment's smoke preset runs on fake MNIST and writes a complete run directory."""

from __future__ import annotations

import json
import math

import pytest

from experiments import REGISTRY, run_experiment


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_toy2d_smoke(tmp_path):
    m = run_experiment("toy2d", preset="smoke", out_dir=tmp_path / "a")
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "forward_reverse.png", "loss.png"):
        assert (tmp_path / "a" / f).exists(), f
    # The roll dissolves into noise: alpha_bar_T from linear betas 1e-3..0.2 over T = 100, by hand.
    betas = [1e-3 + (0.2 - 1e-3) * i / 99 for i in range(100)]
    assert m["alpha_bar_T"] == pytest.approx(math.prod(1 - b for b in betas), rel=1e-9) and m["alpha_bar_T"] < 1e-3
    d = m["sliced_w1"]
    # A fresh draw of the roll differs from held-out roll points only by sampling noise, of order
    # 1/sqrt(256) = 0.06 per projection, well below the distance of N(0, I) from the (standardised) roll.
    assert set(d) == {"samples", "noise", "fresh data (floor)"} and d["fresh data (floor)"] < d["noise"] / 2
    closed = (d["noise"] - d["samples"]) / (d["noise"] - d["fresh data (floor)"])
    assert m["gap_closed"] == pytest.approx(closed, rel=1e-12)
    assert m["reproduced"] == (closed > 0.8 and m["alpha_bar_T"] < 1e-3)
    # `zoo run toy2d --config config.json` reproduces the run (wall-clock fields aside).
    info = json.loads((tmp_path / "a" / "config.json").read_text())
    again = run_experiment("toy2d", preset=info["preset"], seed=info["seed"], out_dir=tmp_path / "b",
                           config=info["config"])
    clock = {"seconds", "train_seconds"}
    assert {k: v for k, v in again.items() if k not in clock} == {k: v for k, v in m.items() if k not in clock}


def test_every_experiment_has_three_presets():
    for exp in REGISTRY.values():
        assert set(exp.presets) == {"smoke", "quick", "paper"}, exp.name


def test_zoo_table_smoke(fake_mnist, tmp_path):
    m = run_experiment("zoo", preset="smoke", out_dir=tmp_path)
    rows = m["rows"]
    assert set(rows) == {"gaussian", "ve", "binary", "vae"}
    for name, row in rows.items():
        assert _finite(row) and row["classifier_fid"] > 0 and row["pixel_fid"] > 0, name
        assert row["train_s"] > 0 and row["sample_s_per_1000"] > 0
    # NFE by construction: DDIM steps, 1/dt, T, one decoder call
    assert [rows[k]["nfe"] for k in ("gaussian", "ve", "binary", "vae")] == [5, 10, 5, 1]
    # Every row has a likelihood in nats per image: the VE row through the probability-flow ODE.
    assert all(math.isfinite(rows[k]["nll_nats"]) for k in ("gaussian", "ve", "binary", "vae"))
    assert "bits_per_dim" in rows["gaussian"]
    assert rows["gaussian"]["params"] == rows["binary"]["params"]  # the same U-Net for both
    header = (tmp_path / "table.csv").read_text().splitlines()[0]
    assert "classifier_fid" in header and len((tmp_path / "table.csv").read_text().splitlines()) == 5
    assert (tmp_path / "samples.png").exists() and not list(tmp_path.glob("*.ckpt"))
