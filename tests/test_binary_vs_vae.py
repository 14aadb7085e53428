"""The binary-vs-vae experiment's smoke preset on the fake MNIST: the two bounds on the same test images
(the diffusion's prior term against its closed form, the paired gap, NFE counted), files and shapes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import REGISTRY, run_experiment


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_registered():
    exp = REGISTRY["binary-vs-vae"]
    assert exp.order == 9 and set(exp.presets) == {"smoke", "quick", "paper"}
    paper = exp.presets["paper"]
    assert paper.model.vae.iwae_k == 5000 and paper.eval.n_test is None  # the headline: k = 5000, whole test set


def test_smoke_preset_runs_on_fake_mnist(fake_mnist, tmp_path):
    out = tmp_path / "run"
    m = run_experiment("binary-vs-vae", preset="smoke", out_dir=out)
    cfg = REGISTRY["binary-vs-vae"].presets["smoke"]
    for name in ("binary", "vae"):
        r = m[name]
        for key in ("elbo_nats", "elbo_se", "nll_nats", "nll_se", "train_seconds", "sample_seconds_per_1000"):
            assert _finite(r[key]) and r[key] >= 0, (name, key, r[key])
        assert r["samples"] and all(_finite(v) for v in r["samples"].values())
        assert r["parameters"] > 0
    b, v = m["binary"], m["vae"]
    assert len(b["elbo_kl"]) == cfg.model.binary.T and all(_finite(k) and k >= 0 for k in b["elbo_kl"])
    assert b["nfe"] == cfg.model.binary.T and v["nfe"] == 1  # counted: T network calls per image, one decoder pass
    # The all-t ELBO is its parts; an untrained model is near 784 log 2 = 543 nats per image.
    assert b["elbo_nats"] == pytest.approx(b["elbo_prior"] + sum(b["elbo_kl"]), rel=1e-9)
    assert b["nll_nats"] == b["elbo_nats"]  # the diffusion's NLL bound is its ELBO
    assert v["elbo_total"] == pytest.approx(v["elbo_recon"] + v["elbo_kl"], rel=1e-9)
    assert 100 < b["elbo_nats"] < 2000 and 100 < v["elbo_nats"] < 2000
    # The prior term KL(q(Y_T | Y_0) || fair coins) does not depend on the image: each of the 784 pixels
    # keeps its value with probability q = (1 + kappa_T)/2, kappa_T = (1 - 2 delta)^T (constant schedule).
    kappa = (1 - 2 * m["deltas_first"]) ** cfg.model.binary.T
    assert kappa == pytest.approx(cfg.model.binary.kappa_T, rel=1e-9)
    q = (1 + kappa) / 2
    assert b["elbo_prior"] == pytest.approx(784 * (q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))), rel=1e-6)
    # The gap is paired over the same test images: its mean is the difference of the two means.
    assert m["elbo_gap_binary_minus_vae"] == pytest.approx(b["elbo_nats"] - v["elbo_nats"], rel=1e-9, abs=1e-9)
    assert m["n_test"] == cfg.eval.n_test and m["n_train"] == cfg.n_train
    assert m["verdict"]["reproduced"] == "not tested" and m["verdict"]["numbers"]["vae_iwae"] == v["nll_nats"]
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "metrics.json", "config.json", "log.jsonl", "samples.png", "chain.png", "curves.png",
            "kl_per_t.png"} <= files
    assert not any(f.endswith(".ckpt") for f in files)
    report = (out / "report.md").read_text()
    assert f"{b['elbo_nats']:.1f} vs {v['elbo_nats']:.1f}" in report and "![samples](samples.png)" in report
    assert json.loads((out / "metrics.json").read_text())["binary"]["elbo_nats"] == b["elbo_nats"]
    runs = {json.loads(s)["run"] for s in (out / "log.jsonl").read_text().splitlines()}
    assert runs == {"binary", "vae"}  # both trained through the one Trainer


def test_stochastic_binarisation_option(fake_mnist, tmp_path):
    m = run_experiment("binary-vs-vae", preset="smoke", out_dir=tmp_path,
                       overrides=["binarisation=stochastic", "steps=1"])
    assert m["dataset"] == "mnist-binary-stochastic" and _finite(m["binary"]["elbo_nats"])
    with pytest.raises(ValueError, match="threshold, stochastic"):
        run_experiment("binary-vs-vae", preset="smoke", out_dir=tmp_path, overrides=["binarisation=otsu"])
