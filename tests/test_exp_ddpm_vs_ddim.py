"""The ddpm-vs-ddim smoke preset on fake MNIST: a complete run directory, exact NFE, finite metrics."""

from __future__ import annotations

import json
import math

from experiments import run_experiment

KEYS = {"sampler", "steps", "nfe", "nfe_ratio", "seconds", "seconds_per_1000", "speedup", "classifier_fid", "pixel_fid", "total_variation"}


def test_ddpm_vs_ddim_smoke(fake_mnist, tmp_path):
    m = run_experiment("ddpm-vs-ddim", preset="smoke", out_dir=tmp_path)
    samplers = m["samplers"]
    assert list(samplers) == ["DDPM-100", "DDIM-5", "DDIM-10"]
    # One network evaluation per step: DDPM walks all T = 100 steps, DDIM only its strided ones.
    assert [r["nfe"] for r in samplers.values()] == [100, 5, 10]
    assert samplers["DDIM-5"]["nfe_ratio"] == 20
    for r in samplers.values():
        assert set(r) == KEYS
        for k in KEYS - {"sampler"}:
            assert math.isfinite(r[k]), (r["sampler"], k)
        assert r["classifier_fid"] > 0 and r["pixel_fid"] > 0 and r["seconds"] > 0
    assert set(m["real_data_floor"]) == {"classifier_fid", "pixel_fid", "total_variation"}
    assert isinstance(m["reproduced"], bool) and m["train_steps"] == 2
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "grids.png", "fid_time_vs_nfe.png", "loss.png"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "metrics.json").read_text())["samplers"]["DDIM-10"]["nfe"] == 10
    report = (tmp_path / "report.md").read_text()
    assert "Reproduced:" in report and "![grids](grids.png)" in report
