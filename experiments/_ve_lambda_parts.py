"""Parts of the `ve-lambda` experiment (experiments/ve_lambda.py): the exact-denoiser demos (no
training), endpoint statistics, and the figures (lambda rule and Gaussian demo, velocity field,
sampler scatters on the spiral, trajectories)."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.collections import LineCollection

from experiments.plotting import plt
from zoo.common.data import spiral
from zoo.continuous_time import ve


def parse_rule(rule: str):
    """'stochastic' | 'lambda' | a number (a fixed lambda) -> the `ve.sample` rule."""
    return rule if rule in ("stochastic", "lambda") else float(rule)


def gaussian_demo(cfg, seed: int) -> tuple[dict, dict]:
    """Std of x_0 per rule and dt for p0 = N(0, s^2), x_1 ~ p_1 = N(0, s^2 + sigma_q^2), exact f."""
    s, sq = cfg.demo_std, cfg.demo_sigma_q
    stds, samples = {}, {}
    for dt in cfg.demo_dts:
        f = ve.f_from_x0_mean(ve.gaussian_x0_mean(0.0, s, sq), dt)
        g = torch.Generator().manual_seed(seed)
        x_1 = math.sqrt(s ** 2 + sq ** 2) * torch.randn(cfg.demo_n, 1, generator=g, dtype=torch.float64)
        stds[str(dt)] = {}
        for rule in cfg.rules:
            x0 = ve.sample(f, x_1, dt, parse_rule(rule), sq, generator=g)
            stds[str(dt)][rule] = x0.std().item()
            if dt == min(cfg.demo_dts):
                samples[rule] = x0.squeeze(1)
    return stds, samples


def point_mass_demo(cfg, seed: int) -> dict:
    """Mean distance of x_0 to the point x0 = (0.5, -0.5) per rule, exact f, dt = field_dt."""
    x0 = torch.tensor([0.5, -0.5], dtype=torch.float64)
    f = ve.f_from_x0_mean(ve.gaussian_x0_mean(x0, 0.0, cfg.demo_sigma_q), cfg.field_dt)
    g = torch.Generator().manual_seed(seed)
    x_1 = x0 + cfg.demo_sigma_q * torch.randn(2000, 2, generator=g, dtype=torch.float64)
    return {rule: (ve.sample(f, x_1, cfg.field_dt, parse_rule(rule), cfg.demo_sigma_q, generator=g) - x0)
            .norm(dim=1).mean().item() for rule in cfg.rules}


def endpoint_stats(end: torch.Tensor, points: torch.Tensor, curve: torch.Tensor) -> dict:
    """Memorisation vs generalisation of sampler endpoints (B, 2): distance to the nearest training
    point, to the underlying spiral, and the share landing within 0.05 of a training point."""
    d_train = torch.cdist(end, points).min(1).values
    return {"dist_to_nearest_training_point": d_train.mean().item(),
            "dist_to_spiral": torch.cdist(end, curve).min(1).values.mean().item(),
            "share_on_a_training_point": (d_train < 0.05).float().mean().item()}


def rule_label(rule: str) -> str:
    names = {"stochastic": "stochastic", "lambda": "lambda rule"}
    return names[rule] if rule in names else f"lambda = {float(rule):g}"


def plot_gaussian_demo(cfg, samples: dict, ctx) -> str:
    fig, (ax_l, ax_h) = plt.subplots(1, 2, figsize=(11, 3.8))
    k = np.arange(1, 31)
    ax_l.plot(k, [ve.lambda_rule(float(i), 1.0) for i in k], marker=".", label="lambda rule")
    ax_l.axhline(0.5, color="grey", ls="--", label="1/2")
    for i in (1, 2, 10):
        ax_l.annotate(f"{ve.lambda_rule(float(i), 1.0):.3f}", (i, ve.lambda_rule(float(i), 1.0)),
                      textcoords="offset points", xytext=(6, 4))
    ax_l.set(title=r"$\lambda = \sqrt{t}/(\sqrt{t-\Delta t}+\sqrt{t})$", xlabel=r"$t / \Delta t$", ylabel=r"$\lambda$")
    ax_l.legend()
    grid = np.linspace(-3, 3, 400)
    s = cfg.demo_std
    ax_h.plot(grid, np.exp(-grid ** 2 / (2 * s ** 2)) / (s * math.sqrt(2 * math.pi)), "k-", lw=2,
              label=f"p0 = N(0, {s ** 2:g})")
    for rule, x in samples.items():
        ax_h.hist(x.numpy(), bins=120, range=(-3, 3), density=True, histtype="step",
                  label=f"{rule_label(rule)} (std {x.std().item():.3f})")
    ax_h.set(title=f"x_0 from exact f, dt = {min(cfg.demo_dts):g}, sigma_q = {cfg.demo_sigma_q:g}", xlabel="x_0",
             ylim=(0, 2.2))
    ax_h.legend(fontsize=7)
    return ctx.savefig(fig, "gaussian_demo")


def plot_velocity_field(cfg, ctx) -> str:
    """v_t = lambda (f - x)/dt for p0 = delta_{x0}, f exact, over the density of p_t = N(x0, sigma_q^2 t)."""
    x0, sq, dt = torch.tensor([0.5, -0.5], dtype=torch.float64), cfg.demo_sigma_q, cfg.field_dt
    f = ve.f_from_x0_mean(ve.gaussian_x0_mean(x0, 0.0, sq), dt)
    fig, axes = plt.subplots(1, len(cfg.field_times), figsize=(3.6 * len(cfg.field_times), 3.6), squeeze=False)
    lim = 2.5
    fine = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    coarse = torch.linspace(-lim, lim, 15, dtype=torch.float64)
    for ax, t in zip(axes[0], cfg.field_times):
        gx, gy = torch.meshgrid(fine, fine, indexing="xy")
        dens = torch.exp(-((gx - x0[0]) ** 2 + (gy - x0[1]) ** 2) / (2 * sq ** 2 * t))
        ax.imshow(dens.numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="Blues")
        qx, qy = torch.meshgrid(coarse, coarse, indexing="xy")
        pts = torch.stack([qx.flatten(), qy.flatten()], 1)  # (P, 2)
        v = ve.velocity(pts, f(pts, torch.full((len(pts),), t, dtype=torch.float64)), t, dt)
        ax.quiver(pts[:, 0], pts[:, 1], v[:, 0], v[:, 1], color="crimson", angles="xy")
        ax.plot(*x0.numpy(), "k*", ms=10)
        ax.set(title=f"t = {t:g}, lambda = {ve.lambda_rule(t, dt):.3f}", xlim=(-lim, lim), ylim=(-lim, lim))
        ax.set_aspect("equal")
    fig.suptitle(r"Velocity field $v_t = \lambda (f - x)/\Delta t$ of $p_0 = \delta_{x_0}$ over $p_t$ (shade); "
                 "arrow lengths scaled per panel")
    fig.tight_layout()
    return ctx.savefig(fig, "velocity_field")


def plot_spiral_samples(samples: dict, sw: dict, title: str, ctx) -> str:
    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 3.4), squeeze=False)
    curve = spiral(400)
    for ax, (rule, x) in zip(axes[0], samples.items()):
        ax.plot(curve[:, 0], curve[:, 1], color="lightgrey", lw=3)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set(title=f"{rule_label(rule)}\nSW {sw[rule]:.3f}", xlim=(-2.5, 2.5), ylim=(-2.5, 2.5))
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    return ctx.savefig(fig, "spiral_samplers")


def plot_trajectory(ax, path: list, points: torch.Tensor, curve: torch.Tensor, n: int) -> LineCollection:
    """One panel: trajectories [(t, x (B, 2))] shaded by t, over the spiral and the training points."""
    xs = torch.stack([x for _, x in path], 1).numpy()  # (B, steps + 1, 2)
    ts = np.array([t for t, _ in path])
    segs = np.concatenate([xs[:, :-1, None], xs[:, 1:, None]], axis=2).reshape(-1, 2, 2)  # (B * steps, 2, 2)
    lc = LineCollection(segs, cmap="viridis", linewidths=0.8, alpha=0.8)
    lc.set_array(np.tile(ts[:-1], xs.shape[0]))
    ax.add_collection(lc)
    ax.plot(curve[:, 0], curve[:, 1], color="lightgrey", lw=1, zorder=0)
    ax.scatter(points[:, 0], points[:, 1], c="red", s=14, zorder=3, label="training points")
    ax.set(title=f"{n} training points", xlim=(-3, 3), ylim=(-3, 3))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    return lc
