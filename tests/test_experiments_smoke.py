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


ZOO_BOUNDS = {"gaussian": {"elbo", "ode"}, "gaussian_learned": {"elbo", "ode"}, "ve": {"ode"}, "binary": {"elbo"},
              "absorbing": {"elbo"}, "gaussian_binary": {"elbo"}, "vae": {"elbo", "nll"}, "vae_grey": {"elbo", "nll"}}


def test_zoo_entries_train_a_subset_and_are_validated(fake_mnist, tmp_path):
    from zoo.common.config import ConfigError

    m = run_experiment("zoo", preset="smoke", out_dir=tmp_path / "a", overrides=["entries=gaussian,vae_grey",
                                                                                "digits=1e9"])
    assert set(m["rows"]) == {"gaussian", "vae_grey"}
    assert {r["entry"] for r in m["likelihoods"]} == {"gaussian", "vae_grey"}
    assert m["sharpness"]["tested"] and m["sharpness"]["verdict"] in ("yes", "no")  # every model passes a gate of 1e9
    report = (tmp_path / "a" / "report.md").read_text()
    assert "Grey MNIST, bits/dim" in report and "Binarised MNIST" not in report
    for bad in ("entries=gaussian,vea", "entries=vae,vae", "digits=0"):
        with pytest.raises(ConfigError):
            run_experiment("zoo", preset="smoke", out_dir=tmp_path / "b", overrides=[bad])
    assert not (tmp_path / "b").exists()  # nothing written before validation


def test_zoo_table_smoke(fake_mnist, tmp_path):
    import csv
    import hashlib

    from zoo.common.data import is_binary, load_dataset

    m = run_experiment("zoo", preset="smoke", out_dir=tmp_path)
    rows = m["rows"]
    assert set(rows) == set(ZOO_BOUNDS)
    for name, row in rows.items():
        assert _finite(row) and row["classifier_fid"] > 0 and row["pixel_fid"] > 0, name
        assert row["train_s"] > 0 and row["sample_s_per_1000"] > 0
        # every likelihood the formulation defines on its data, and no model without one
        assert set(row["likelihoods"]) == ZOO_BOUNDS[name], name
    # NFE by construction: DDIM steps, 1/dt, T, one decoder call
    assert {k: r["nfe"] for k, r in rows.items()} == {"gaussian": 5, "gaussian_learned": 5, "ve": 10, "binary": 5,
                                                     "absorbing": 5, "gaussian_binary": 5, "vae": 1, "vae_grey": 1}
    assert rows["gaussian"]["params"] == rows["binary"]["params"]  # the same U-Net for both
    # bits/dim = nats / (784 ln 2) for every grey row, from the table's own numbers (likelihoods.csv)
    with open(tmp_path / "likelihoods.csv") as f:
        table = list(csv.DictReader(f))
    grey = [r for r in table if r["data"] == "mnist-grey"]
    assert len(grey) == 7  # Gaussian ELBO and ODE (fixed, learned variance), VE ODE, VAE ELBO and IWAE
    for r in grey:
        assert math.isclose(float(r["bits_per_dim"]), float(r["nats"]) / (784 * math.log(2)), rel_tol=1e-12), r
    # the ODE rows carry the dequantisation term -D log w explicitly: w = 2/255 on 8-bit data in [-1, 1]
    for r in grey:
        if r["kind"] == "ode":
            assert math.isclose(float(r["mean_dequant"]), -784 * math.log(2 / 255), rel_tol=1e-9)
    # every binarised row on the identical test images: the first n_test, the same protocol and draw
    binarised = {k: r["test_images"] for k, r in rows.items() if is_binary(r["data"])}
    assert set(binarised) == {"binary", "absorbing", "gaussian_binary", "vae"}
    assert len({str(sorted(rec.items())) for rec in binarised.values()}) == 1
    rec = next(iter(binarised.values()))
    x = load_dataset("mnist-binary-static", "test", limit=4, seed=0)[0]  # dynamic's test split: the static draw
    assert rec["indices"] == [0, 4] and rec["protocol"] == "dynamic"
    assert rec["sha256"] == hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]
    assert sum(1 for r in table if r["data"] == "mnist-binary-dynamic") == 5  # 4 ELBOs and the IWAE
    # every grey row on the identical test images too, the VAE's as the diffusions' (a bits/dim row among them)
    grey_images = {k: r["test_images"] for k, r in rows.items() if r["data"] == "mnist-grey"}
    assert set(grey_images) == {"gaussian", "gaussian_learned", "ve", "vae_grey"}
    assert len({str(sorted(rec.items())) for rec in grey_images.values()}) == 1
    assert {r["kind"] for r in grey if r["entry"] == "vae_grey"} == {"elbo", "nll"}
    assert {r.get("model") for r in table if r.get("model")} >= {"IWAE (Burda et al. 2015)"}  # the anchors
    # sharpness (seed 004, VAE (d)): total variation of the VAE's means and of the real digits, recomputed
    from zoo.common.metrics import total_variation

    sharp, real = m["sharpness"], load_dataset("mnist-grey", "test", limit=100)[0]
    assert sharp["real"] == pytest.approx(float(total_variation((real + 1) / 2).mean()), rel=1e-6)
    assert sharp["vae_means"] == rows["vae_grey"]["total_variation_mean"] != rows["vae_grey"]["total_variation"]
    assert sharp["vae_blurrier"] == (sharp["vae_means"] < rows["gaussian"]["total_variation"])
    # the claim is tested only where the VAE's means and the diffusion's samples both make digits
    assert sharp["vae_means_classifier_fid"] == rows["vae_grey"]["classifier_fid_mean"] > 0
    assert sharp["tested"] == (max(sharp["vae_means_classifier_fid"], rows["gaussian"]["classifier_fid"]) < 10)
    assert sharp["verdict"] == (("yes" if sharp["vae_blurrier"] else "no") if sharp["tested"] else "not tested")
    report = (tmp_path / "report.md").read_text()
    assert "**Sharpness**" in report and "Direct comparisons" in report and "84.78" in report and "none defined" not in report
    assert len((tmp_path / "table.csv").read_text().splitlines()) == 9
    assert (tmp_path / "samples.png").exists() and not list(tmp_path.glob("*.ckpt"))
