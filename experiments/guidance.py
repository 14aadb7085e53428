"""`guidance`: classifier-free guidance on class-conditional models (pset write-up, seed 000, section 3),
Gaussian and discrete (issue 16).

Each formulation (zoo.formulations names) trains a class-conditional U-Net (null class = 10) with
label dropout; samples are drawn for each weight w of one grid, from the same starting state for
every w: the Gaussian model by DDIM (eta = 0) with eps_guided = (1 - w) eps(x, null) + w eps(x, y)
(SPEC 1), bit-flip and absorbing diffusion on binarised MNIST with the same rule on their per-pixel
x0 logits (SPEC 11). Per formulation and w: a 4x10 grid (four rows of the digits 0-9, as in the
seed), the share of samples the shipped classifier reads as the asked label (agreement),
classifier FID and pixel FID (zoo.common.metrics; binarised references for the discrete rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from experiments.plotting import image_grid, markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.binary.absorbing_model import Config as AbsorbingConfig
from zoo.binary.model import Config as BinaryConfig
from zoo.common.data import load_dataset, to_unit
from zoo.common.trainer import TrainConfig
from zoo.common.utils import module_device
from zoo.evaluation import EvalConfig, draw, quality
from zoo.formulations import module
from zoo.gaussian.model import Config
from zoo.report import Report, Result, figure, verdict
from zoo.runs import epoch_curve


_NET = dict(channels=(16, 32), embed_dim=32, groups=8)  # the discrete models' U-Net
_COND = dict(num_classes=10, label_dropout=0.2)  # class-conditional, null class 10


@dataclass(frozen=True)
class Models:
    """One class-conditional model per formulation (zoo.formulations names), each with its own sampler."""

    # A U-Net (null class 10), cosine schedule (suits few-step DDIM and short training), DDIM eta = 0.
    gaussian: Config = Config(arch="unet", channels=(16, 32), schedule="cosine", T=1000, param="eps", loss="simple",
                              sampler="ddim", steps=20, eta=0.0, **_COND)
    # The discrete ones on threshold-binarised MNIST: guided x0 logits (SPEC 11), 20 steps each.
    binary: BinaryConfig = BinaryConfig(data="mnist-binary", T=20, parameterisation="x0", **_NET, **_COND)
    absorbing: AbsorbingConfig = AbsorbingConfig(data="mnist-binary", T=20, schedule="linear", **_NET, **_COND)


@dataclass(frozen=True)
class Budgets:
    """The training of each model (same field names as Models)."""

    # EMA 0.99 (horizon ~100 steps) on 15 x 93 = 1400 steps; the paper preset's 0.999 (~1000 steps) on
    # 30 x 390 = 11700. The warm-up (SPEC 11) keeps the random initial weights out of both averages.
    gaussian: TrainConfig = TrainConfig(epochs=15, batch_size=128, lr=2e-3, lr_schedule="cosine", ema_decay=0.99)
    # The discrete U-Nets cost ~2x a Gaussian step on the CPU: 400 steps of 64 keep their rows to minutes
    # (EMA 0.99 as above); the paper preset gives them the Gaussian budget.
    binary: TrainConfig = TrainConfig(steps=400, batch_size=64, lr=2e-3, lr_schedule="cosine", ema_decay=0.99)
    absorbing: TrainConfig = TrainConfig(steps=400, batch_size=64, lr=2e-3, lr_schedule="cosine", ema_decay=0.99)


@dataclass(frozen=True)
class GuidanceConfig:
    model: Models = Models()
    train: Budgets = Budgets()
    eval: EvalConfig = EvalConfig(n_samples=200, sample_chunk=200, n_test=0)  # per w, labels 0..9 in turn
    n_train: int | None = 12000  # first n MNIST train images (None: all 50k)
    ws: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)  # the same grid for every formulation
    # The claim is tested only where the Gaussian model makes digits at every w: its classifier FID below
    # this (issue 14), else agreement can rise on blobs the classifier happens to read as the asked digit.
    digits: float = 10.0


CLAIM = """
Pset write-up (seed `000_…`), section 3, Question 10 (class-conditional U-Net, guidance weights
w = 0, 0.5, 1, 2, 4, a 4x10 grid per w): "There is a clear pattern that when the weight w
increases, hand-written digits sampled will be more accurate. This makes sense because w = 0
corresponds to unguided generation and as w increases, we incorporate in more information about
the labels." The write-up says nothing else about quality at large w. Its figures are missing; the
transcribed grids (one column per asked digit) match the asked digit in 7/40, 22/40, 36/40, 39/40
and 36/40 cells for w = 0, 0.5, 1, 2, 4, and the w = 4 grid has four empty (unread) cells.
So: agreement with the asked label rises with w, and w = 0 is near chance (10%).
"""

SEED_AGREEMENT = {0.0: 7 / 40, 0.5: 22 / 40, 1.0: 36 / 40, 2.0: 39 / 40, 4.0: 36 / 40}  # transcribed grids
GRID_ROWS = 4  # the seed's grids: four rows of the digits 0-9


def _grids_figure(grids: dict[str, torch.Tensor], nrow: int):
    """The per-w grids stacked vertically, one titled panel each (values in [0, 1])."""
    fig, axes = plt.subplots(len(grids), 1, figsize=(6.2, 2.75 * len(grids)), squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], grids.items()):
        ax.imshow(image_grid(images, nrow), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([(i + 0.5) * 30 + 1 for i in range(nrow)], [str(i) for i in range(nrow)], fontsize=8)
        ax.set_yticks([])
        ax.tick_params(length=0)
        ax.set_xlabel("asked digit", fontsize=8)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.tight_layout()
    return fig


LABELS = {"gaussian": "Gaussian (DDIM, grey)", "binary": "bit-flip (binarised)", "absorbing": "absorbing (binarised)"}


def _curves_figure(ws: list[float], per: dict[str, dict], chance: float):
    """Agreement, classifier FID and pixel FID against w, one line per formulation."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, r in per.items():
        for ax, key in zip(axes, ("agreement", "classifier_fid", "pixel_fid")):
            ax.plot(ws, r[key], "o-", label=LABELS[name])
    axes[0].axhline(chance, ls="--", color="gray", label="chance (1/10)")
    axes[0].set(ylim=(0, 1.02), ylabel="classifier agreement", title="Agreement with the asked label")
    axes[1].set(ylabel="classifier FID", title="Classifier FID (lower is better)")
    axes[2].set(ylabel="pixel FID", title="Pixel FID (lower is better)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.set(xlabel="guidance weight w", xticks=ws)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sweep(model, data: str, ws, ev: EvalConfig, seed: int) -> tuple[list[dict], dict[float, torch.Tensor], float]:
    """Per w: samples asking the labels 0..9 in turn from the same x_T (one generator seed for every
    w) and their quality; (rows, samples in the data view per w, NFE per sample)."""
    labels = torch.arange(ev.n_samples) % 10  # (N,) 0, 1, ..., 9 in turn: rows of the grid
    rows, samples, nfe = [], {}, 0
    for w in ws:
        gen = torch.Generator(device=module_device(model)).manual_seed(seed + 1)  # the same x_T for every w
        out = draw(model, ev.n_samples, ev.sample_chunk, gen, w=w, labels=labels)
        rows.append({"w": w, **quality(out.x, data, ev.n_ref, labels=labels), "sample_seconds": out.seconds})
        samples[w], nfe = out.x, out.nfe
    return rows, samples, nfe


def trend(agree: list[float], n: int) -> tuple[bool, bool]:
    """(rises, near chance): agreement never steps down by more than 2 binomial standard errors and
    the last w is above the first by more than 4; the first is within 3 of chance (1/10)."""
    se = [math.sqrt(max(a * (1 - a), 0.09) / n) for a in agree]  # binomial SE (floor p = 0.1)
    rises = all(b > a - 2 * s for a, b, s in zip(agree, agree[1:], se[1:])) and agree[-1] > agree[0] + 4 * se[0]
    return rises, abs(agree[0] - 0.1) < 3 * se[0]


def run(cfg: GuidanceConfig, ctx: RunContext) -> Result:
    n, ws, per, figs = cfg.eval.n_samples, list(cfg.ws), {}, {}
    for f in fields(cfg.model):
        model_cfg = getattr(cfg.model, f.name)
        torch.manual_seed(ctx.seed)
        model = module(f.name).build(model_cfg)
        data = load_dataset(model_cfg.data, "train", limit=cfg.n_train)  # (x, y)
        trainer = ctx.fit(model, data, getattr(cfg.train, f.name), f.name)
        rows, samples, nfe = sweep(trainer.averaged_model(), model_cfg.data, ws, cfg.eval, ctx.seed)
        agree = [r["agreement"] for r in rows]
        rises, near = trend(agree, n)
        per[f.name] = {**{k: [r[k] for r in rows] for k in ("agreement", "classifier_fid", "pixel_fid",
                                                             "sample_seconds")},
                       "nfe_per_sample": nfe, "final_train_loss": epoch_curve(trainer, "train_loss")[-1],
                       "train_seconds": trainer.train_seconds, "train_steps": trainer.step,
                       "agreement_rises": rises, "w0_near_chance": near}
        grids = {f"w = {w:g}: agreement {a:.2f} over {n} samples": to_unit(x[:GRID_ROWS * 10])
                 for (w, x), a in zip(samples.items(), agree)}
        figs[f.name] = ctx.savefig(_grids_figure(grids, nrow=10), f"grids_{f.name}")
    ctx.remove_checkpoints()
    curves_png = ctx.savefig(_curves_figure(ws, per, chance=0.1), "agreement_fid")
    g = per["gaussian"]
    reproduced = g["agreement_rises"] and g["w0_near_chance"]
    tested = max(g["classifier_fid"]) < cfg.digits
    at = dict(zip(ws, g["agreement"]))
    seed_vs_run = ", ".join(f"w = {w:g}: {at[w]:.2f} vs {s:.2f}" for w, s in SEED_AGREEMENT.items() if w in at)
    table = [{"model": LABELS[name], "w": w, "agreement": r["agreement"][i], "classifier_fid": r["classifier_fid"][i],
              "pixel_fid": r["pixel_fid"][i], "NFE": r["nfe_per_sample"], "sample_seconds": r["sample_seconds"][i]}
             for name, r in per.items() for i, w in enumerate(ws)]
    arrow = lambda xs: " -> ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    body = ["Each model trained through the one Trainer (" + "; ".join(
                f"{LABELS[k]}: {r['train_steps']} steps in {r['train_seconds']:.0f} s, final loss "
                f"{r['final_train_loss']:.4g}"
                for k, r in per.items()) + "). Guided sampling evaluates the null and the conditional model as one "
            "batch of 2N, so NFE is twice the steps. Agreement: the shipped classifier's argmax equals the asked label. "
            f"With {n} samples per w the FIDs carry a small-sample bias: compare them across w; the discrete rows are "
            "compared with binarised test images.", markdown_table(table), figure(curves_png),
            "Each grid: the first 40 samples of that w, four rows of the asked digits 0-9 (one column per digit, as in "
            "the seed); same noise in the same cell across w.", *[figure(png) for png in figs.values()]]
    trends = "; ".join(f"{LABELS[k]}: agreement {arrow(r['agreement'])} (it "
                       f"{'rises' if r['agreement_rises'] else 'does not rise steadily'}), classifier FID "
                       f"{arrow(r['classifier_fid'])}, pixel FID {arrow(r['pixel_fid'])}" for k, r in per.items())
    finding = (f"For w = {', '.join(f'{w:g}' for w in ws)}, {trends}. For the seed's (Gaussian) model w = 0 is "
               f"{'near' if g['w0_near_chance'] else 'not near'} chance ({g['agreement'][0]:.2f} against 0.10; with "
               f"balanced asked labels the unguided model's expected agreement is exactly 1/10); against the seed's "
               f"transcribed grids: {seed_vs_run}. Quality, which the seed does not measure, is in the FIDs."
               + ("" if tested else f" Not tested: the Gaussian model's classifier FID reaches {max(g['classifier_fid']):.1f}, "
                  f"not below {cfg.digits:g} at every w, so at this budget it does not make digits and its agreement "
                  f"is no evidence either way; the paper preset trains long enough."))
    v = verdict(reproduced if tested else None, f"for the Gaussian model (the seed's), making digits at every w "
                f"(classifier FID < {cfg.digits:g}): agreement never steps down by more than 2 binomial "
                f"standard errors, w = {ws[-1]:g} is above w = 0 by more than 4, and w = 0 is within 3 of chance",
                agreement=g["agreement"])
    metrics = {"ws": ws, "n_samples": n, **per, "reproduced": reproduced, "tested": tested}
    title = "Classifier-free guidance: agreement with the asked digit against w, Gaussian and discrete"
    return Result(metrics, Report(title, CLAIM, body, finding, v))


_BASE = GuidanceConfig()
_SMOKE_TRAIN = TrainConfig(steps=2, batch_size=64)
_TINY = dict(channels=(8, 16), embed_dim=16, groups=4)
PRESETS = {
    "smoke": replace(_BASE, n_train=128, ws=(0.0, 1.0, 4.0), eval=replace(_BASE.eval, n_samples=40, sample_chunk=40),
                     model=Models(gaussian=replace(_BASE.model.gaussian, channels=(8, 16), steps=3),
                                  binary=replace(_BASE.model.binary, T=3, **_TINY),
                                  absorbing=replace(_BASE.model.absorbing, T=3, **_TINY)),
                     train=Budgets(_SMOKE_TRAIN, _SMOKE_TRAIN, _SMOKE_TRAIN)),
    "quick": _BASE,
    "paper": replace(_BASE, n_train=None, eval=replace(_BASE.eval, n_samples=1000, sample_chunk=1000),
                     model=Models(gaussian=replace(_BASE.model.gaussian, channels=(32, 64, 128), label_dropout=0.1,
                                                   steps=100),
                                  binary=replace(_BASE.model.binary, T=100, channels=(32, 64, 128), embed_dim=128,
                                                 label_dropout=0.1),
                                  absorbing=replace(_BASE.model.absorbing, T=100, channels=(32, 64, 128), embed_dim=128,
                                                    label_dropout=0.1)),
                     train=Budgets(*[replace(_BASE.train.gaussian, epochs=30, lr=1e-3, ema_decay=0.999)] * 3)),
}
experiment("guidance", "classifier-free guidance w in {0, .5, 1, 2, 4}: Gaussian, bit-flip and absorbing; grids, "
           "agreement, FID", PRESETS, order=7)(run)
