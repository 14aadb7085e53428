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
    m = run_experiment("toy2d", preset="smoke", out_dir=tmp_path)
    assert set(m["sliced_w1"]) == {"samples", "noise", "fresh data (floor)"}
    assert m["alpha_bar_T"] < 1e-3 and m["final_test_loss"] > 0
    assert _finite({k: v for k, v in m.items() if k != "sliced_w1"})
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "forward_reverse.png", "loss.png"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "metrics.json").read_text())["experiment"] == "toy2d"


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
