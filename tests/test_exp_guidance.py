"""The `guidance` experiment's smoke preset on fake MNIST: a complete run directory, one finite number per w."""

from __future__ import annotations

import json
import math

from experiments import run_experiment


def test_guidance_smoke(fake_mnist, tmp_path):
    m = run_experiment("guidance", preset="smoke", out_dir=tmp_path)
    ws = m["ws"]
    assert ws == [0.0, 1.0, 4.0]
    for key in ("agreement", "classifier_fid", "pixel_fid", "sample_seconds"):
        assert len(m[key]) == len(ws), key
        assert all(math.isfinite(v) for v in m[key]), key
    assert all(0.0 <= a <= 1.0 for a in m["agreement"])
    # Agreement is a share of the smoke's 40 samples: a multiple of 1/40.
    assert all(abs(a * 40 - round(a * 40)) < 1e-6 for a in m["agreement"])
    assert all(f >= 0 for f in m["classifier_fid"] + m["pixel_fid"])
    assert m["nfe_per_sample"] == 6 and m["train_steps"] == 2 and math.isfinite(m["final_train_loss"])
    assert isinstance(m["reproduced"], bool)
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "grids.png", "agreement_fid.png"):
        assert (tmp_path / f).exists(), f
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["experiment"] == "guidance" and saved["agreement"] == m["agreement"]
    report = (tmp_path / "report.md").read_text()
    assert "## The seed's claim" in report and "grids.png" in report and "Reproduced:" in report
