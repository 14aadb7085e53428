"""`binary-vs-vae`: bit-flip diffusion against a VAE on binarised MNIST, in nats (discrete HW).

Both formulations train through the one Trainer on the same binarised images with the same budget
(optimiser steps x batch size); then, on the same binarised test images: the bit-flip diffusion's
ELBO with every t evaluated, the VAE's ELBO and IWAE NLL, FID of binarised samples (through
`sample_metrics`), training time and sampling time with the number of network evaluations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from experiments.plotting import grid_figure, markdown_table, plt
from experiments.registry import RunContext, experiment
from zoo.binary import model as binary_model
from zoo.binary.bitflip import ancestral_sample, fair_coins
from zoo.common.metrics import sample_metrics
from zoo.common.nets import count_parameters
from zoo.common.trainer import Trainer
from zoo.formulations import load_dataset, to_unit
from zoo.vae import model as vae_model

DATASETS = {"threshold": "mnist-binary", "stochastic": "mnist-binary-stochastic"}
ANCHORS = {"vae_elbo": 86.76, "iwae_k50": 84.78}  # Burda et al. (2016), dynamically binarised MNIST


@dataclass(frozen=True)
class BinaryVsVAEConfig:
    binarisation: str = "threshold"  # threshold (pixel > 0.5) | stochastic (seeded coins, fixed)
    n_train: int | None = None  # training images (None: all 50k)
    steps: int = 600  # optimiser steps, the same for both models
    batch_size: int = 64
    lr: float = 2e-3
    ema_decay: float = 0.0
    # bit-flip diffusion
    T: int = 20
    schedule: str = "constant"
    kappa_T: float = 1e-3  # the constant delta is chosen so that kappa_T = (1 - 2 delta)^T
    parameterisation: str = "x0"
    channels: tuple[int, ...] = (16, 32, 32)
    embed_dim: int = 32
    groups: int = 8
    # VAE
    vae_arch: str = "conv"
    latent_dim: int = 32
    vae_hidden: int = 256
    vae_channels: tuple[int, ...] = (32, 64)
    # evaluation
    n_test: int | None = 200  # binarised test images for ELBO / IWAE (None: all 10k)
    iwae_k: int = 200
    vae_elbo_samples: int = 10  # z draws averaged in the VAE's ELBO
    n_samples: int = 500  # generated images for FID and the sampling time
    n_ref: int = 1000  # reference test images of the FID
    eval_batch: int = 2048  # network inputs per call in the evaluations


def _configs(cfg: BinaryVsVAEConfig, data: str):
    b = binary_model.Config(data=data, T=cfg.T, schedule=cfg.schedule, kappa_T=cfg.kappa_T,
                            parameterisation=cfg.parameterisation, channels=tuple(cfg.channels),
                            embed_dim=cfg.embed_dim, groups=cfg.groups, eval_batch=cfg.eval_batch)
    v = vae_model.Config(data=data, likelihood="bernoulli", arch=cfg.vae_arch, latent_dim=cfg.latent_dim,
                         hidden=cfg.vae_hidden, channels=tuple(cfg.vae_channels), iwae_k=cfg.iwae_k,
                         eval_batch=cfg.eval_batch)
    return b, v


def _train(model, name: str, x_train: torch.Tensor, cfg: BinaryVsVAEConfig, ctx: RunContext):
    spe = max(1, len(x_train) // cfg.batch_size)
    tc = ctx.train_config(epochs=math.ceil(cfg.steps / spe), max_steps=cfg.steps, batch_size=cfg.batch_size,
                          lr=cfg.lr, ema_decay=cfg.ema_decay, log_every=max(1, cfg.steps // 60), val_every=0)
    tr = Trainer(model, (x_train,), tc, out_dir=ctx.out_dir, tag=name, meta={"experiment": ctx.name})
    tr.fit()
    curve = [(r["step"], r) for r in tr.history if r["kind"] == "step"]
    return tr.averaged_model(), tr.train_seconds, curve


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return x.mean().item(), (x.std().item() / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def _timed_samples(model, n: int, gen: torch.Generator, chunk: int) -> tuple[torch.Tensor, float]:
    """n samples drawn `chunk` at a time, and the seconds per 1000 images."""
    t0 = time.perf_counter()
    s = torch.cat([model.sample(min(chunk, n - i), generator=gen) for i in range(0, n, chunk)])
    return s, (time.perf_counter() - t0) * 1000 / n


@torch.no_grad()
def _eval_binary(model, x_test: torch.Tensor, gen: torch.Generator, chunk: int = 100) -> dict:
    parts = [model.elbo((x_test[i:i + chunk],), generator=gen) for i in range(0, len(x_test), chunk)]
    total = torch.cat([p["total"] for p in parts])
    kl = torch.cat([p["kl"] for p in parts])  # (N, T)
    mean, se = _mean_se(total)
    return {"elbo_nats": mean, "elbo_se": se, "prior_kl": torch.cat([p["prior"] for p in parts]).mean().item(),
            "kl_per_t": kl.mean(0).tolist(), "per_image": total}


@torch.no_grad()
def _eval_vae(model, x_test: torch.Tensor, cfg: BinaryVsVAEConfig, gen: torch.Generator, chunk: int = 100) -> dict:
    elbo = torch.cat([model.neg_elbo(x_test[i:i + chunk], cfg.vae_elbo_samples, gen)
                      for i in range(0, len(x_test), chunk)])
    iwae = torch.cat([model.iwae_nll(x_test[i:i + chunk], cfg.iwae_k, gen) for i in range(0, len(x_test), chunk)])
    (e, e_se), (w, w_se) = _mean_se(elbo), _mean_se(iwae)
    return {"elbo_nats": e, "elbo_se": e_se, "iwae_nll": w, "iwae_se": w_se, "iwae_k": cfg.iwae_k, "per_image": elbo}


def _chain_figure(model, gen: torch.Generator, n: int = 8):
    """Reverse chain of the bit-flip diffusion: rows are samples, columns Y_t from t = T to 0
    (denser near t = 0, where the image appears)."""
    T = model.T
    keep = sorted({t for t in (T, round(0.75 * T), round(0.5 * T), round(0.25 * T), 3, 2, 1, 0) if t <= T},
                  reverse=True)
    states: dict[int, torch.Tensor] = {}
    y_T = fair_coins((n, 1, 28, 28), generator=gen, device=gen.device)
    states[T] = y_T.clone()
    ancestral_sample(model.logits, y_T, T, generator=gen,
                     callback=lambda t, y: states.__setitem__(t, y.clone()) if t in keep else None)
    grid = torch.stack([states[t] for t in keep], dim=1).reshape(-1, 1, 28, 28)  # (n * cols, 1, 28, 28)
    fig = grid_figure({f"reverse chain, columns t = {', '.join(map(str, keep))}": (grid.cpu() + 1) / 2},
                      nrow=len(keep), scale=0.6)
    return fig


def _curves_figure(curves: dict[str, list], labels: dict[str, str]):
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, curve in curves.items():
        key = "elbo_est" if name == "binary" else "loss"
        steps, vals = [s for s, _ in curve], torch.tensor([r[key] for _, r in curve])
        line, = ax.plot(steps, vals, alpha=0.35, lw=0.8)
        w = min(10, len(vals))  # running mean over w logged points
        smooth = torch.nn.functional.avg_pool1d(vals[None, None], w, stride=1)[0, 0]
        ax.plot(steps[w - 1:], smooth, color=line.get_color(), label=f"{labels[name]} (running mean of {w})")
    ax.set(xlabel="optimiser step", ylabel="training -ELBO estimate (nats per image)", yscale="log",
           title="Training curves (binarised MNIST)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _kl_figure(kl_per_t: list[float], prior: float):
    T = len(kl_per_t)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(range(1, T + 1), kl_per_t, marker=".")
    ax.set(xlabel="t", ylabel="nats per image", yscale="log",
           title=f"Bit-flip ELBO by step (t = 1: -log Q_1(Y_0)); prior term {prior:.2g} nats")
    ax.grid(alpha=0.3, which="both")
    return fig


CLAIM = """
Discrete HW (`004_...`), problem 1: a binary image can be diffused by flipping each pixel with a
small probability delta until it is m fair coins; the reverse step is learned by a network whose
sigmoid outputs Q_t = P(Y_{t-1} = +1 | Y_t), trained with KL(P(Y_{t-1} | Y_t, Y_0) || Q_t), i.e.
binary cross-entropy with time-dependent label smoothing; samples come from fair coins by
ancestral sampling. Problem 2 sets the VAE beside it. The SPEC asks for both on the same
binarised MNIST, in nats per image, with the same training budget. Anchors (Burda et al. 2016,
dynamically binarised MNIST, a different binarisation and much longer training, so not the same
task): VAE -ELBO 86.76 nats, IWAE bound with k = 50: 84.78 nats.
"""


def run(cfg: BinaryVsVAEConfig, ctx: RunContext) -> dict:
    if cfg.binarisation not in DATASETS:
        raise ValueError(f"unknown binarisation {cfg.binarisation!r}; choose from {', '.join(DATASETS)}")
    data = DATASETS[cfg.binarisation]
    x_train = load_dataset(data, "train", limit=cfg.n_train, seed=ctx.seed)[0]
    x_test = load_dataset(data, "test", limit=cfg.n_test, seed=ctx.seed + 1)[0].to(ctx.device)
    b_cfg, v_cfg = _configs(cfg, data)
    models = {"binary": binary_model.build(b_cfg), "vae": vae_model.build(v_cfg)}
    labels = {"binary": f"bit-flip diffusion (T = {cfg.T}, {cfg.parameterisation})",
              "vae": f"VAE ({cfg.vae_arch}, latent {cfg.latent_dim})"}
    metrics: dict = {"dataset": data, "n_train": len(x_train), "n_test": len(x_test), "steps": cfg.steps,
                     "batch_size": cfg.batch_size, "torch_threads": torch.get_num_threads(),
                     "deltas_first": float(models["binary"].deltas[0]), "anchors_burda2016": ANCHORS}
    trained, curves, panels = {}, {}, {}
    for name, model in models.items():
        metrics[name] = {"parameters": count_parameters(model), "nfe": model.nfe}
        trained[name], metrics[name]["train_seconds"], curves[name] = _train(model, name, x_train, cfg, ctx)
        (ctx.out_dir / f"{name}.ckpt").unlink(missing_ok=True)  # the run directory keeps no checkpoints
    gen = torch.Generator(device=ctx.device)

    gen.manual_seed(ctx.seed + 11)
    metrics["binary"].update(_eval_binary(trained["binary"], x_test, gen))
    metrics["vae"].update(_eval_vae(trained["vae"], x_test, cfg, gen))
    diff = metrics["binary"].pop("per_image") - metrics["vae"].pop("per_image")  # paired, same images
    metrics["elbo_gap_binary_minus_vae"], metrics["elbo_gap_se"] = _mean_se(diff)
    for name, model in trained.items():
        gen.manual_seed(ctx.seed + 23)
        samples, sec = _timed_samples(model, cfg.n_samples, gen, chunk=cfg.eval_batch)
        metrics[name]["sample_seconds_per_1000"] = sec
        metrics[name]["samples"] = sample_metrics(to_unit(samples, data).cpu(), binarised=True, n_ref=cfg.n_ref)
        panels[labels[name]] = to_unit(samples[:64], data).cpu()
    gen.manual_seed(ctx.seed + 29)
    panels["VAE decoder means (not binary)"] = to_unit(trained["vae"].sample(64, generator=gen, mean=True), data).cpu()
    ref_train = to_unit(x_train[:cfg.n_samples], data)
    metrics["data"] = {"samples": sample_metrics(ref_train, binarised=True, n_ref=cfg.n_ref)}
    panels["training images"] = ref_train[:64]

    figs = {"samples": ctx.savefig(grid_figure(panels, nrow=8), "samples"),
            "chain": ctx.savefig(_chain_figure(trained["binary"], gen.manual_seed(ctx.seed + 31)), "chain"),
            "curves": ctx.savefig(_curves_figure(curves, labels), "curves"),
            "kl": ctx.savefig(_kl_figure(metrics["binary"]["kl_per_t"], metrics["binary"]["prior_kl"]), "kl_per_t")}
    ctx.write_report("Bit-flip diffusion vs VAE on binarised MNIST", CLAIM, _report(cfg, metrics, labels, figs))
    return metrics


def _report(cfg: BinaryVsVAEConfig, m: dict, labels: dict, figs: dict) -> str:
    b, v = m["binary"], m["vae"]
    fid_keys = list(b["samples"])
    head = next((k for k in fid_keys if "fid" in k and k != "pixel_fid"), fid_keys[0])  # classifier FID if there
    rows = []
    for name, r in (("binary", b), ("vae", v)):
        rows.append({"model": labels[name], "test -ELBO (nats)": f"{r['elbo_nats']:.2f} ± {r['elbo_se']:.2f}",
                     f"IWAE NLL, k = {cfg.iwae_k} (nats)": (f"{r['iwae_nll']:.2f} ± {r['iwae_se']:.2f}"
                                                            if "iwae_nll" in r else "n/a"),
                     **{k: r["samples"][k] for k in fid_keys},
                     "train s": r["train_seconds"], "sample s / 1000": r["sample_seconds_per_1000"],
                     "NFE": r["nfe"], "params": r["parameters"]})
    rows.append({"model": f"training images ({cfg.n_samples}, FID floor)", "test -ELBO (nats)": "",
                 f"IWAE NLL, k = {cfg.iwae_k} (nats)": "", **{k: m["data"]["samples"][k] for k in fid_keys},
                 "train s": "", "sample s / 1000": "", "NFE": "", "params": ""})
    rows.append({"model": "anchor: VAE / IWAE k = 50 (Burda et al., dynamic binarisation)",
                 "test -ELBO (nats)": f"{ANCHORS['vae_elbo']}", f"IWAE NLL, k = {cfg.iwae_k} (nats)":
                 f"{ANCHORS['iwae_k50']} (k = 50)", **{k: "" for k in fid_keys},
                 "train s": "", "sample s / 1000": "", "NFE": "", "params": ""})
    better = "the VAE" if v["elbo_nats"] < b["elbo_nats"] else "the bit-flip diffusion"
    gap = abs(v["elbo_nats"] - b["elbo_nats"])
    top = max(range(len(b["kl_per_t"])), key=lambda i: b["kl_per_t"][i])
    fid_b, fid_v = b["samples"][head], v["samples"][head]
    scope = (f"ELBO / IWAE on the first {m['n_test']} binarised test images, IWAE with k = {cfg.iwae_k}, "
             f"FID ({', '.join(fid_keys)}) of {cfg.n_samples} samples against {cfg.n_ref} binarised test images")
    full = cfg.n_test is None and cfg.iwae_k >= 5000
    ref_note = (" (sample_metrics' reference is the threshold-binarised test set, while the models saw "
                "stochastically binarised images)" if cfg.binarisation == "stochastic" else "")
    return f"""
Data: `{m['dataset']}`, {m['n_train']} training images; both models trained for {cfg.steps} steps of
batch {cfg.batch_size} (lr {cfg.lr}) through the same Trainer. Bit-flip diffusion: T = {cfg.T},
{cfg.schedule} delta = {m['deltas_first']:.4f} (kappa_T = {cfg.kappa_T}), U-Net channels {tuple(cfg.channels)},
`{cfg.parameterisation}` parameterisation. VAE: {cfg.vae_arch} encoder/decoder, latent {cfg.latent_dim},
Bernoulli decoder. Evaluation: {scope}{ref_note}. {'' if full else 'This preset is a reduced budget (subset of the test set, smaller k, few steps): the numbers show the comparison, not converged values; `--preset paper` uses the whole test set and k = 5000.'}
Torch threads: {m['torch_threads']}.

{markdown_table(rows, fmt="{:.4g}")}

The -ELBO of the bit-flip diffusion is the exact decomposition of SPEC 2 with every t evaluated
(one draw of Y_t per t and image): prior KL {b['prior_kl']:.3g} nats + per-step KLs + the t = 1
reconstruction term. The VAE's -ELBO averages {cfg.vae_elbo_samples} draws of z with the analytic KL.
Both are upper bounds on -log p(x) in nats per image on the same binarised test images; the ± are
standard errors over test images. The anchors are on dynamically binarised MNIST after thousands of
epochs: a different task, quoted for scale only.

![samples]({figs['samples']})

*Samples: 64 of each model (diffusion: Bernoulli draws of the final step; VAE: pixels drawn from the
decoder's Bernoulli, then its means, which are grey and not binary), beside training images.*

![reverse chain]({figs['chain']})

![training curves]({figs['curves']})

*Training curves: the diffusion's one-t unbiased estimate prior + T KL_t (noisy) and the VAE's
one-sample -ELBO, both nats per image.*

![KL by step]({figs['kl']})

**Finding.** With the same budget ({cfg.steps} steps x {cfg.batch_size} images), {better} has the lower
(better) -ELBO, by {gap:.1f} ± {m['elbo_gap_se']:.1f} nats (paired over the same test images;
{b['elbo_nats']:.1f} vs {v['elbo_nats']:.1f}); the VAE's IWAE bound
tightens its number to {v['iwae_nll']:.1f} nats. The diffusion's bound is dominated by step t = {top + 1}
({b['kl_per_t'][top]:.1f} nats of {b['elbo_nats']:.1f}). Sample FID ({head}): diffusion {fid_b:.2f},
VAE {fid_v:.2f} (training images: {m['data']['samples'][head]:.2f}). Sampling costs {b['nfe']} network
evaluations per image for the diffusion against 1 decoder pass for the VAE
({b['sample_seconds_per_1000']:.1f} vs {v['sample_seconds_per_1000']:.2f} s per 1000 images).
"""


PRESETS = {
    "smoke": BinaryVsVAEConfig(n_train=64, steps=4, batch_size=16, T=4, channels=(8, 16), embed_dim=16, groups=4,
                               latent_dim=4, vae_hidden=32, vae_channels=(8, 16), n_test=8, iwae_k=10,
                               vae_elbo_samples=2, n_samples=16, n_ref=100),
    "quick": BinaryVsVAEConfig(n_test=500, n_samples=1000),
    "paper": BinaryVsVAEConfig(steps=39000, batch_size=128, lr=1e-3, ema_decay=0.999, T=1000,
                               channels=(32, 64, 128), embed_dim=128, n_test=None, iwae_k=5000,
                               vae_elbo_samples=100, n_samples=10000, n_ref=10000, eval_batch=8192),
}
experiment("binary-vs-vae", "binarised MNIST: ELBO (nats), samples, FID for bit-flip diffusion and VAE",
           PRESETS, order=9)(run)
