"""`ve-lambda`: the VE samplers of Nakkiran et al.'s lecture notes (seed 003, SPEC section 3).

(0) exact conditional means, no training: p0 = N(0, 0.25) and a point mass under every rule;
(a) stochastic sampler vs the lambda rule vs a fixed lambda 0 / 0.5 / 1, on a learned spiral
    (sliced Wasserstein distance to held-out data) and on MNIST (sample_metrics, e.g. pixel FID);
(b) the velocity field v_t = lambda (f - x)/dt of a point mass over the Gaussian p_t;
(c) DDIM (lambda rule) trajectories on a spiral learned from 10, 20 and 40 points, shaded by t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from experiments._ve_lambda_parts import (endpoint_stats, gaussian_demo, parse_rule, plot_gaussian_demo,
                                          plot_spiral_samples, plot_trajectory, plot_velocity_field,
                                          point_mass_demo, rule_label)
from experiments.plotting import grid_figure, markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.common.data import load_mnist, spiral
from zoo.common.metrics import sliced_wasserstein
from zoo.common.trainer import TrainConfig
from zoo.continuous_time import ve
from zoo.continuous_time.model import Config, build
from zoo.evaluation import draw, quality
from zoo.report import Report, Result, figure, verdict


@dataclass(frozen=True)
class Models:
    spiral: Config = Config(data="spiral", sigma_q=4.0, dt=0.01)
    traj: Config = Config(data="spiral", sigma_q=1.0, dt=0.01)  # smaller sigma_q: the last steps resolve points
    mnist: Config = Config(data="mnist-grey", sigma_q=3.0, dt=0.01, channels=(16, 32), embed_dim=32)


@dataclass(frozen=True)
class Budgets:
    """Cosine-decayed learning rates, as every training run here. EMA off for the 2-D runs (the
    figures show the trained field itself) and the quick MNIST run (500 steps); the paper MNIST run
    averages with 0.999 (horizon ~1000 of 60000 steps, warm-up from step 0)."""

    spiral: TrainConfig = TrainConfig(steps=4000, batch_size=256, lr=3e-3, lr_schedule="cosine")
    traj: TrainConfig = TrainConfig(steps=4000, batch_size=256, lr=3e-3, lr_schedule="cosine")
    mnist: TrainConfig = TrainConfig(steps=500, batch_size=64, lr=2e-3, lr_schedule="cosine")


@dataclass(frozen=True)
class VELambdaConfig:
    model: Models = Models()
    train: Budgets = Budgets()
    rules: tuple[str, ...] = ("stochastic", "lambda", "0", "0.5", "1")  # a number is a fixed lambda
    demo_std: float = 0.5  # (0) exact conditional means: p0 = N(0, demo_std^2)
    demo_sigma_q: float = 1.0
    demo_dts: tuple[float, ...] = (0.01, 0.001)
    demo_n: int = 20000
    field_times: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)  # (b) velocity field of a point mass
    field_dt: float = 0.01
    spiral_n: int = 4096  # (a) spiral: training points, samples, sampling step
    spiral_samples: int = 2048
    spiral_sample_dt: float = 0.002
    traj_points: tuple[int, ...] = (10, 20, 40)  # (c) trajectories from 10 / 20 / 40 training points
    traj_n: int = 80
    mnist: bool = True  # (a) MNIST
    mnist_limit: int = 10000  # training images
    mnist_samples: int = 200


CLAIM = """
Nakkiran et al., "Step-by-step Diffusion" (lecture notes, seed 003; SPEC section 3). With
`x_t = x0 + N(0, sigma_q^2 t)` and `f(x_t, t) ~ E[x_{t-dt} | x_t]`, both the stochastic sampler
(Pseudocode 2, `x_{t-dt} = f + N(0, sigma_q^2 dt)`) and the deterministic DDIM sampler (Pseudocode 3,
`x_{t-dt} = x_t + lambda (f - x_t)`) produce p0, provided
`lambda = sqrt(t)/(sqrt(t - dt) + sqrt(t))` (corrected formula): 1 at `t = dt`, 0.586 at `2 dt`,
0.513 at `10 dt`, -> 1/2 for `t >> dt` ("last few steps a bit different"). Guessing a fixed
lambda of 0 or 1 "doesn't work": 0 never moves, 1 collapses the samples toward the mean (for
`p0 = N(0, 0.25)`: std 0.23 instead of 0.5, SPEC section 3). Figure 4: the velocity field `v_t = lambda (f - x)/dt`
of a point mass points straight at it over the Gaussian p_t. Figure 6: DDIM trajectories on a spiral
learned from 10, 20 and 40 training points with a 3-layer ReLU MLP of 128 units: "as we add more
training points the diffusion algorithm begins to *learn* the underlying spiral and the
trajectories look more perpendicular to the underlying manifold".
"""


def _one_epoch(x: torch.Tensor, train: TrainConfig) -> torch.Tensor:
    """Repeat a small training set so that one epoch holds the whole step budget (one checkpoint per run)."""
    reps = max(1, math.ceil(train.steps * train.batch_size / len(x)))
    return x.repeat(reps, *([1] * (x.ndim - 1)))


def spiral_part(cfg: VELambdaConfig, ctx: RunContext) -> tuple[dict, str]:
    torch.manual_seed(ctx.seed)
    data, ref = spiral(cfg.spiral_n, seed=2 * ctx.seed), spiral(cfg.spiral_samples, seed=2 * ctx.seed + 1)
    model = build(cfg.model.spiral)
    ctx.fit(model, (_one_epoch(data, cfg.train.spiral),), cfg.train.spiral, "spiral")
    model.cpu()  # 2-D sampling is cheap; CPU keeps the generators and reference points on one device
    g = torch.Generator().manual_seed(ctx.seed)
    x_1 = cfg.model.spiral.sigma_q * torch.randn(cfg.spiral_samples, 2, generator=g)
    out = {"floor_data_vs_data": sliced_wasserstein(spiral(cfg.spiral_samples, seed=2 * ctx.seed + 7), ref),
           "noise_x1": sliced_wasserstein(x_1, ref)}
    samples = {}
    for rule in cfg.rules:
        samples[rule] = model.sample(len(x_1), x_T=x_1, generator=g, rule=parse_rule(rule), dt=cfg.spiral_sample_dt)
        out[rule] = quality(samples[rule], "spiral", reference=ref)["sliced_wasserstein"]
    title = f"Spiral, {cfg.spiral_samples} samples, dt = {cfg.spiral_sample_dt:g} (grey: the data curve)"
    return out, plot_spiral_samples(samples, out, title, ctx)


def trajectories_part(cfg: VELambdaConfig, ctx: RunContext) -> tuple[dict, str]:
    curve, mc = spiral(2000), cfg.model.traj
    x_1 = mc.sigma_q * torch.randn(cfg.traj_n, 2, generator=torch.Generator().manual_seed(ctx.seed + 1))
    fig, axes = plt.subplots(1, len(cfg.traj_points), figsize=(4.2 * len(cfg.traj_points), 4.2), squeeze=False)
    out = {}
    for ax, n in zip(axes[0], cfg.traj_points):
        torch.manual_seed(ctx.seed)
        points = spiral(n)  # n fixed, evenly spaced points along the curve
        model = build(mc)
        ctx.fit(model, (_one_epoch(points, cfg.train.traj),), cfg.train.traj, f"traj{n}")
        model.cpu()
        path = []
        end = model.sample(len(x_1), x_T=x_1, rule="lambda", callback=lambda t, x: path.append((t, x.clone())))
        ideal = ve.f_from_x0_mean(ve.points_x0_mean(points, mc.sigma_q), mc.dt)
        out[str(n)] = {"mlp": endpoint_stats(end, points, curve),
                       "exact": endpoint_stats(ve.sample(ideal, x_1, mc.dt), points, curve)}
        lc = plot_trajectory(ax, path, points, curve, n)
    fig.colorbar(lc, ax=axes[0].tolist(), label="t (1 = noise, 0 = data)", shrink=0.8)
    fig.suptitle("DDIM (lambda rule) trajectories, 3-layer ReLU MLP of 128 units")
    return out, ctx.savefig(fig, "spiral_trajectories")


def mnist_part(cfg: VELambdaConfig, ctx: RunContext) -> tuple[dict, str]:
    x, _ = load_mnist("train", view="grey", limit=cfg.mnist_limit)
    torch.manual_seed(ctx.seed)
    trainer = ctx.fit(build(cfg.model.mnist), (x,), cfg.train.mnist, "mnist")
    model = trainer.averaged_model()
    g = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    n = cfg.mnist_samples
    x_1 = cfg.model.mnist.sigma_q * torch.randn(n, 1, 28, 28, generator=g, device=ctx.device)
    test, _ = load_mnist("test", view="unit", limit=1000)
    out = {"train_seconds": trainer.train_seconds, "n_samples": n, "pixel_std_test_images": test.std(0).mean().item()}
    panels = {}
    for rule in cfg.rules:
        samples = draw(model, n, n, g, x_T=x_1, rule=parse_rule(rule)).x
        unit = ((samples + 1) / 2).clamp(0, 1)
        # Diversity: the std of each pixel across samples, averaged over pixels (a collapse lowers it).
        out[rule] = {**quality(samples, "mnist-grey"), "pixel_std_across_samples": unit.std(0).mean().item()}
        panels[f"{rule_label(rule)}\npixel FID {out[rule]['pixel_fid']:.1f}"] = unit[:36]
    return out, ctx.savefig(grid_figure(panels, nrow=6, scale=0.3), "mnist_samplers")


def run(cfg: VELambdaConfig, ctx: RunContext) -> Result:
    for rule in cfg.rules:
        ve.sample(lambda x, t: x, torch.zeros(1, 1), 1.0, parse_rule(rule))  # validate the rules up front
    gauss, gauss_samples = gaussian_demo(cfg, ctx.seed)
    figs = {"gaussian": plot_gaussian_demo(cfg, gauss_samples, ctx), "field": plot_velocity_field(cfg, ctx)}
    m = {"lambda_rule": {f"{k}dt": ve.lambda_rule(float(k), 1.0) for k in (1, 2, 3, 10, 1000)},
         "gaussian_std": gauss, "point_mass_error": point_mass_demo(cfg, ctx.seed)}
    m["spiral_sliced_w2"], figs["spiral"] = spiral_part(cfg, ctx)
    m["trajectories"], figs["traj"] = trajectories_part(cfg, ctx)
    if cfg.mnist:
        m["mnist"], figs["mnist"] = mnist_part(cfg, ctx)
    return Result(m, _report(cfg, m, figs))


def _report(cfg: VELambdaConfig, m: dict, figs: dict) -> Report:
    s, fine, g, sw, tr, lam = cfg.demo_std, str(min(cfg.demo_dts)), m["gaussian_std"], m["spiral_sliced_w2"], \
        m["trajectories"], m["lambda_rule"]
    se = s / math.sqrt(2 * (cfg.demo_n - 1))  # standard error of a std
    good = [r for r in ("lambda", "stochastic") if r in cfg.rules]
    bad = [r for r in cfg.rules if r in ("0", "1", "0.0", "1.0")]
    ok = {"gaussian": all(abs(g[fine][r] - s) < 4 * se + 0.005 for r in good),
          "fixed_0_1_fail": all(abs(g[fine][r] - s) > 0.2 for r in bad),
          "point_mass": "lambda" in cfg.rules and m["point_mass_error"]["lambda"] < 1e-9,
          "spiral": all(sw[r] < 3 * sw["floor_data_vs_data"] + 0.1 for r in good)
          and all(sw[r] > 1.5 * max(sw[q] for q in good) for r in bad)}
    first, last = tr[list(tr)[0]]["mlp"], tr[list(tr)[-1]]["mlp"]
    ok["trajectories"] = (first["share_on_a_training_point"] > last["share_on_a_training_point"]
                          and last["dist_to_spiral"] < first["dist_to_spiral"])
    demo = [{"rule": rule_label(r), **{f"std, dt = {dt}": g[dt][r] for dt in g},
             "point mass: mean |x_0 - x0|": m["point_mass_error"][r]} for r in cfg.rules]
    sw_rows = [{"sampler": rule_label(r), "sliced W2 to held-out data": sw[r]} for r in cfg.rules]
    sw_rows += [{"sampler": "(floor: two data samples)", "sliced W2 to held-out data": sw["floor_data_vs_data"]},
                {"sampler": "(x_1 noise itself)", "sliced W2 to held-out data": sw["noise_x1"]}]
    body = ["### (0) Exact conditional means, no training",
            f"The lambda rule: {lam['1dt']:.3f} at t = dt, {lam['2dt']:.3f} at 2 dt, {lam['10dt']:.3f} at 10 dt, "
            f"{lam['1000dt']:.4f} at 1000 dt. p0 = N(0, {s ** 2:g}) from x_1 ~ p_1 with the exact f (standard error "
            f"of a std: {se:.4f}); lambda = 1 collapses to exactly {s ** 2:g}/sqrt({s ** 2:g} + sigma_q^2) = "
            f"{s ** 2 / math.sqrt(s ** 2 + cfg.demo_sigma_q ** 2):.4f}. A point mass: the lambda rule lands exactly "
            f"on it, a fixed 1/2 leaves noise of order sigma_q sqrt(dt).", markdown_table(demo), figure(figs["gaussian"]),
            "### (b) Velocity field of a point mass", figure(figs["field"]),
            "### (a) Samplers on a learned spiral", markdown_table(sw_rows), figure(figs["spiral"]),
            "### (c) DDIM trajectories from 10, 20 and 40 training points",
            "Endpoints of the MLP and, for reference, of the exact denoiser of the same points (which can only "
            "reproduce them); share within 0.05 of a training point:",
            markdown_table([{"training points": n, "denoiser": k, **v[k]} for n, v in tr.items() for k in ("mlp", "exact")]),
            figure(figs["traj"])]
    if "mnist" in m:
        mm = m["mnist"]
        ok["mnist_pixel_fid"] = bool(bad) and all(mm[r]["pixel_fid"] < min(mm[q]["pixel_fid"] for q in bad) for r in good)
        rows = [{"sampler": rule_label(r), **mm[r]} for r in cfg.rules]
        rows.append({"sampler": "(test images)", "pixel_std_across_samples": mm["pixel_std_test_images"]})
        body += ["### (a) Samplers on MNIST",
                 f"{mm['train_seconds']:.0f} s of training; pixel FID penalises the stochastic sampler's final "
                 f"noise (sigma_q sqrt(dt) at its last step) and rewards smooth images, so on a small budget it "
                 f"does not rank the samplers the way the exact experiments above do.", markdown_table(rows),
                 figure(figs["mnist"])]
    finding = (f"Checks: {', '.join(f'{k} {chr(10003) if v else chr(10007)}' for k, v in ok.items())}. Going from "
               f"{list(tr)[0]} to {list(tr)[-1]} training points the MLP's endpoints sit less often on a training "
               f"point ({first['share_on_a_training_point']:.2f} -> {last['share_on_a_training_point']:.2f}) and "
               f"closer to the spiral ({first['dist_to_spiral']:.3f} -> {last['dist_to_spiral']:.3f}); whether the "
               f"trajectories look 'more perpendicular to the manifold' is read from the figure.")
    v = verdict(ok["gaussian"] and ok["fixed_0_1_fail"] and ok["spiral"],
                "lambda rule and stochastic sampler recover std(p0) within 4 standard errors, fixed lambda 0 and 1 "
                "miss it by > 0.2, and on the spiral they stay near the data floor while 0 and 1 do not", **ok)
    return Report("VE diffusion: the lambda rule, fixed lambdas and the stochastic sampler", CLAIM, body, finding, v)


_BASE = VELambdaConfig()
_M, _T = _BASE.model, _BASE.train
PRESETS = {
    "smoke": replace(_BASE, demo_n=2000, demo_dts=(0.05, 0.01), field_times=(0.1, 1.0), spiral_n=512,
                     spiral_samples=256, spiral_sample_dt=0.02, traj_n=12, mnist_limit=128, mnist_samples=16,
                     model=Models(_M.spiral, replace(_M.traj, dt=0.05),
                                  replace(_M.mnist, dt=0.25, channels=(8, 16), embed_dim=16)),
                     train=Budgets(replace(_T.spiral, steps=60), replace(_T.traj, steps=60),
                                   replace(_T.mnist, steps=4, batch_size=32))),
    "quick": _BASE,
    "paper": replace(_BASE, demo_n=200000, demo_dts=(0.01, 0.001, 0.0001), spiral_n=20000, spiral_samples=10000,
                     spiral_sample_dt=0.001, traj_n=150, mnist_limit=50000, mnist_samples=1000,
                     model=Models(_M.spiral, replace(_M.traj, dt=0.002),
                                  replace(_M.mnist, sigma_q=5.0, dt=0.0005, channels=(32, 64, 128), embed_dim=128)),
                     train=Budgets(replace(_T.spiral, steps=20000), replace(_T.traj, steps=10000),
                                   replace(_T.mnist, steps=60000, batch_size=128, lr=2e-4, ema_decay=0.999))),
}
experiment("ve-lambda", "VE sampler: stochastic vs lambda rule vs fixed lambda; velocity field; spiral trajectories",
           PRESETS, order=10)(run)
