"""The ve-lambda experiment: its smoke preset runs end to end on the fake MNIST."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.registry import run_experiment


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    return not isinstance(obj, float) or math.isfinite(obj)


def test_smoke_preset_runs(fake_mnist, tmp_path):
    out = tmp_path / "vel"
    metrics = run_experiment("ve-lambda", preset="smoke", out_dir=out)
    rules = ["stochastic", "lambda", "0", "0.5", "1"]
    assert _finite(metrics)
    for dt in ("0.05", "0.01"):
        assert sorted(metrics["gaussian_std"][dt]) == sorted(rules)
    assert sorted(metrics["point_mass_error"]) == sorted(rules)
    assert metrics["point_mass_error"]["lambda"] < 1e-9  # exact f: lands on the point
    assert set(rules) <= set(metrics["spiral_sliced_w2"])
    assert sorted(metrics["trajectories"]) == ["10", "20", "40"]
    assert set(rules) <= set(metrics["mnist"]) and all("pixel_fid" in metrics["mnist"][r] for r in rules)
    assert json.loads((out / "metrics.json").read_text())["experiment"] == "ve-lambda"
    report = (out / "report.md").read_text()
    for png in ("gaussian_demo", "velocity_field", "spiral_samplers", "spiral_trajectories", "mnist_samplers"):
        assert (out / f"{png}.png").stat().st_size > 1000
        assert f"]({png}.png)" in report
