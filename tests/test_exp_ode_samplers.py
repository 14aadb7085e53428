"""The ode-samplers smoke preset on fake MNIST: exact NFE per method in every spacing, each row is the
ODE on its spacing's grid from the experiment's x_T (rebuilt from the run's checkpoint), Euler on a
grid equals DDIM with eta = 0 on it, and the comparisons and verdict follow from the rows."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import run_experiment
from experiments._shared import unit_and_tv
from experiments.ode_samplers import PRESETS
from zoo.common.config import ConfigError
from zoo.common.metrics import total_variation
from zoo.workflows import load_model

SPACINGS = ("leading", "trailing", "linspace")


def test_ode_samplers_smoke(fake_mnist, tmp_path):
    m = run_experiment("ode-samplers", preset="smoke", out_dir=tmp_path)
    samplers = m["samplers"]
    assert list(samplers) == [f"{method}-{s}-{sp}" for method in ("euler", "heun") for sp in SPACINGS for s in (3, 6)]
    # Euler: one evaluation per step; Heun: two per step except its first and last (Euler) steps; any spacing.
    assert [r["nfe"] for r in samplers.values()] == [3, 6] * 3 + [4, 10] * 3
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "grids.png", "fid_vs_steps_nfe.png", "loss.png"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "metrics.json").read_text())["samplers"]["heun-6-trailing"]["nfe"] == 10

    # Each row is the sampler on its own spacing from the run's x_T (seed 0 + 1), with the trained weights.
    _, _, model = load_model(tmp_path / "unet.ckpt")
    n = PRESETS["smoke"].eval.n_samples
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    tvs = set()
    for sp in SPACINGS:
        for method in ("euler", "heun"):
            x = model.sample(n, x_T=x_T, sampler="ode", steps=6, method=method, spacing=sp)
            tv = unit_and_tv(x)[1]
            assert tv == pytest.approx(samplers[f"{method}-6-{sp}"]["total_variation"], rel=1e-6), (method, sp)
            tvs.add(tv)
        ddim = model.sample(n, x_T=x_T, sampler="ddim", steps=3, eta=0.0, spacing=sp)
        assert unit_and_tv(ddim)[1] == pytest.approx(samplers[f"euler-3-{sp}"]["total_variation"], rel=1e-5), sp
    assert len(tvs) == 6  # two methods in three grids: six different sample sets

    # The comparisons are the rows, paired per spacing; the verdict is their majority.
    assert [(r["spacing"], r["steps"]) for r in m["equal_steps"]] == [(sp, s) for sp in SPACINGS for s in (3, 6)]
    for r in m["equal_steps"]:
        assert r["heun_fid"] == samplers[f"heun-{r['steps']}-{r['spacing']}"]["classifier_fid"]
    assert m["equal_nfe"] == [{"spacing": sp, "heun_steps": 3, "heun_nfe": 4,
                               "heun_fid": samplers[f"heun-3-{sp}"]["classifier_fid"], "euler_steps": 6,
                               "euler_nfe": 6, "euler_fid": samplers[f"euler-6-{sp}"]["classifier_fid"]}
                              for sp in SPACINGS]
    wins = sum(r["heun_fid"] < r["euler_fid"] for r in m["equal_steps"])
    tested = max(m["best_classifier_fid"].values()) < PRESETS["smoke"].digits  # both make digits
    assert m["heun_wins"] == wins and m["reproduced"] == ((wins > 3) if tested else None)
    assert not tested  # 2 training steps make no digits: the verdict must say "not tested"
    assert "| trailing |" in (tmp_path / "report.md").read_text()


def test_spacings_validated():
    from dataclasses import replace

    with pytest.raises(ConfigError, match="leading, trailing, linspace"):
        replace(PRESETS["smoke"], spacings=("leading", "cosine"))


def test_total_variation_of_known_images():
    flat = torch.full((2, 1, 4, 4), 0.5)
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1
    assert total_variation(flat).tolist() == [0.0, 0.0]
    assert total_variation(stripes).item() == 12 / 16  # 4 rows x 3 horizontal pairs, over 16 pixels
