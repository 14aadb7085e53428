"""The `discrete` experiment's smoke preset on fake MNIST: every model's bound in nats on the same
test images, the paired absorbing - bit-flip gap, NFE per sample as counted, the run directory."""

from __future__ import annotations

import json
import math

import pytest

from experiments import REGISTRY, run_experiment
from experiments.discrete import DiscreteConfig

NAMES = ("absorbing", "binary", "gaussian", "vae")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_smoke_preset_runs_on_fake_mnist(fake_mnist, tmp_path):
    out = tmp_path / "run"
    m = run_experiment("discrete", preset="smoke", out_dir=out)
    cfg = REGISTRY["discrete"].presets["smoke"]
    for name in NAMES:
        r = m[name]
        for key in ("elbo_nats", "elbo_se", "nll_nats", "nll_se", "train_seconds", "sample_seconds_per_1000"):
            assert _finite(r[key]) and r[key] >= 0, (name, key, r[key])
        # Every bound is on the identical test images: the same count for every row.
        assert r["n_test"] == m["n_test"] == cfg.eval.n_test, name
        assert all(_finite(v) and v >= 0 for v in r["samples"].values()) and r["parameters"] > 0
    # Counted network evaluations: bit-flip's T, absorbing's S at S steps (T by default), the decoder once.
    assert m["binary"]["nfe"] == cfg.model.binary.T and m["absorbing"]["nfe"] == cfg.model.absorbing.T
    assert m["gaussian"]["nfe"] == cfg.model.gaussian.steps and m["vae"]["nfe"] == 1
    assert [r["steps"] for r in m["absorbing_steps"]] == list(cfg.absorbing_steps)
    assert all(r["nfe"] == r["steps"] and _finite(r["classifier_fid"]) for r in m["absorbing_steps"])
    # The discrete bounds are their all-t parts; untrained, each is near 784 log 2 = 543 nats per image.
    for name in ("absorbing", "binary"):
        r = m[name]
        assert len(r["elbo_kl"]) == getattr(cfg.model, name).T
        assert r["elbo_nats"] == pytest.approx(r.get("elbo_prior", 0.0) + sum(r["elbo_kl"]), rel=1e-9)
        assert 300 < r["elbo_nats"] < 1000, (name, r["elbo_nats"])
    # The paired gap is the difference of the two means over the same images.
    assert m["absorbing_minus_binary"] == pytest.approx(m["absorbing"]["elbo_nats"] - m["binary"]["elbo_nats"], abs=1e-6)
    assert _finite(m["absorbing_minus_binary_se"]) and m["absorbing_minus_binary_se"] > 0
    v = m["verdict"]
    assert v["reproduced"] == "not tested"  # two steps of training make no digits: FID far above 10
    assert min(v["numbers"]["classifier_fid"].values()) >= cfg.fid_max
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "metrics.json", "config.json", "log.jsonl", "samples.png", "quality_vs_steps.png"} <= files
    assert not any(f.endswith(".ckpt") for f in files)
    report = (out / "report.md").read_text()
    assert "![quality_vs_steps](quality_vs_steps.png)" in report and "Reproduced: not tested" in report
    runs = {json.loads(s)["run"] for s in (out / "log.jsonl").read_text().splitlines()}
    assert runs == set(NAMES)  # every model trained through the one Trainer


def test_config_is_validated():
    with pytest.raises(ValueError, match="absorbing_steps must lie in 1..20"):
        DiscreteConfig(absorbing_steps=(5, 40))
    base = DiscreteConfig()
    with pytest.raises(ValueError, match="same data"):
        # a VAE config that is valid on its own (Gaussian likelihood on grey images) but not on the others' data
        DiscreteConfig(model=type(base.model)(vae=type(base.model.vae)(data="mnist-grey", likelihood="gaussian")))
