"""`parameterisation`: what the seed ScoreNet predicts, judged by sample FID (seed 001, I.9 and II).

`mean`: the network output delta gives mu = rho0 (x_t - rho1 delta) with learnable rho0, rho1 on
their own learning rate, trained with the per-pixel mean-matching loss (posterior draw of x_{t-1},
the seed's diffusion_loss_reduced); `eps`: the network predicts the noise, trained with the ELBO
weight beta_t/(2 alpha_t (1 - alpha_bar_t)) |eps - eps_hat|^2 summed over pixels (the seed's
diffusion_loss_new); `x0` and `v` train with that same eps-space loss after the exact conversion.
Every model samples by DDPM ancestral steps with variance beta_t (the seed's samplers), from the
same noise; then pixel FID (seed 001's, against the first test images) and classifier FID.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from experiments._shared import epoch_curve, remove_checkpoints, seed001_config, timed, train_guarded, unit
from experiments.plotting import grid_figure, markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.common.data import load_mnist
from zoo.common.metrics import sample_metrics
from zoo.gaussian.model import GaussianDiffusion

LOSS_OF = {"mean": dict(loss="mean-matching", mm_target="posterior", mm_reduction="mean"),
           "eps": dict(loss="elbo-eps"), "x0": dict(loss="elbo-eps"), "v": dict(loss="elbo-eps")}


@dataclass(frozen=True)
class ParameterisationConfig:
    params: tuple[str, ...] = ("mean", "eps", "x0", "v")
    channels: tuple[int, ...] = (8, 16, 32, 64)  # the seed's FIDs are of its small ScoreNet
    n_train: int = 50000
    T: int = 200
    epochs: int = 60
    batch_size: int = 100
    lr: float = 0.01
    rho_lr: float = 0.2
    step_size: int = 20  # StepLR epochs (SPEC: 20 x 0.1)
    gamma: float = 0.1
    grad_clip: float | None = None  # the seed clips nothing
    n_samples: int = 1000
    n_ref: int = 1000  # pixel FID against the first n_ref test images
    variance: str = "beta"  # DDPM reverse variance: the seed samples with 1 - alpha_t = beta_t
    clip_x0: bool = False  # the seed does not clamp x0_hat while sampling
    sample_batch: int = 500


CLAIM = """
Final project I.9 and II: the mean parameterisation mu = rho0 (x_t - rho1 delta) (small ScoreNet
[8, 16, 32, 64], learnable rho0/rho1 with their own learning rate 0.2, per-pixel mean-matching
loss) gave "FID: 12.6141" on raw pixels for 1000 samples; predicting the noise eps instead, with
the loss (1 - alpha_t)/(2 alpha_t (1 - alpha_bar_t)) |eps - eps_theta|^2, gave "FID score
(pixel-space) = 5.0627": eps prediction is the better parameterisation (pixel FID 12.6 -> 5.06).
"""


def run(cfg: ParameterisationConfig, ctx: RunContext) -> dict:
    x, _ = load_mnist("train", view="grey", limit=cfg.n_train)
    gen_x_T = lambda: torch.Generator().manual_seed(ctx.seed + 1)  # noqa: E731  the same noise for every model
    results, panels, curves = {}, {}, {}
    for param in cfg.params:
        torch.manual_seed(ctx.seed)
        model = GaussianDiffusion(seed001_config(cfg.channels, T=cfg.T, param=param, rho_lr=cfg.rho_lr,
                                                 variance=cfg.variance, clip_x0=cfg.clip_x0, **LOSS_OF[param]))
        trainer, error = train_guarded(ctx, model, (x,), param, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                       lr=cfg.lr, lr_schedule="step", step_size=cfg.step_size, gamma=cfg.gamma,
                                       grad_clip=cfg.grad_clip, ema_decay=0.0, log_every=10 ** 9)
        curves[param] = epoch_curve(trainer, "train_loss")
        r = {"loss": LOSS_OF[param]["loss"], "train_seconds": trainer.train_seconds, "diverged": error,
             "final_train_loss": curves[param][-1] if curves[param] else float("nan")}
        if param == "mean":
            r.update(rho0=model.rho0.item(), rho1=model.rho1.item())
        if error is None:
            gen = gen_x_T()
            chunks, seconds = [], 0.0
            for i in range(0, cfg.n_samples, cfg.sample_batch):
                s, dt = timed(lambda: model.sample(min(cfg.sample_batch, cfg.n_samples - i), generator=gen,
                                                   sampler="ddpm", variance=cfg.variance), ctx.device)
                chunks.append(s.cpu())
                seconds += dt
            samples = unit(torch.cat(chunks))  # (n, 1, 28, 28) in [0, 1]
            r.update(sample_metrics(samples, n_ref=cfg.n_ref), sample_seconds=seconds)
            panels[f"{param}: pixel FID {r['pixel_fid']:.2f}, classifier FID {r['classifier_fid']:.1f}"] = samples[:64]
        results[param] = r
    remove_checkpoints(ctx)
    real = unit(x[-cfg.n_samples:])  # the last training images: the floor a model could reach
    floor = sample_metrics(real, n_ref=cfg.n_ref)
    panels["real training images"] = real[:64]
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(ctx.seed + 2))  # (n, 1, 28, 28)
    ceiling = sample_metrics(noise, n_ref=cfg.n_ref)  # uniform noise: what no learning scores

    grids_png = ctx.savefig(grid_figure(panels, nrow=8), "samples")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for param, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, marker="o", ms=3, label=f"{param} ({LOSS_OF[param]['loss']})")
    ax.set(xlabel="epoch", ylabel="training loss (each its own loss)", yscale="log", title="Training losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    loss_png = ctx.savefig(fig, "losses")

    rows = [{"parameterisation": p, "loss": r["loss"], "pixel FID": r.get("pixel_fid", float("nan")),
             "classifier FID": r.get("classifier_fid", float("nan")), "train s": r["train_seconds"],
             "diverged": "yes" if r["diverged"] else "no"} for p, r in results.items()]
    rows.append({"parameterisation": f"real train images ({len(real)})", "loss": "-", "diverged": "-",
                 "pixel FID": floor["pixel_fid"], "classifier FID": floor["classifier_fid"], "train s": "-"})
    rows.append({"parameterisation": f"uniform noise ({len(noise)})", "loss": "-", "diverged": "-",
                 "pixel FID": ceiling["pixel_fid"], "classifier FID": ceiling["classifier_fid"], "train s": "-"})
    ok = {p: "pixel_fid" in r for p, r in results.items()}
    both = ok.get("mean") and ok.get("eps")
    done = [p for p in results if ok[p]]
    by_pixel = bool(both and results["eps"]["pixel_fid"] < results["mean"]["pixel_fid"])
    by_classifier = bool(both and results["eps"]["classifier_fid"] < results["mean"]["classifier_fid"])
    rho = (f"Learned rho0 = {results['mean']['rho0']:.4f}, rho1 = {results['mean']['rho1']:.4f} (initialised at 1). "
           if "mean" in results else "")
    if "mean" in results and abs(results["mean"]["rho1"]) < 0.1:
        rho += ("With rho1 near 0 the mean is mu ~ rho0 x_t whatever the network outputs: on its learning rate "
                f"{cfg.rho_lr}, rho1 fell towards 0 within the first epoch (most likely because the untrained "
                "output delta only added error), and the network's gradient, scaled by rho1, then stays too "
                "small to recover within this budget. ")
    # The comparison tests the claim only if both models make something digit-like: classifier FID
    # below half that of uniform noise.
    informative = bool(both and max(results["mean"]["classifier_fid"], results["eps"]["classifier_fid"])
                       < ceiling["classifier_fid"] / 2)
    reproduced = by_pixel and informative
    verdict = (f"eps prediction reaches pixel FID {results['eps']['pixel_fid']:.2f} against "
               f"{results['mean']['pixel_fid']:.2f} for the rho-mean network (classifier FID "
               f"{results['eps']['classifier_fid']:.1f} against {results['mean']['classifier_fid']:.1f}). The seed's "
               f"direction (pixel FID 12.6 -> 5.06, eps better) {'holds' if by_pixel else 'does not hold'} "
               f"on pixel FID at this preset, and eps is {'better' if by_classifier else 'not better'} on classifier "
               f"FID (the headline metric, SPEC 10). "
               + ("Both models make digit-like samples, so this ordering tests the claim."
                  if informative else
                  f"But at this budget the two are not digit generators (classifier FID at or past half of uniform "
                  f"noise's {ceiling['classifier_fid']:.0f}; see the grids), so this ordering is no evidence for or "
                  f"against the seed's claim: the claim is not tested at this preset")
               if both else "the mean or eps model diverged, so the comparison could not be made")
    body = (f"Setting: {len(x)} MNIST train images in [-1, 1], seed ScoreNet {list(cfg.channels)}, T = {cfg.T}, linear "
            f"betas 1e-4..0.1, {cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr} (rho0/rho1: {cfg.rho_lr}), "
            f"StepLR {cfg.step_size} x {cfg.gamma}, grad clip {cfg.grad_clip}, no EMA; DDPM sampling with variance "
            f"{cfg.variance}, x0_hat clamped to [-1, 1] while sampling: "
            f"{'yes (the seed does not)' if cfg.clip_x0 else 'no (as the seed)'}, {cfg.n_samples} samples per model "
            f"from the same noise. Pixel FID is seed 001's (784 pixels in [0, 1] against the first "
            f"{cfg.n_ref} test images); classifier FID uses the shipped MNIST classifier's features against the "
            f"10k test images. With fewer than 1000 samples both FIDs are biased upwards; compare rows, not the "
            f"seed's absolute numbers. The seed's data were in [0, 1], here [-1, 1], which changes the scale of "
            f"what the mean network learns.\n\n{markdown_table(rows)}\n\n{rho}\n\n![samples]({grids_png})\n\n"
            f"![losses]({loss_png})\n\n**Finding.** {verdict}. Lowest classifier FID at this preset: "
            f"{min(done, key=lambda p: results[p]['classifier_fid'], default='none')}; lowest pixel FID: "
            f"{min(done, key=lambda p: results[p]['pixel_fid'], default='none')}.")
    ctx.write_report("Mean (rho0, rho1) vs eps prediction (and x0, v): sample FID", CLAIM, body)
    return {"results": results, "real_floor": floor, "noise_ceiling": ceiling, "informative": informative,
            "train_curves": curves, "reproduced": reproduced,
            "eps_better_pixel_fid": by_pixel, "eps_better_classifier_fid": by_classifier,
            "n_samples": cfg.n_samples}


PRESETS = {
    # Two columns only: each FID costs two 784 x 784 eigendecompositions, the bulk of the test's time.
    "smoke": ParameterisationConfig(params=("mean", "eps"), n_train=60, channels=(4, 8, 8, 16), T=20, epochs=1, batch_size=20,
                                    n_samples=40, n_ref=40, sample_batch=20),
    # 720 steps instead of 30000: x0_hat is clamped while sampling (the seed does not), else the
    # under-trained eps models saturate to black and white.
    "quick": ParameterisationConfig(n_train=6000, epochs=12, step_size=4, n_samples=500, clip_x0=True),
    "paper": ParameterisationConfig(),
}
experiment("parameterisation", "rho-mean vs eps (and x0, v) prediction on the seed ScoreNet: pixel and classifier FID",
           PRESETS, order=5)(run)
