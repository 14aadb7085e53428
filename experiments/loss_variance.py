"""`loss-variance`: the mean-matching loss summed over pixels vs averaged per pixel (seed 001, I.5-6).

The loss is |x_{t-1} - mu_theta(x_t, t)|^2/(2 beta_t) with x_{t-1} drawn from q(x_{t-1} | x_t, x0)
(zoo.gaussian Config loss="mean-matching", mm_target="posterior"), reduced by `sum` (the ELBO
term) or by `mean` over the d = 784 pixels. Over disjoint subsets of MNIST train images, one
seed ScoreNet (mean parameterisation, learnable rho0/rho1) is trained per subset and reduction;
both models of a subset start from the same weights and draw the same t, noise and batches, so
the pair differs only in the reduction. Per epoch: the mean and spread across subsets of each
subset's average training loss (the seed's compute_variability_history), and their ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from experiments._shared import SEED001, SEED001_TRAIN, quantiles
from experiments.plotting import markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.common.data import load_mnist
from zoo.common.trainer import TrainConfig
from zoo.gaussian.model import Config, GaussianDiffusion
from zoo.report import Report, Result, figure, verdict
from zoo.runs import epoch_curve

REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class LossVarianceConfig:
    model: Config = SEED001  # the seed's ScoreNet() default widths; mm_reduction: set per run
    train: TrainConfig = SEED001_TRAIN
    n_subsets: int = 20
    subset_size: int = 1000


CLAIM = """
Final project I.5-6: replacing the summed mean-matching loss by its per-pixel mean "reduces the
estimator's variance by a factor of 1/d". Trained over 20 disjoint subsets of 1000 MNIST images,
the summed loss showed "min=416.1397, 25%=420.4990, median=426.1324, 75%=477.6914,
max=73708.5737, avg_var=4041606.432964" across subsets and epochs, the mean form "min=0.5291,
25%=0.5327, median=0.5337, 75%=0.5347, max=0.5378, avg_var=0.000002": "the per-pixel MSE
formulation immediately stabilizes the loss ... yielding dramatically more consistent losses
across different data splits."
"""


def disjoint_subsets(x: torch.Tensor, n: int, size: int, seed: int) -> list[torch.Tensor]:
    """`n` disjoint random subsets of `size` rows of x (the seed's Subset(perm[i*size:(i+1)*size]))."""
    if n * size > len(x):
        raise ValueError(f"{n} subsets of {size} need {n * size} images, only {len(x)} available")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [x[perm[i * size:(i + 1) * size]] for i in range(n)]


@torch.no_grad()
def paired_loss(model: GaussianDiffusion, x: torch.Tensor, seed: int) -> dict[str, float]:
    """The same weights' loss on x under each reduction, with the same t, noise and posterior draws."""
    out = {}
    for red in REDUCTIONS:
        twin = GaussianDiffusion(replace(model.cfg, mm_reduction=red)).to(x.device)
        twin.load_state_dict(model.state_dict())
        torch.manual_seed(seed)
        out[red] = float(twin.loss((x,))["loss"])
    return out


def spread(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Per-epoch mean, std (population, as the seed) and relative std across subsets; hist (epochs, subsets)."""
    mean, std = hist.mean(1), hist.std(1)
    return {"mean": mean, "std": std, "rel": std / np.abs(mean)}


def run(cfg: LossVarianceConfig, ctx: RunContext) -> Result:
    x, _ = load_mnist("train", view="grey")
    subsets = disjoint_subsets(x, cfg.n_subsets, cfg.subset_size, ctx.seed)
    d = int(np.prod(x.shape[1:]))
    hist = {red: [] for red in REDUCTIONS}  # per reduction: one epoch curve per subset
    eval_ratio, seconds = [], {red: 0.0 for red in REDUCTIONS}
    for i, data in enumerate(subsets):
        for red in REDUCTIONS:
            torch.manual_seed(ctx.seed + i)  # both reductions start from the same weights
            model = GaussianDiffusion(replace(cfg.model, mm_reduction=red))
            trainer = ctx.fit(model, (data,), cfg.train, f"{red}-{i:02d}", seed_offset=i)
            hist[red].append(epoch_curve(trainer, "train_loss"))
            seconds[red] += trainer.train_seconds
            pair = paired_loss(model, data[:cfg.train.batch_size], seed=ctx.seed + 10 ** 4 + i)
            eval_ratio.append(pair["sum"] / pair["mean"])
    ctx.remove_checkpoints()
    arr = {red: np.array(hist[red], dtype=np.float64).T for red in REDUCTIONS}  # (epochs, subsets)
    s = {red: spread(arr[red]) for red in REDUCTIONS}
    abs_ratio = s["mean"]["std"] / s["sum"]["std"]  # (epochs,)
    rel_ratio = s["mean"]["rel"] / s["sum"]["rel"]
    n_epochs = cfg.train.epochs
    epochs = np.arange(1, n_epochs + 1)

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for ax, red in zip(axes[:2], REDUCTIONS):
        for curve in arr[red].T:
            ax.plot(epochs, curve, color="0.75", lw=0.6)
        ax.plot(epochs, s[red]["mean"], color="tab:blue" if red == "sum" else "tab:orange", lw=2,
                label="mean across subsets")
        ax.fill_between(epochs, s[red]["mean"] - s[red]["std"], s[red]["mean"] + s[red]["std"], alpha=0.3,
                        color="tab:blue" if red == "sum" else "tab:orange", label="± 1 std")
        ax.set(xlabel="epoch", ylabel="training loss", yscale="log",
               title=f"reduction = {red}: {cfg.n_subsets} subsets (grey)")
        ax.legend(fontsize=8)
    for red, c, style in zip(REDUCTIONS, ("tab:blue", "tab:orange"), (dict(lw=4, alpha=0.5), dict(ls="--", lw=1.5))):
        axes[2].plot(epochs, s[red]["std"], marker="o", ms=3, color=c, label=red)
        axes[3].plot(epochs, s[red]["rel"], color=c, label=red, **style)
    axes[2].plot(epochs, s["sum"]["std"] / d, ls="--", color="k", lw=1, label=f"sum std / d (d = {d})")
    axes[2].set(xlabel="epoch", ylabel="std across subsets", yscale="log", title="Absolute spread")
    axes[3].set(xlabel="epoch", ylabel="std / mean across subsets", yscale="log",
                title="Relative spread (the two curves overlap)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    curves_png = ctx.savefig(fig, "loss_variance")

    summary = {red: {**quantiles(arr[red].ravel()), "avg_var": float(arr[red].var(1).mean()),
                     "final_mean": float(s[red]["mean"][-1]), "final_std": float(s[red]["std"][-1]),
                     "mean_rel_spread": float(s[red]["rel"].mean()), "train_seconds": seconds[red]}
               for red in REDUCTIONS}
    abs_median, rel_median = float(np.median(abs_ratio)), float(np.median(rel_ratio))
    var_ratio = summary["mean"]["avg_var"] / summary["sum"]["avg_var"]
    rows = [{"reduction": red, **{k: summary[red][k] for k in ("min", "q25", "median", "q75", "max", "avg_var")},
             "mean std/mean": summary[red]["mean_rel_spread"]} for red in REDUCTIONS]
    rows.append({"reduction": "mean / sum", "median": summary["mean"]["median"] / summary["sum"]["median"],
                 "avg_var": var_ratio, "mean std/mean": summary["mean"]["mean_rel_spread"] / summary["sum"]["mean_rel_spread"]})
    abs_reproduced = bool(0.5 / d < abs_median < 2.0 / d)
    rel_reproduced = bool(rel_median < 0.5)
    stride = max(1, n_epochs // 10)
    every = f" (every {stride}th)" if stride > 1 else ""
    per_epoch = [{"epoch": k + 1, "sum mean": float(s["sum"]["mean"][k]), "sum std": float(s["sum"]["std"][k]),
                  "mean mean": float(s["mean"]["mean"][k]), "mean std": float(s["mean"]["std"][k]),
                  "std ratio x d": float(abs_ratio[k] * d), "rel. spread ratio": float(rel_ratio[k])}
                 for k in range(0, n_epochs, stride)]
    body = [f"Unlike the seed, which trained one network on all subsets in turn and then continued that "
            f"already-trained network with the mean loss, each (subset, reduction) here is its own fresh model, "
            f"and the two models of a subset share initial weights, batches and noise, so they differ only in the "
            f"reduction. Training took {summary['sum']['train_seconds']:.0f} s (sum) and "
            f"{summary['mean']['train_seconds']:.0f} s (mean).", figure(curves_png),
            "All per-subset epoch losses (the seed's summary):", markdown_table(rows),
            f"Per epoch{every}:", markdown_table(per_epoch),
            f"By construction, for one model and the same draws the summed loss is exactly d = {d} times the mean: "
            f"re-evaluating every trained model both ways gives sum/mean = {min(eval_ratio):.4f} .. "
            f"{max(eval_ratio):.4f}."]
    finding = (f"Absolute spread: the std across subsets of the mean form is {abs_median:.3g} times that of the "
               f"summed form (median over epochs; 1/d = {1 / d:.3g}), i.e. the variance ratio is about 1/d^2 "
               f"({var_ratio:.3g}; 1/d^2 = {1 / d ** 2:.3g}): the seed's 'far smaller, ~1/d' holds in absolute terms "
               f"{'(yes)' if abs_reproduced else '(no)'}. Relative spread (std/mean, units cancel): the ratio mean/sum "
               f"is {rel_median:.3g}, so the mean form is {'markedly more' if rel_reproduced else 'not more'} "
               f"consistent across subsets once the factor d is divided out. Adam is invariant to a constant scale "
               f"of the loss (up to its eps), so dividing the loss by d changes its units, not the training "
               f"trajectory: both forms spike in the first epochs (maxima {summary['sum']['max']:.4g} and "
               f"{summary['mean']['max']:.4g}). The seed's variance ratio (about 5e-13) is far below 1/d^2; its "
               f"mean-loss run continued the network already trained with the sum, so it likely never saw those "
               f"early spikes.")
    v = verdict(rel_reproduced, "the mean form's relative spread (std/mean across subsets) is below half the "
                "summed form's (median over epochs); the absolute ratio is reported beside it",
                rel_spread_ratio_median=rel_median, std_ratio_median=abs_median, one_over_d=1 / d)
    metrics = {"d": d, "n_subsets": cfg.n_subsets, "epochs": n_epochs,
               "curves": {red: {"mean": s[red]["mean"].tolist(), "std": s[red]["std"].tolist(),
                                "rel_spread": s[red]["rel"].tolist()} for red in REDUCTIONS},
               "per_subset": {red: arr[red].T.tolist() for red in REDUCTIONS},
               "summary": summary, "std_ratio_mean_over_sum": abs_ratio.tolist(),
               "rel_spread_ratio_mean_over_sum": rel_ratio.tolist(), "std_ratio_median": abs_median,
               "rel_spread_ratio_median": rel_median, "avg_var_ratio_mean_over_sum": var_ratio,
               "eval_sum_over_mean": eval_ratio, "reproduced_absolute": abs_reproduced,
               "reproduced_relative": rel_reproduced}
    title = "Mean-matching loss: summed vs per-pixel mean, spread across data subsets"
    return Result(metrics, Report(title, CLAIM, body, finding, v))


_BASE = LossVarianceConfig()
PRESETS = {
    "smoke": replace(_BASE, n_subsets=3, subset_size=40, model=replace(SEED001, channels=(8, 16, 32, 64)),
                     train=replace(_BASE.train, epochs=2, batch_size=20)),
    "quick": replace(_BASE, n_subsets=8, model=replace(SEED001, channels=(8, 16, 32, 64)),
                     train=replace(_BASE.train, epochs=18, step_size=6)),
    "paper": _BASE,
}
experiment("loss-variance", "mean-matching loss summed vs per-pixel mean: spread across 20 disjoint MNIST subsets",
           PRESETS, order=3)(run)
