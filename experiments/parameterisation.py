"""`parameterisation`: what the seed ScoreNet predicts, judged by sample FID (seed 001, I.9 and II).

`mean`: the network output delta gives mu = rho0 (x_t - rho1 delta) with learnable rho0, rho1 on
their own learning rate, trained with the per-pixel mean-matching loss (posterior draw of x_{t-1},
the seed's diffusion_loss_reduced) on `model.arch`, the seed's In [2] ScoreNet without padding; `eps`:
the network `pred_arch` (by default the seed's Coding II ScoreNet, padding 1) predicts the noise,
trained with the ELBO weight beta_t/(2 alpha_t (1 - alpha_bar_t)) |eps - eps_hat|^2 summed over pixels (the seed's
diffusion_loss_new); `x0` and `v` train with that same eps-space loss after the exact conversion.
Every model samples by DDPM ancestral steps with variance beta_t (the seed's samplers), from the
same noise; then pixel FID (seed 001's, against the first test images) and classifier FID.

`n_seeds` > 1 trains every model again at the seeds --seed + 1, ..., --seed + n_seeds - 1 (initial
weights, data order and sampling noise) and decides the claim over all of them: whether eps draws
digits is chance on the seed's network (docs/results/paper/parameterisation-seeds/), so one run
decides nothing either way.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import torch

from experiments._shared import SEED001, SEED001_TRAIN
from experiments.plotting import grid_figure, markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.common.config import check
from zoo.common.data import load_dataset, to_unit
from zoo.common.nets import ARCHITECTURES
from zoo.common.trainer import TrainConfig
from zoo.common.utils import module_device
from zoo.evaluation import EvalConfig, draw, quality, real_floor
from zoo.gaussian.model import Config, GaussianDiffusion
from zoo.report import Report, Result, figure, verdict
from zoo.runs import epoch_curve

LOSS_OF = {"mean": dict(loss="mean-matching", mm_target="posterior", mm_reduction="mean"),
           "eps": dict(loss="elbo-eps"), "x0": dict(loss="elbo-eps"), "v": dict(loss="elbo-eps")}


@dataclass(frozen=True)
class ParameterisationConfig:
    # The seed's small ScoreNet; DDPM sampling with variance beta_t (the seed samples with
    # 1 - alpha_t), x0_hat not clamped (the seed does not clamp).
    # The seed's pixels in [0, 1] (`mnist-unit`), which its padded eps network needs to see the image's
    # mean level (docs/results/paper/parameterisation-diagnostics: on [-1, 1] its samples saturate).
    model: Config = replace(SEED001, data="mnist-unit", channels=(8, 16, 32, 64), sampler="ddpm", variance="beta",
                            clip_x0=False)
    # StepLR(30, 0.1): the seed's In [14], which trained the mean network of the 12.6, and whose
    # hyperparameter cell In [22] repeats for eps (its scheduler line is not in the write-up). Under
    # either schedule eps draws digits only in some runs: one of five at seeds 0, 1 and 2
    # (docs/results/paper/parameterisation-seeds/).
    train: TrainConfig = replace(SEED001_TRAIN, step_size=30)
    eval: EvalConfig = EvalConfig(n_samples=1000, sample_chunk=500, n_ref=1000, n_test=0)
    params: tuple[str, ...] = ("mean", "eps", "x0", "v")
    # The network of eps, x0 and v: the seed's Coding II ScoreNet has padding 1, its mean network
    # (In [2], `model.arch`) none.
    pred_arch: str = "scorenet-padded"
    # The mean model's training steps t_min..T: SPEC's 1 by default. The seed's diffusion_loss_reduced
    # (randint(1, T) over 0-based steps) never trains step 1, and with step 1 (loss weight
    # 1/(2 beta_1) = 5000) its own code's mean training spikes back to the plateau (seed_mean_probe.py).
    mean_t_min: int = 1
    n_train: int = 50000
    digits: float = 10.0  # the claim is tested only where mean and eps both make digits: classifier FID below this
    n_seeds: int = 1  # training seeds --seed, --seed + 1, ...; > 1: the verdict counts seeds

    def __post_init__(self):
        check(isinstance(self.n_seeds, int) and self.n_seeds >= 1, f"n_seeds must be an integer >= 1, got {self.n_seeds}")
        check(self.pred_arch in ARCHITECTURES,
              f"unknown pred_arch {self.pred_arch!r}; choose from {', '.join(ARCHITECTURES)}")
        check(isinstance(self.mean_t_min, int) and 1 <= self.mean_t_min <= self.model.T,
              f"mean_t_min must be an integer in [1, model.T = {self.model.T}], got {self.mean_t_min}")


CLAIM = """
Final project I.9 and II: the mean parameterisation mu = rho0 (x_t - rho1 delta) (small ScoreNet
[8, 16, 32, 64], learnable rho0/rho1 with their own learning rate 0.2, per-pixel mean-matching
loss) gave "FID: 12.6141" on raw pixels for 1000 samples; predicting the noise eps instead, with
the loss (1 - alpha_t)/(2 alpha_t (1 - alpha_bar_t)) |eps - eps_theta|^2, gave "FID score
(pixel-space) = 5.0627": eps prediction is the better parameterisation (pixel FID 12.6 -> 5.06).
"""


def _train_and_score(cfg: ParameterisationConfig, ctx: RunContext, x: torch.Tensor, param: str, seed: int):
    """(result row, training curve, the first 64 samples or None) of one model trained at `seed`."""
    torch.manual_seed(seed)
    arch, t_min = (cfg.model.arch, cfg.mean_t_min) if param == "mean" else (cfg.pred_arch, cfg.model.t_min)
    model = GaussianDiffusion(replace(cfg.model, param=param, arch=arch, t_min=t_min, **LOSS_OF[param]))
    tag = param if seed == ctx.seed else f"{param}-seed{seed}"  # the first seed's tags as before (--resume)
    trainer = ctx.fit(model, (x,), cfg.train, tag, guarded=True, seed_offset=seed - ctx.seed)
    curve = epoch_curve(trainer, "train_loss")
    r = {"loss": LOSS_OF[param]["loss"], "arch": arch, "t_min": t_min, "train_seconds": trainer.train_seconds,
         "diverged": trainer.error, "final_train_loss": curve[-1] if curve else float("nan")}
    if param == "mean":
        r.update(rho0=model.rho0.item(), rho1=model.rho1.item())
    shown = None
    if trainer.error is None:  # the same noise for every model of a seed
        gen = torch.Generator(device=module_device(model)).manual_seed(seed + 1)  # on the GPU too: no host noise per step
        out = draw(model, cfg.eval.n_samples, cfg.eval.sample_chunk, gen)
        r.update(quality(out.x, cfg.model.data, cfg.eval.n_ref), sample_seconds=out.seconds)
        shown = to_unit(out.x[:64], cfg.model.data)
    return r, curve, shown


def run(cfg: ParameterisationConfig, ctx: RunContext) -> Result:
    x, _ = load_dataset(cfg.model.data, "train", limit=cfg.n_train)  # mnist-unit: the seed's [0, 1] pixels
    seeds = [ctx.seed + i for i in range(cfg.n_seeds)]
    per_seed, panels, curves = {}, {}, {}
    for seed in seeds:
        per_seed[seed] = {}
        for param in cfg.params:
            r, curve, shown = _train_and_score(cfg, ctx, x, param, seed)
            per_seed[seed][param] = r
            if seed == ctx.seed:  # the figures show the first seed
                curves[param] = curve
                if shown is not None:
                    panels[f"{param}: pixel FID {r['pixel_fid']:.2f}, classifier FID {r['classifier_fid']:.1f}"] = shown
    results = per_seed[ctx.seed]
    ctx.remove_checkpoints()
    floor = real_floor(cfg.model.data, cfg.eval.n_samples, cfg.eval.n_ref, ceiling=True, seed=ctx.seed + 2)
    ceiling = floor.pop("ceiling")  # uniform noise: what no learning scores
    panels["real training images"] = to_unit(x[:64], cfg.model.data)

    grids_png = ctx.savefig(grid_figure(panels, nrow=8), "samples")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for param, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, marker="o", ms=3, label=f"{param} ({LOSS_OF[param]['loss']})")
    ax.set(xlabel="epoch", ylabel="training loss (each its own loss)", yscale="log", title="Training losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    loss_png = ctx.savefig(fig, "losses")

    rows = [{"parameterisation": p, "network": r["arch"], "loss": r["loss"],
             "training steps": f"{r['t_min']}..{cfg.model.T}", "pixel FID": r.get("pixel_fid", float("nan")),
             "classifier FID": r.get("classifier_fid", float("nan")), "train s": r["train_seconds"],
             "diverged": "yes" if r["diverged"] else "no"} for p, r in results.items()]
    for label, ref in (("real train images", floor), ("uniform noise", ceiling)):
        rows.append({"parameterisation": f"{label} ({cfg.eval.n_samples})", "network": "-", "loss": "-",
                     "training steps": "-", "pixel FID": ref["pixel_fid"], "classifier FID": ref["classifier_fid"],
                     "train s": "-", "diverged": "-"})
    ok = {p: "pixel_fid" in r for p, r in results.items()}
    both = ok.get("mean") and ok.get("eps")
    done = [p for p in results if ok[p]]
    by_pixel = bool(both and results["eps"]["pixel_fid"] < results["mean"]["pixel_fid"])
    by_classifier = bool(both and results["eps"]["classifier_fid"] < results["mean"]["classifier_fid"])
    rho = (f"Learned rho0 = {results['mean']['rho0']:.4f}, rho1 = {results['mean']['rho1']:.4f} (initialised at 1). "
           if "mean" in results else "")
    if "mean" in results and abs(results["mean"]["rho1"]) < 0.1:
        rho += (f"On its learning rate {cfg.model.rho_lr}, rho1 fell from 1 towards 0 within the first epoch (the "
                "untrained output delta only added error), which leaves mu ~ rho0 x_t unless the network's output "
                "grows as 1/rho1; the seed's own code does the same on these data "
                "(docs/results/paper/parameterisation-diagnostics/seed_mean_probe.py). ")
    # The comparison tests the claim only if both models make digits (issue 14): classifier FID below
    # `digits` (real digits score ~0.3 on 1000 samples, uniform noise ~340).
    informative = bool(both and max(results["mean"]["classifier_fid"], results["eps"]["classifier_fid"]) < cfg.digits)
    reproduced = by_pixel and informative
    finding = (f"eps prediction reaches pixel FID {results['eps']['pixel_fid']:.2f} against "
               f"{results['mean']['pixel_fid']:.2f} for the rho-mean network (classifier FID "
               f"{results['eps']['classifier_fid']:.1f} against {results['mean']['classifier_fid']:.1f}): the seed's "
               f"direction {'holds' if by_pixel else 'does not hold'} on pixel FID, and eps is "
               f"{'better' if by_classifier else 'not better'} on classifier FID (the headline metric, SPEC 10). "
               + ("Both models make digits (classifier FID below "
                  f"{cfg.digits:g}), so this ordering tests the claim." if informative else
                  f"But not both make digits at this budget (classifier FID not below {cfg.digits:g}; uniform noise "
                  f"scores {ceiling['classifier_fid']:.0f}; see the grids), so this ordering is no evidence either way.")
               if both else _why_not_compared(cfg.params, ok))
    body = [f"FIDs from {cfg.eval.n_samples} samples per model, all from the same noise; with fewer than 1000 "
            f"samples both are biased upwards: compare rows, not the seed's absolute numbers. The seed's data "
            f"were in [0, 1]; this run's are `{cfg.model.data}` ("
            f"{'[0, 1], as the seed' if cfg.model.data == 'mnist-unit' else '[-1, 1]'}), which sets the scale of what the mean "
            f"network learns.",
            markdown_table(rows), rho, figure(grids_png), figure(loss_png)]
    criterion = f"eps has the lower pixel FID, both models making digits (classifier FID below {cfg.digits:g})"
    numbers = {f"{p}_pixel_fid": results[p].get("pixel_fid") for p in ("mean", "eps") if p in results}
    metrics = {"results": results, "real_floor": floor, "noise_ceiling": ceiling, "informative": informative,
               "train_curves": curves, "reproduced": reproduced, "eps_better_pixel_fid": by_pixel,
               "eps_better_classifier_fid": by_classifier, "n_samples": cfg.eval.n_samples}
    if cfg.n_seeds > 1:
        seeds_part, informative, reproduced, criterion, numbers = _over_seeds(cfg, per_seed)
        body.insert(2, seeds_part["table"])
        finding = f"At seed {ctx.seed} (the first table and the figures): {finding} {seeds_part['finding']}"
        metrics.update(seeds=seeds, per_seed={str(s): r for s, r in per_seed.items()}, informative=informative,
                       reproduced=reproduced, **{k: v for k, v in seeds_part.items() if k not in ("table", "finding")})
    v = verdict(reproduced if informative else None, criterion, **numbers)
    title = "Mean (rho0, rho1) vs eps prediction (and x0, v): sample FID"
    return Result(metrics, Report(title, CLAIM, body, finding, v))


def _over_seeds(cfg: ParameterisationConfig, per_seed: dict[int, dict[str, dict]]):
    """The claim over seeds: tested where both models make digits at more than half of them, and then
    reproduced where eps also has the lower pixel FID at more than half of all seeds. Returns (a table
    and a finding sentence with the counts, informative, reproduced, criterion, numbers)."""
    n = len(per_seed)
    digits = {p: [s for s, rs in per_seed.items() if rs.get(p, {}).get("classifier_fid", math.inf) < cfg.digits]
              for p in cfg.params}
    both = [s for s in per_seed if s in digits.get("mean", []) and s in digits.get("eps", [])]
    wins = [s for s in both if per_seed[s]["eps"]["pixel_fid"] < per_seed[s]["mean"]["pixel_fid"]]
    informative, reproduced = len(both) > n / 2, len(wins) > n / 2
    fmt = lambda v: "-" if v is None or not math.isfinite(v) else f"{v:.1f}"  # noqa: E731
    rows = [{"parameterisation": p,
             **{f"seed {s}": f"{fmt(rs[p].get('pixel_fid'))} / {fmt(rs[p].get('classifier_fid'))}"
                for s, rs in per_seed.items()},
             "digits at": f"{len(digits[p])} of {n}",
             "median pixel FID": statistics.median(rs[p].get("pixel_fid", math.inf) for rs in per_seed.values())}
            for p in cfg.params]
    table = (f"Every seed (pixel / classifier FID; `-`: diverged). A model makes digits where its classifier FID "
             f"is below {cfg.digits:g}.\n\n" + markdown_table(rows))
    finding = (f"Over {n} seeds ({', '.join(map(str, per_seed))}): both mean and eps make digits at {len(both)} of "
               f"them, and eps has the lower pixel FID at {len(wins)} of those; the verdict counts seeds.")
    criterion = (f"over {n} seeds: both models make digits (classifier FID below {cfg.digits:g}) at more than half "
                 f"of them, and eps has the lower pixel FID at more than half of them")
    return ({"table": table, "finding": finding, "seeds_with_digits": digits, "seeds_both_digits": both,
             "seeds_eps_wins": wins}, informative, reproduced, criterion,
            {"seeds": n, "both_make_digits": len(both), "eps_wins": len(wins)})


def _why_not_compared(params: tuple[str, ...], ok: dict[str, bool]) -> str:
    missing = [p for p in ("mean", "eps") if p not in params]
    if missing:
        return (f"This run trained {', '.join(params)} only, without {' and '.join(missing)}, so it does not compare "
                f"mean with eps; its numbers stand beside another run's.")
    failed = " and ".join(p for p in ("mean", "eps") if not ok[p])
    return f"The {failed} model diverged, so the comparison could not be made."


_BASE = ParameterisationConfig()
PRESETS = {
    # Two columns only: each FID costs two 784 x 784 eigendecompositions, the bulk of the test's time.
    "smoke": replace(_BASE, params=("mean", "eps"), n_train=60, model=replace(_BASE.model, channels=(4, 8, 8, 16), T=20),
                     train=replace(_BASE.train, epochs=1, batch_size=20),
                     eval=replace(_BASE.eval, n_samples=40, n_ref=40, sample_chunk=20)),
    # 720 steps instead of 30000 on [-1, 1] pixels, every model on the unpadded network: x0_hat is
    # clamped while sampling (the seed does not), else the under-trained eps models saturate to black
    # and white.
    "quick": replace(_BASE, n_train=6000, model=replace(_BASE.model, data="mnist-grey", clip_x0=True),
                     pred_arch="scorenet", train=replace(_BASE.train, epochs=12, step_size=4),
                     eval=replace(_BASE.eval, n_samples=500)),
    # The seed's exact setting, its mean model's step range included.
    "paper": replace(_BASE, mean_t_min=2),
}
experiment("parameterisation", "rho-mean vs eps (and x0, v) prediction on the seed ScoreNet: pixel and classifier FID",
           PRESETS, order=5)(run)
