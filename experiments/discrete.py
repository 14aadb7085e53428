"""`discrete`: absorbing (masked) diffusion against bit-flip (uniform) diffusion, a VAE and Gaussian
diffusion with a binary decoder, on the same binarised MNIST in nats per image (issue 16, SPEC 11).

Every formulation trains through the one Trainer on the same binarised images with the same step
budget; then on the same binarised test images: the ELBO in nats per image (every t evaluated; the
VAE's IWAE bound besides its ELBO), classifier FID of binarised samples, NFE and seconds, and the
absorbing model's sample quality against its number of sampling steps (bit-flip's T is fixed: one
point). Samples are read as binary images by their sign: the data's two levels, the Gaussian
decoder's bin edge at 0 (SPEC 11); the discrete models' samples are already in {-1, +1}.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from experiments.plotting import grid_figure, markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.binary.absorbing_model import Config as AbsorbingConfig
from zoo.binary.model import Config as BinaryConfig
from zoo.common.config import check
from zoo.common.data import load_dataset, to_unit
from zoo.common.nets import count_parameters
from zoo.common.trainer import TrainConfig
from zoo.evaluation import EvalConfig, draw, likelihood, mean_se, quality, real_floor
from zoo.formulations import module
from zoo.gaussian.model import Config as GaussianConfig
from zoo.report import Report, Result, figure, verdict
from zoo.vae.model import Config as VAEConfig

_NET = dict(channels=(16, 32), embed_dim=32, groups=8)  # the two discrete diffusions' U-Net


@dataclass(frozen=True)
class Models:
    """The formulations compared, by their zoo.formulations names, all on the same binarised data."""

    absorbing: AbsorbingConfig = AbsorbingConfig(T=20, schedule="linear", loss="continuous", **_NET)
    binary: BinaryConfig = BinaryConfig(T=20, schedule="constant", kappa_T=1e-3, parameterisation="x0", **_NET)
    gaussian: GaussianConfig = GaussianConfig(data="mnist-binary", channels=(16, 32), schedule="cosine", T=50,
                                              param="eps", loss="simple", sampler="ddim", steps=20)
    vae: VAEConfig = VAEConfig(data="mnist-binary", likelihood="bernoulli", arch="conv", latent_dim=32, hidden=256,
                               channels=(32, 64), iwae_k=200, elbo_samples=10)


LABELS = {"absorbing": "absorbing diffusion", "binary": "bit-flip diffusion (uniform)",
          "gaussian": "Gaussian VP, binary decoder", "vae": "VAE (Bernoulli)"}


@dataclass(frozen=True)
class DiscreteConfig:
    model: Models = Models()
    # The same budget for every model. EMA off at a few hundred steps (the bounds of the weights as
    # trained); the paper preset averages with 0.999 (horizon ~1000 of 40000 steps, warm-up SPEC 11).
    train: TrainConfig = TrainConfig(steps=200, batch_size=64, lr=2e-3, log_every=10, val_every=0)
    eval: EvalConfig = EvalConfig(n_samples=200, sample_chunk=200, n_ref=1000, n_test=100, nll_chunk=100,
                                  elbo_terms=True)  # the same n_test images for every row
    absorbing_steps: tuple[int, ...] = (2, 5, 10, 20)  # sampling steps S of the quality-vs-steps curve
    fid_max: float = 10.0  # the verdict needs digits: classifier FID below this for both diffusions
    n_train: int | None = None  # training images (None: all 50k)

    def __post_init__(self):
        datas = {getattr(self.model, f.name).data for f in fields(self.model)}
        check(len(datas) == 1, f"every model must train on the same data, got {sorted(datas)}")
        T = self.model.absorbing.T
        check(all(1 <= s <= T for s in self.absorbing_steps),
              f"absorbing_steps must lie in 1..{T} (the absorbing T), got {self.absorbing_steps}")


CLAIM = """
D3PM (Austin et al. 2021, Table 2, CIFAR-10): the absorbing-state corruption gives a tighter bound
than the uniform one (NLL <= 3.44 vs <= 5.08 bits/dim); the masked-diffusion models that followed
(MDLM, MD4) train on its weighted cross-entropy ELBO. Bit-flip diffusion is D3PM's uniform process
with two states. Here: on binarised MNIST, with the same network, data and step budget, the
absorbing ELBO should be below the bit-flip ELBO in nats per image. Beside them, for scale: a VAE
(ELBO and IWAE) and Gaussian diffusion whose decoder at t = 1 is the two binary levels.
"""
CRITERION = ("absorbing -ELBO below bit-flip -ELBO by more than 2 paired standard errors on the same test "
             "images; not tested unless both diffusions make digits (classifier FID below {fid_max:g})")


def binarised(x: torch.Tensor) -> torch.Tensor:
    """Samples as binary images in {-1, +1}: the sign, the bin edge of the binary decoder (SPEC 11)."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def _steps_figure(curve: list[dict], points: dict[str, dict], floor: float, labels: dict[str, str]):
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["steps"] for r in curve], [r["classifier_fid"] for r in curve], "o-", label=labels["absorbing"])
    for (name, r), marker in zip(points.items(), "*sD^"):
        ax.plot([r["nfe"]], [r["samples"]["classifier_fid"]], marker, ms=10, ls="none", label=labels[name])
    ax.axhline(floor, ls="--", color="gray", label="training images (floor)")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps = network evaluations per image",
           ylabel="classifier FID (binarised)", title="Sample quality against the number of sampling steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def run(cfg: DiscreteConfig, ctx: RunContext) -> Result:
    data = cfg.model.binary.data
    x_train = load_dataset(data, "train", limit=cfg.n_train)[0]
    test = load_dataset(data, "test", limit=cfg.eval.n_test, seed=ctx.seed + 1)[:1]  # the same images for all
    ev = cfg.eval
    labels = {f.name: LABELS[f.name] + (f" (T = {t})" if (t := getattr(getattr(cfg.model, f.name), "T", None)) else "")
              for f in fields(cfg.model)}
    metrics: dict = {"dataset": data, "n_train": len(x_train), "n_test": len(test[0]), "steps": cfg.train.steps,
                     "batch_size": cfg.train.batch_size, "torch_threads": torch.get_num_threads()}
    trained = {}
    for f in fields(cfg.model):
        torch.manual_seed(ctx.seed)
        model = module(f.name).build(getattr(cfg.model, f.name))
        trainer = ctx.fit(model, (x_train,), cfg.train, f.name)
        trained[f.name] = trainer.averaged_model()
        metrics[f.name] = {"parameters": count_parameters(model), "train_seconds": trainer.train_seconds}
    ctx.remove_checkpoints()  # the run directory keeps no checkpoints
    gen, per_image, panels = torch.Generator(device=ctx.device), {}, {}
    for name, model in trained.items():
        summary, per = likelihood(model, test, ev.nll_chunk, gen.manual_seed(ctx.seed + 11), terms=True)
        per_image[name] = per["elbo_total"]
        out = draw(model, ev.n_samples, ev.sample_chunk, gen.manual_seed(ctx.seed + 23))
        x = binarised(out.x)
        metrics[name].update(summary, nfe=out.nfe, sample_seconds_per_1000=out.seconds_per_1000,
                             samples=quality(x, data, ev.n_ref))
        panels[labels[name]] = to_unit(x[:64])
    panels["training images"] = to_unit(x_train[:64])
    gap = per_image["absorbing"] - per_image["binary"]  # paired: the same test images
    metrics["absorbing_minus_binary"], metrics["absorbing_minus_binary_se"] = mean_se(gap)
    curve = []
    for s in cfg.absorbing_steps:
        out = draw(trained["absorbing"], ev.n_samples, ev.sample_chunk, gen.manual_seed(ctx.seed + 23), steps=s)
        curve.append({"steps": s, "nfe": out.nfe, **quality(binarised(out.x), data, ev.n_ref),
                      "sample_seconds_per_1000": out.seconds_per_1000})
    metrics["absorbing_steps"] = curve
    metrics["data"] = {"samples": real_floor(data, ev.n_samples, ev.n_ref)}
    figs = {"samples": ctx.savefig(grid_figure(panels, nrow=8), "samples"),
            "steps": ctx.savefig(_steps_figure(curve, {n: metrics[n] for n in ("binary", "gaussian", "vae")},
                                               metrics["data"]["samples"]["classifier_fid"], labels), "quality_vs_steps")}
    return Result(metrics, _report(cfg, metrics, labels, figs))


def _report(cfg: DiscreteConfig, m: dict, labels: dict, figs: dict) -> Report:
    names = [f.name for f in fields(cfg.model)]
    rows = [{"model": labels[n], "-ELBO (nats)": f"{m[n]['elbo_nats']:.2f} ± {m[n]['elbo_se']:.2f}",
             "NLL bound (nats)": f"{m[n]['nll_nats']:.2f} ± {m[n]['nll_se']:.2f}", **m[n]["samples"], "NFE": m[n]["nfe"],
             "train s": m[n]["train_seconds"], "sample s / 1000": m[n]["sample_seconds_per_1000"],
             "params": m[n]["parameters"]} for n in names]
    rows.append({"model": f"training images ({cfg.eval.n_samples}, FID floor)", **m["data"]["samples"]})
    a, b = m["absorbing"], m["binary"]
    gap, se = m["absorbing_minus_binary"], m["absorbing_minus_binary_se"]
    fids = {n: m[n]["samples"]["classifier_fid"] for n in ("absorbing", "binary")}
    makes_digits = all(f < cfg.fid_max for f in fids.values())
    tighter = gap < -2 * se
    curve = m["absorbing_steps"]
    body = [f"Every model trained for the same {cfg.train.steps} steps of batch {cfg.train.batch_size} on the same "
            f"{m['n_train']} binarised images; the bounds are on the same {m['n_test']} binarised test images (± a "
            f"standard error over images). -ELBO: every t of the discrete-time bound evaluated (the VAE: "
            f"{cfg.model.vae.elbo_samples} draws); NLL bound: the same for the diffusions, IWAE with k = "
            f"{cfg.model.vae.iwae_k} for the VAE. FIDs of {cfg.eval.n_samples} samples read as binary images (their "
            f"sign) against binarised test images; with few samples they carry a small-sample bias, so compare them "
            f"with the floor row.", markdown_table(rows),
            figure(figs["samples"], "64 samples of each model (binarised by sign), beside training images."),
            "The absorbing model sampled with S unmasking steps (one network evaluation each):",
            markdown_table(curve, ["steps", "nfe", "classifier_fid", "pixel_fid", "sample_seconds_per_1000"]),
            figure(figs["steps"], "Absorbing diffusion's classifier FID against S; bit-flip (its T), Gaussian "
                   "(DDIM steps) and VAE (one decoder pass) as single points.")]
    order = sorted(names, key=lambda n: m[n]["nll_nats"])
    finding = (f"The absorbing -ELBO is {a['elbo_nats']:.1f} nats per image against bit-flip's {b['elbo_nats']:.1f}: "
               f"a paired difference of {gap:+.1f} ± {se:.1f} nats, so absorbing is "
               f"{'tighter' if tighter else 'not tighter by 2 standard errors'}. Ordered by their NLL bound: "
               + ", ".join(f"{LABELS[n]} {m[n]['nll_nats']:.1f}" for n in order) + " nats. Classifier FID: "
               + ", ".join(f"{LABELS[n]} {m[n]['samples']['classifier_fid']:.1f}" for n in names)
               + f" (training images {m['data']['samples']['classifier_fid']:.1f}); the diffusions "
               f"{'make' if makes_digits else 'do not yet make'} digits by the criterion (FID < {cfg.fid_max:g}). "
               f"Absorbing quality against steps: classifier FID "
               + " -> ".join(f"{r['classifier_fid']:.1f}" for r in curve)
               + f" for S = {', '.join(str(r['steps']) for r in curve)}.")
    v = verdict(tighter if makes_digits else None, CRITERION.format(fid_max=cfg.fid_max), absorbing_elbo=a["elbo_nats"],
                binary_elbo=b["elbo_nats"], paired_gap=gap, paired_se=se, classifier_fid=fids)
    return Report("Absorbing vs uniform (bit-flip) discrete diffusion on binarised MNIST", CLAIM, body, finding, v)


_BASE = DiscreteConfig()
_TINY = dict(channels=(8, 16), embed_dim=16, groups=4)
PRESETS = {
    "smoke": replace(_BASE, n_train=64, absorbing_steps=(2, 4),
                     train=replace(_BASE.train, steps=2, batch_size=16, log_every=1),
                     model=Models(absorbing=replace(_BASE.model.absorbing, T=4, **_TINY),
                                  binary=replace(_BASE.model.binary, T=4, **_TINY),
                                  gaussian=replace(_BASE.model.gaussian, channels=(8, 16), T=4, steps=2),
                                  vae=replace(_BASE.model.vae, latent_dim=4, hidden=32, channels=(8, 16), iwae_k=10,
                                              elbo_samples=2)),
                     eval=replace(_BASE.eval, n_test=8, n_samples=16, n_ref=100)),
    "quick": _BASE,
    "paper": replace(_BASE, absorbing_steps=(10, 20, 50, 100, 200, 500, 1000),
                     train=replace(_BASE.train, steps=40000, batch_size=128, lr=1e-3, ema_decay=0.999, log_every=500),
                     model=Models(absorbing=replace(_BASE.model.absorbing, T=1000, channels=(32, 64, 128),
                                                    embed_dim=128, eval_batch=8192),
                                  binary=replace(_BASE.model.binary, T=1000, channels=(32, 64, 128), embed_dim=128,
                                                 eval_batch=8192),
                                  gaussian=replace(_BASE.model.gaussian, channels=(32, 64, 128), T=1000, steps=100),
                                  vae=replace(_BASE.model.vae, iwae_k=5000, elbo_samples=100, eval_batch=8192)),
                     eval=replace(_BASE.eval, n_test=None, n_samples=10000, n_ref=10000, sample_chunk=2000,
                                  nll_chunk=250)),
}
experiment("discrete", "binarised MNIST: absorbing vs bit-flip vs VAE vs Gaussian (binary decoder), nats, FID, "
           "quality against steps", PRESETS, order=12)(run)
