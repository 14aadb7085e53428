"""The ode-samplers smoke preset on fake MNIST: a complete run directory, exact NFE, finite metrics."""

from __future__ import annotations

import json
import math

import torch

from experiments import run_experiment
from zoo.common.metrics import total_variation

KEYS = {"method", "steps", "nfe", "seconds", "classifier_fid", "pixel_fid", "total_variation"}


def test_ode_samplers_smoke(fake_mnist, tmp_path):
    m = run_experiment("ode-samplers", preset="smoke", out_dir=tmp_path)
    samplers = m["samplers"]
    assert list(samplers) == ["euler-3", "euler-6", "heun-3", "heun-6"]
    # Euler: one evaluation per step; Heun: two per step except its first and last (Euler) steps.
    assert [r["nfe"] for r in samplers.values()] == [3, 6, 4, 10]
    for r in samplers.values():
        assert set(r) == KEYS
        for k in KEYS - {"method"}:
            assert math.isfinite(r[k]), (r["method"], r["steps"], k)
        assert r["classifier_fid"] > 0 and r["pixel_fid"] > 0 and r["total_variation"] > 0
    assert [r["steps"] for r in m["equal_steps"]] == [3, 6]
    assert m["equal_nfe"] == [{"heun_steps": 3, "heun_nfe": 4, "heun_fid": samplers["heun-3"]["classifier_fid"],
                               "euler_steps": 6, "euler_nfe": 6, "euler_fid": samplers["euler-6"]["classifier_fid"]}]
    assert 0 <= m["heun_wins"] <= 2 and m["heun_wins_equal_nfe"] in (0, 1) and m["reproduced"] == (m["heun_wins"] == 2)
    assert set(m["real_data_floor"]) == {"classifier_fid", "pixel_fid", "total_variation"}
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "grids.png", "fid_vs_steps_nfe.png", "loss.png"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "metrics.json").read_text())["samplers"]["heun-6"]["nfe"] == 10
    assert "Reproduced:" in (tmp_path / "report.md").read_text()


def test_total_variation_of_known_images():
    flat = torch.full((2, 1, 4, 4), 0.5)
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1
    assert total_variation(flat).tolist() == [0.0, 0.0]
    assert total_variation(stripes).item() == 12 / 16  # 4 rows x 3 horizontal pairs, over 16 pixels
