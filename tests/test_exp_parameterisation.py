"""`parameterisation` smoke preset on fake MNIST: the experiment's own decisions checked from its
numbers (which model is better on pixel FID, whether both are digit-like against uniform noise's
classifier FID, the verdict that follows), the learnable rho of the mean model moving, and a rerun from
config.json that reproduces metrics.json (wall-clock fields aside) exactly."""

from __future__ import annotations

import json
import math

import pytest

from experiments import run_experiment
from experiments.parameterisation import PRESETS

CLOCK = {"seconds", "train_seconds", "sample_seconds"}


def _drop_clock(tree):
    if isinstance(tree, dict):
        return {k: _drop_clock(v) for k, v in tree.items() if k not in CLOCK}
    return tree


def test_parameterisation_smoke(fake_mnist, tmp_path):
    cfg = PRESETS["smoke"]
    m = run_experiment("parameterisation", preset="smoke", out_dir=tmp_path / "a")
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "samples.png", "losses.png"):
        assert (tmp_path / "a" / f).exists(), f
    assert not list((tmp_path / "a").glob("*.ckpt"))
    assert set(m["results"]) == set(cfg.params) == {"mean", "eps"}
    mean, eps = m["results"]["mean"], m["results"]["eps"]
    assert mean["diverged"] is None and eps["diverged"] is None
    assert mean["loss"] == "mean-matching" and eps["loss"] == "elbo-eps"
    assert len(m["train_curves"]["mean"]) == len(m["train_curves"]["eps"]) == cfg.train.epochs
    # The mean model's rho0, rho1 (initialised at 1) are trained on their own learning rate; eps has none.
    assert abs(mean["rho0"] - 1) > 1e-4 and abs(mean["rho1"] - 1) > 1e-4 and "rho0" not in eps

    # The experiment's decisions, recomputed from the numbers it reports.
    ceiling = m["noise_ceiling"]["classifier_fid"]
    assert ceiling > m["real_floor"]["classifier_fid"] + 10  # real digits beat uniform noise by far
    informative = max(mean["classifier_fid"], eps["classifier_fid"]) < cfg.digits
    by_pixel = eps["pixel_fid"] < mean["pixel_fid"]
    assert m["informative"] == informative and m["eps_better_pixel_fid"] == by_pixel
    assert m["eps_better_classifier_fid"] == (eps["classifier_fid"] < mean["classifier_fid"])
    assert m["reproduced"] == (by_pixel and informative)
    assert m["verdict"]["reproduced"] == ("not tested" if not informative else "yes" if by_pixel else "no")
    assert m["verdict"]["numbers"] == {"mean_pixel_fid": mean["pixel_fid"], "eps_pixel_fid": eps["pixel_fid"]}
    assert all(math.isfinite(r[k]) for r in (mean, eps) for k in ("pixel_fid", "classifier_fid"))

    # `zoo run parameterisation --config config.json` reproduces the run.
    info = json.loads((tmp_path / "a" / "config.json").read_text())
    run_experiment("parameterisation", preset=info["preset"], seed=info["seed"], out_dir=tmp_path / "b",
                   config=info["config"])
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert _drop_clock(json.loads((tmp_path / "b" / "metrics.json").read_text())) == _drop_clock(first)


def test_parameterisation_trains_on_the_seeds_pixels_and_networks(fake_mnist, tmp_path, monkeypatch):
    """By default every model trains on [0, 1] pixels as the seed did, the mean model on `model.arch`
    (the seed's unpadded In [2] ScoreNet) and eps on `pred_arch` (its padded Coding II network), and
    the report says so; `--set model.data=mnist-grey` gives [-1, 1] pixels."""
    from experiments.registry import RunContext

    seen, real_fit = [], RunContext.fit

    def fit(self, model, data, *args, **kwargs):
        seen.append((model.cfg.param, model.cfg.arch, model.cfg.t_min, data[0].min().item(), data[0].max().item()))
        return real_fit(self, model, data, *args, **kwargs)

    monkeypatch.setattr(RunContext, "fit", fit)
    m = run_experiment("parameterisation", preset="smoke", out_dir=tmp_path / "unit")
    assert [s[:3] for s in seen] == [("mean", "scorenet", 1), ("eps", "scorenet-padded", 1)]
    assert all(lo == 0 and 0.9 < hi <= 1 for *_, lo, hi in seen)
    assert {p: r["arch"] for p, r in m["results"].items()} == {"mean": "scorenet", "eps": "scorenet-padded"}
    report = (tmp_path / "unit" / "report.md").read_text()
    assert "[0, 1], as the seed" in report and "scorenet-padded" in report

    seen.clear()
    run_experiment("parameterisation", preset="smoke", out_dir=tmp_path / "grey",
                   overrides=["model.data=mnist-grey", "pred_arch=scorenet", "mean_t_min=2"])
    # mean_t_min: the seed's step range of the mean loss (2..T), eps keeps SPEC's 1..T.
    assert [s[:3] for s in seen] == [("mean", "scorenet", 2), ("eps", "scorenet", 1)]
    assert all(lo == -1 and 0.9 < hi <= 1 for *_, lo, hi in seen)


@pytest.mark.parametrize("override, message", [("pred_arch=resnet", "unknown pred_arch 'resnet'"),
                                               ("mean_t_min=0", "mean_t_min must be an integer in"),
                                               ("mean_t_min=21", "mean_t_min must be an integer in")])
def test_a_bad_field_is_a_usage_error_before_anything_is_written(tmp_path, override, message):
    from experiments.registry import UsageError

    with pytest.raises(UsageError, match=message):
        run_experiment("parameterisation", preset="smoke", out_dir=tmp_path / "x", overrides=[override])
    assert not (tmp_path / "x").exists()


def test_the_paper_preset_is_the_seeds_setting():
    cfg = PRESETS["paper"]
    assert (cfg.model.data, cfg.model.arch, cfg.pred_arch, cfg.mean_t_min, cfg.model.T) == \
        ("mnist-unit", "scorenet", "scorenet-padded", 2, 200)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.step_size, cfg.model.rho_lr) == \
        (60, 100, 0.01, 30, 0.2)


def test_the_seeds_eps_network_keeps_every_resolution():
    """arch `scorenet-padded` is seed 001's eps network (Coding II: padding 1 everywhere): 28 -> 28 ->
    14 -> 7 -> 4 and back, where the mean network (valid convolutions) goes 28 -> 26 -> 12 -> 5 -> 2;
    the same weights' shapes, so the same parameter count."""
    import torch

    from zoo.common.nets import build_net, count_parameters

    sizes = {}
    for arch in ("scorenet", "scorenet-padded"):
        net, seen = build_net(arch, channels=(4, 8, 8, 16)), []
        for conv in net.conv:
            conv.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
        out = net(torch.randn(2, 1, 28, 28), torch.rand(2))
        sizes[arch] = (seen, out.shape, count_parameters(net))
    assert sizes["scorenet"][0] == [26, 12, 5, 2] and sizes["scorenet-padded"][0] == [28, 14, 7, 4]
    assert sizes["scorenet"][1] == sizes["scorenet-padded"][1] == (2, 1, 28, 28)
    assert sizes["scorenet"][2] == sizes["scorenet-padded"][2]


def test_a_run_of_one_parameterisation_says_it_compares_nothing(fake_mnist, tmp_path):
    m = run_experiment("parameterisation", preset="smoke", out_dir=tmp_path,
                       overrides=["params=eps"])
    assert set(m["results"]) == {"eps"} and m["results"]["eps"]["diverged"] is None
    assert m["verdict"]["reproduced"] == "not tested" and not m["informative"]
    report = (tmp_path / "report.md").read_text()
    assert "trained eps only, without mean" in report and "diverged" not in report.split("## Finding")[1]


def test_n_seeds_trains_every_model_at_each_seed_and_decides_over_them(fake_mnist, tmp_path):
    """`n_seeds=2`: seed 0's models are those of a one-seed run (the same numbers), seed 1's are new
    (other weights, data order and noise), and the verdict follows the seed counts it reports."""
    one = run_experiment("parameterisation", preset="smoke", out_dir=tmp_path / "one")
    m = run_experiment("parameterisation", preset="smoke", out_dir=tmp_path / "two", overrides=["n_seeds=2"])
    assert _drop_clock(m["results"]) == _drop_clock(one["results"])
    assert m["seeds"] == [0, 1] and set(m["per_seed"]) == {"0", "1"}
    s0, s1 = m["per_seed"]["0"], m["per_seed"]["1"]
    assert _drop_clock(s0) == _drop_clock(m["results"])
    assert s1["eps"]["pixel_fid"] != s0["eps"]["pixel_fid"] and s1["mean"]["rho0"] != s0["mean"]["rho0"]
    digits = PRESETS["smoke"].digits
    makes = {p: [s for s in (0, 1) if m["per_seed"][str(s)][p]["classifier_fid"] < digits] for p in ("mean", "eps")}
    both = [s for s in (0, 1) if s in makes["mean"] and s in makes["eps"]]
    wins = [s for s in both if m["per_seed"][str(s)]["eps"]["pixel_fid"] < m["per_seed"][str(s)]["mean"]["pixel_fid"]]
    assert m["seeds_with_digits"] == makes and m["seeds_both_digits"] == both and m["seeds_eps_wins"] == wins
    assert m["informative"] == (len(both) == 2) and m["reproduced"] == (len(wins) == 2)
    assert m["verdict"]["reproduced"] == ("not tested" if len(both) < 2 else "yes" if len(wins) == 2 else "no")
    assert m["verdict"]["numbers"] == {"seeds": 2, "both_make_digits": len(both), "eps_wins": len(wins)}
    report = (tmp_path / "two" / "report.md").read_text()
    assert f"Over 2 seeds (0, 1): both mean and eps make digits at {len(both)} of them" in report
    assert "| parameterisation | seed 0 | seed 1 | digits at | median pixel FID |" in report
    assert not list((tmp_path / "two").glob("*.ckpt"))


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_n_seeds_is_validated(bad):
    from zoo.common.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match="n_seeds must be an integer >= 1"):
        apply_overrides(PRESETS["smoke"], [f"n_seeds={bad}"])
