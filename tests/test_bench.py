"""`zoo bench unet` / `zoo bench sampling` (issue 13): they run, report every variant they were
asked for, and fail with the valid choices otherwise; the speed options train the same model."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_zoo
from zoo.common.trainer import TrainConfig, Trainer
from zoo.gaussian.model import Config, GaussianDiffusion


def test_bench_unet_rows(capsys, tmp_path):
    out = run_zoo(capsys, "bench", "unet", "--channels", "8,16", "--batch-size", "4", "--steps", "2", "--repeats",
                  "1", "--variants", "eager,channels-last", "--no-peer", "--json", str(tmp_path / "u.json"))
    rows = json.loads((tmp_path / "u.json").read_text())
    assert [r["variant"] for r in rows] == ["eager", "channels-last"]
    assert rows[0]["params"] == rows[1]["params"] > 0 and all(r["img_per_s"] > 0 for r in rows)
    assert rows[0]["vs_eager"] == 1.0 and "channels-last" in out


def test_cli_lists_every_variant():
    from zoo import bench, cli

    assert cli.UNET_VARIANTS == bench.UNET_VARIANTS


def test_bench_unet_unknown_variant(capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "unet", "--variants", "eager,turbo"])
    assert e.value.code == 2 and "compile-bf16" in capsys.readouterr().err


def test_bench_sampling_rows(capsys, tmp_path):
    run_zoo(capsys, "bench", "sampling", "--channels", "8,16", "--T", "10", "--ddim-steps", "5", "--batch-size", "4",
            "--repeats", "1", "--compile-mode", "none", "--no-peer", "--json", str(tmp_path / "s.json"))
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("DDIM-5", 5), ("DDPM-10", 10)]
    assert all(r["ratio"] > 0 and r["seconds"] > 0 for r in rows)


def test_channels_last_trains_the_same_model():
    """channels_last changes the memory layout only: the same seed gives the same losses and, up to
    float rounding (which Adam's normalisation amplifies where gradients are near zero), weights."""
    results = []
    for cl in (False, True):
        torch.manual_seed(0)
        model = GaussianDiffusion(Config(data="mnist-grey", channels=(8, 16), T=50))
        x = torch.rand(32, 1, 28, 28) * 2 - 1
        trainer = Trainer(model, (x,), TrainConfig(epochs=2, batch_size=8, grad_clip=None, channels_last=cl,
                                                   log_every=1, val_every=0, progress=False))
        w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
        trainer.fit()
        losses = [r["loss"] for r in trainer.history if r["kind"] == "step"]
        results.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()]), w0))
    (loss_a, w_a, w0), (loss_b, w_b, _) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    assert (w_a - w_b).abs().max() < 0.05 * (w_a - w0).abs().max()  # 16 Adam steps moved every weight
