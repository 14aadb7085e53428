"""`schedules`: beta_t and 1 - alpha_bar_t against t/T for the four schedules (pset Q7-8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from experiments.plotting import markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.report import Report, Result, figure, verdict
from zoo.gaussian.schedules import SCHEDULES, make_betas


@dataclass(frozen=True)
class SchedulesConfig:
    T: int = 30
    beta_1: float = 1e-4
    beta_T: float = 0.02
    s: float = 0.008


CLAIM = """
Pset write-up, Q7-8 (T = 30, s = 0.008): "For all these schedules, 1 - alpha_bar_t and beta_t
converge to one, which means ... we eventually arrive at a standard normal at t = T." And for the
cosine schedule of Nichol & Dhariwal: "beta_t increases very slowly at the beginning until it hits
some transition point, after which it then increases very fast", injecting little noise while
there is much information to learn and going faster towards pure noise afterwards.
"""


def _kw(name: str, cfg: SchedulesConfig) -> dict:
    return {"s": cfg.s} if name == "cosine" else {"beta_1": cfg.beta_1, "beta_T": cfg.beta_T}


def run(cfg: SchedulesConfig, ctx: RunContext) -> dict:
    t_over_T = torch.arange(1, cfg.T + 1, dtype=torch.float64) / cfg.T
    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows, metrics = [], {}
    for name in SCHEDULES:
        betas = make_betas(name, cfg.T, **_kw(name, cfg))
        alpha_bar = torch.cumprod(1 - betas, 0)
        ax_b.plot(t_over_T, betas, marker=".", label=name)
        ax_a.plot(t_over_T, 1 - alpha_bar, marker=".", label=name)
        metrics[name] = {"beta_1": betas[0].item(), "beta_T": betas[-1].item(),
                         "alpha_bar_T": alpha_bar[-1].item(),
                         "t_half": (int(torch.nonzero(alpha_bar <= 0.5)[0]) + 1) if (alpha_bar <= 0.5).any() else None}
        rows.append({"schedule": name, **metrics[name]})
    for name in SCHEDULES:  # the same schedules at the usual T = 1000, for comparison
        metrics[name]["alpha_bar_T_at_T1000"] = torch.prod(1 - make_betas(name, 1000, **_kw(name, cfg))).item()
        rows[list(SCHEDULES).index(name)]["alpha_bar_T (T=1000)"] = metrics[name]["alpha_bar_T_at_T1000"]
    ax_b.set(title=r"$\beta_t$", xlabel="t / T", yscale="log")
    ax_a.set(title=r"$1 - \bar\alpha_t$", xlabel="t / T", ylim=(0, 1.02))
    for ax in (ax_b, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Variance schedules, T = {cfg.T}")
    fig_name = ctx.savefig(fig, "schedules")
    cos, lin = metrics["cosine"], metrics["linear"]
    cosine_ok, all_reach = cos["alpha_bar_T"] < 1e-3, lin["alpha_bar_T"] <= 1e-2
    body = [markdown_table(rows), figure(fig_name),
            "`t_half` is the first step with alpha_bar_t <= 0.5 (None: never within T)."]
    finding = (f"The cosine part of the claim holds: its beta_t grows slowly, then very fast (final beta "
               f"{cos['beta_T']:.3f}, the 0.999 clip) and 1 - alpha_bar_t rises smoothly to 1 (alpha_bar_T = "
               f"{cos['alpha_bar_T']:.2e}). That *all* schedules reach a standard normal does "
               f"{'' if all_reach else 'not '}hold at T = {cfg.T}: the linear schedule ends at alpha_bar_T = "
               f"{lin['alpha_bar_T']:.3f}; at T = 1000 the same beta range gives {lin['alpha_bar_T_at_T1000']:.1e}, "
               f"the regime the write-up's statement describes.")
    v = verdict(cosine_ok and all_reach, "alpha_bar_T < 1e-3 for cosine and <= 1e-2 for every schedule",
                cosine_alpha_bar_T=cos["alpha_bar_T"], linear_alpha_bar_T=lin["alpha_bar_T"])
    return Result({"schedules": metrics}, Report("Noise schedules", CLAIM, body, finding, v))


PRESETS = dict.fromkeys(("smoke", "quick", "paper"), SchedulesConfig())
experiment("schedules", "beta_t and 1 - alpha_bar_t against t/T for the four schedules (T = 30)",
           PRESETS, order=1)(run)
