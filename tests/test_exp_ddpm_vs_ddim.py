"""The ddpm-vs-ddim smoke preset on fake MNIST: what the experiment is about, checked where it holds
exactly: one network evaluation per step in every spacing, each spacing's DDIM row is DDIM on that
spacing's grid from the experiment's x_T (rebuilt from the run's checkpoint), DDIM with eta = 0 is
Euler on the probability-flow ODE on the same grid, trailing starts at T, and the verdict follows its
criterion from the numbers (not tested where DDPM makes no digits)."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import run_experiment
from experiments.ddpm_vs_ddim import PRESETS
from experiments._shared import unit_and_tv
from zoo.common.config import ConfigError
from zoo.gaussian.schedules import step_grid
from zoo.workflows import load_model

SPACINGS = ("leading", "trailing", "linspace")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from zoo.common import data
    from tests.conftest import make_fake_mnist

    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("ddpm_vs_ddim")
    mp.setenv("ZOO_DATA", str(out / "cache"))
    data._store(make_fake_mnist())
    torch.manual_seed(0)
    m = run_experiment("ddpm-vs-ddim", preset="smoke", out_dir=out / "run")
    yield m, out / "run"
    mp.undo()


def test_nfe_per_spacing_and_files(smoke):
    m, out = smoke
    samplers = m["samplers"]
    assert list(samplers) == ["DDPM-100"] + [f"DDIM-{s}-{sp}" for s in (5, 10) for sp in SPACINGS]
    # One network evaluation per step: DDPM walks all T = 100 steps, DDIM its S steps in every spacing.
    assert [r["nfe"] for r in samplers.values()] == [100] + [5] * 3 + [10] * 3
    assert [r["spacing"] for r in samplers.values()] == ["-"] + list(SPACINGS) * 2
    assert all(r["nfe_ratio"] == 100 / r["steps"] for r in samplers.values())
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "grids.png", "fid_time_vs_nfe.png", "loss.png"):
        assert (out / f).exists(), f
    assert json.loads((out / "metrics.json").read_text())["samplers"]["DDIM-10-linspace"]["nfe"] == 10
    report = (out / "report.md").read_text()
    assert "| trailing |" in report and "![grids](grids.png)" in report


def test_rows_are_ddim_on_each_spacing_from_the_same_noise(smoke):
    m, out = smoke
    cfg = PRESETS["smoke"]
    _, _, model = load_model(out / "unet.ckpt")
    n = cfg.eval.n_samples
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(1))  # the run's seed 0 + 1
    tvs = {}
    for sp in SPACINGS:
        x = model.sample(n, x_T=x_T, sampler="ddim", steps=5, eta=0.0, spacing=sp)
        tvs[sp] = unit_and_tv(x)[1]
        assert tvs[sp] == pytest.approx(m["samplers"][f"DDIM-5-{sp}"]["total_variation"], rel=1e-6), sp
        # DDIM with eta = 0 is Euler on the probability-flow ODE on the same grid (an identity).
        euler = model.sample(n, x_T=x_T, sampler="ode", steps=5, method="euler", spacing=sp)
        torch.testing.assert_close(euler, x, rtol=1e-4, atol=1e-4)
    assert len(set(tvs.values())) == 3  # three grids, three different sample sets


def test_grids_visited(smoke):
    _, out = smoke
    _, _, model = load_model(out / "unet.ckpt")
    x_T = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    for sp in SPACINGS:
        seen = []
        model.sample(2, x_T=x_T, sampler="ddim", steps=5, spacing=sp, callback=lambda info: seen.append(info["t"]))
        assert seen == step_grid(100, 5, sp).flip(0).tolist(), sp
    assert step_grid(100, 5, "trailing").tolist() == [20, 40, 60, 80, 100]  # trailing starts at T
    assert step_grid(100, 5, "leading").tolist() == [1, 21, 41, 61, 81]
    assert step_grid(100, 5, "linspace").tolist() == [1, 26, 51, 75, 100]


def test_verdict_follows_its_criterion(smoke):
    m, _ = smoke
    cfg = PRESETS["smoke"]
    ddpm = m["samplers"]["DDPM-100"]
    close = [sp for sp in SPACINGS
             if m["samplers"][f"DDIM-{cfg.compare_steps}-{sp}"]["classifier_fid"] <= cfg.close * ddpm["classifier_fid"]
             and m["samplers"][f"DDIM-{cfg.compare_steps}-{sp}"]["speedup"] >= 10]
    assert m["spacings_close"] == close
    # An untrained smoke model makes no digits: the claim is not tested, whatever the ratios say.
    assert ddpm["classifier_fid"] >= cfg.digits and m["reproduced"] is None
    assert m["verdict"]["reproduced"] == "not tested"
    assert m["verdict"]["numbers"]["ddim_fid_trailing"] == m["samplers"]["DDIM-5-trailing"]["classifier_fid"]


def test_config_validation():
    from dataclasses import replace

    with pytest.raises(ConfigError, match="leading, trailing, linspace"):
        replace(PRESETS["smoke"], spacings=("uniform",))
    with pytest.raises(ConfigError, match="compare_steps"):
        replace(PRESETS["smoke"], compare_steps=7)


def test_verdict_names_the_spacing_that_gets_there():
    from dataclasses import replace

    from experiments.ddpm_vs_ddim import DdpmVsDdimConfig, _verdict

    cfg = DdpmVsDdimConfig()  # DDIM-50 against DDPM-1000, close = 1.25, digits = 10
    row = dict(pixel_fid=5.0, total_variation=0.13)

    def rows(ddpm_fid, fids, speedup=20.0):
        return ([{"sampler": "DDPM", "steps": 1000, "spacing": "-", "nfe": 1000, "classifier_fid": ddpm_fid,
                  "speedup": 1.0, **row}] +
                [{"sampler": "DDIM", "steps": 50, "spacing": sp, "nfe": 50, "classifier_fid": f, "speedup": speedup, **row}
                 for sp, f in zip(SPACINGS, fids)])

    # 1.5x, 1.2x, 1.3x DDPM's classifier FID: only trailing is within 1.25x.
    finding, v = _verdict(cfg, rows(2.0, (3.0, 2.4, 2.6)), epochs=5)
    assert v["reproduced"] == "yes" and v["numbers"]["spacings_close"] == ["trailing"]
    assert "Within 1.25x of DDPM's classifier FID: trailing." in finding
    _, v = _verdict(cfg, rows(2.0, (3.0, 2.4, 2.6), speedup=8.0), epochs=5)  # close, but not 10x faster
    assert v["reproduced"] == "no" and v["numbers"]["spacings_close"] == []
    finding, v = _verdict(cfg, rows(2.0, (3.0, 2.6, 2.7)), epochs=5)
    assert v["reproduced"] == "no" and "No spacing gets within 1.25x" in finding
    _, v = _verdict(replace(cfg, digits=1.5), rows(2.0, (3.0, 2.4, 2.6)), epochs=5)  # DDPM makes no digits
    assert v["reproduced"] == "not tested"
