"""The `guidance` experiment: its smoke preset on fake MNIST (a complete run directory, one finite
number per formulation and w, NFE twice the steps), and guidance steering a discrete model whose
conditional signal is planted (fake MNIST: the label decides the blob position)."""

from __future__ import annotations

import json
import math

import torch

from experiments import REGISTRY, run_experiment
from experiments.guidance import sweep
from zoo.binary.absorbing_model import AbsorbingDiffusion, Config
from zoo.common.data import load_dataset
from zoo.common.trainer import TrainConfig
from zoo.evaluation import EvalConfig
from zoo.runs import train

FORMULATIONS = ("gaussian", "binary", "absorbing")


def test_guidance_smoke(fake_mnist, tmp_path):
    m = run_experiment("guidance", preset="smoke", out_dir=tmp_path)
    cfg = REGISTRY["guidance"].presets["smoke"]
    ws = m["ws"]
    assert ws == [0.0, 1.0, 4.0]
    for name in FORMULATIONS:
        r = m[name]
        for key in ("agreement", "classifier_fid", "pixel_fid", "sample_seconds"):
            assert len(r[key]) == len(ws), (name, key)
            assert all(math.isfinite(v) for v in r[key]), (name, key)
        # Agreement is a share of the smoke's 40 samples: a multiple of 1/40.
        assert all(0.0 <= a <= 1.0 and abs(a * 40 - round(a * 40)) < 1e-6 for a in r["agreement"])
        assert all(f >= 0 for f in r["classifier_fid"] + r["pixel_fid"])
        assert r["train_steps"] == 2 and math.isfinite(r["final_train_loss"])
        assert isinstance(r["agreement_rises"], bool) and isinstance(r["w0_near_chance"], bool)
    # Guided: the null and the conditional evaluation count as two per step.
    assert m["gaussian"]["nfe_per_sample"] == 2 * cfg.model.gaussian.steps == 6
    assert m["binary"]["nfe_per_sample"] == 2 * cfg.model.binary.T
    assert m["absorbing"]["nfe_per_sample"] == 2 * cfg.model.absorbing.T
    assert isinstance(m["reproduced"], bool)
    # Two training steps make no digits: the digit gate leaves the claim untested whatever agreement says.
    assert m["tested"] is False and max(m["gaussian"]["classifier_fid"]) >= cfg.digits
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "metrics.json", "log.jsonl", "report.md", "agreement_fid.png",
            *(f"grids_{n}.png" for n in FORMULATIONS)} <= files
    assert not any(f.endswith(".ckpt") for f in files)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["experiment"] == "guidance" and saved["absorbing"]["agreement"] == m["absorbing"]["agreement"]
    assert saved["verdict"]["reproduced"] == "not tested"
    report = (tmp_path / "report.md").read_text()
    assert "## The seed's claim" in report and "grids_absorbing.png" in report and "Reproduced:" in report
    runs = {json.loads(s)["run"] for s in (tmp_path / "log.jsonl").read_text().splitlines()}
    assert runs == set(FORMULATIONS)  # each trained through the one Trainer


def _blob_label(x: torch.Tensor) -> torch.Tensor:
    """The planted reader: the fake-MNIST label whose blob centre (conftest) is nearest to the
    centre of mass of the bright pixels of each {-1, +1} image (N, 1, 28, 28)."""
    on = (x[:, 0] > 0).double()  # (N, 28, 28)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = on.sum((1, 2)).clamp(min=1)
    cy, cx = (on * yy).sum((1, 2)) / mass, (on * xx).sum((1, 2)) / mass
    lab = torch.arange(10)
    centres = torch.stack([7 + 14 * (lab // 5), 4 + 5 * (lab % 5)], 1).double()  # (10, 2)
    d = (cy[:, None] - centres[:, 0]) ** 2 + (cx[:, None] - centres[:, 1]) ** 2  # (N, 10)
    return d.argmin(1)


def test_guidance_steers_a_planted_discrete_model(fake_mnist, tmp_path):
    """Absorbing diffusion trained on fake MNIST, whose label alone decides where the blob is: through
    the experiment's sweep (the same x_T for every w, the labels 0..9 in turn) the planted reader
    agrees with the asked label far more at w = 4 than at w = 0."""
    torch.manual_seed(0)
    x, y = load_dataset("mnist-binary", "train")
    model = AbsorbingDiffusion(Config(T=10, channels=(8, 16), embed_dim=16, groups=4, num_classes=10,
                                      label_dropout=0.2))
    train(model, (x, y), TrainConfig(steps=240, batch_size=32, lr=3e-3, progress=False), tmp_path, "absorbing")
    ev = EvalConfig(n_samples=100, sample_chunk=100, n_test=0)
    _, samples, nfe = sweep(model.eval(), "mnist-binary", (0.0, 4.0), ev, seed=0)
    asked = torch.arange(ev.n_samples) % 10
    a0, a4 = [(_blob_label(samples[w]) == asked).double().mean().item() for w in (0.0, 4.0)]
    assert nfe == 2 * 10
    # Two independent binomial shares of n = 100: the SE of the difference is at most
    # sqrt(2 * 0.25 / 100) = 0.071; require a gap of more than 4 of those.
    assert a4 - a0 > 4 * math.sqrt(0.5 / ev.n_samples), (a0, a4)
