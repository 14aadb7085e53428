"""Pieces the experiments share: training a formulation inside a run directory, timing, curves."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from experiments.registry import RunContext
from zoo.common.trainer import NonFiniteLoss, Trainer
from zoo.gaussian.model import Config


@dataclass(frozen=True)
class MnistBudget:
    """The training budget of a Gaussian micro-U-Net on MNIST, shared by sampler experiments."""

    channels: tuple[int, ...] = (32, 64)  # micro-U-Net widths
    T: int = 1000
    n_train: int | None = None  # None: all 50k training images
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    n_samples: int = 1000  # per sampler setting, for FID
    sample_batch: int = 500


def train(ctx: RunContext, model: nn.Module, data: tuple[torch.Tensor, ...], tag: str,
          val: tuple[torch.Tensor, ...] | None = None, **train_kw) -> Trainer:
    """Train `model` through the shared Trainer into ctx.out_dir/TAG.ckpt (log lines tagged TAG)."""
    trainer = Trainer(model, data, ctx.train_config(**train_kw), out_dir=ctx.out_dir, val_data=val, tag=tag)
    trainer.fit()
    return trainer


def train_guarded(ctx: RunContext, model: nn.Module, data: tuple[torch.Tensor, ...], tag: str,
                  val: tuple[torch.Tensor, ...] | None = None, **train_kw) -> tuple[Trainer, str | None]:
    """Like `train`, but a loss turning NaN/inf ends this model's run, not the experiment:
    (trainer with its history so far, the error message or None)."""
    trainer = Trainer(model, data, ctx.train_config(**train_kw), out_dir=ctx.out_dir, val_data=val, tag=tag)
    try:
        trainer.fit()
    except NonFiniteLoss as e:
        return trainer, str(e)
    return trainer, None


def remove_checkpoints(ctx: RunContext) -> None:
    """Delete the *.ckpt files of a run directory (results are committed without weights)."""
    for path in ctx.out_dir.glob("*.ckpt"):
        path.unlink()


def epoch_curve(trainer: Trainer, key: str) -> list[float]:
    """The per-epoch values of `key` (e.g. train_loss, val_loss) from a trainer's log."""
    return [r[key] for r in trainer.history if r["kind"] == "epoch" and key in r]


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, float]:
    """(fn(), wall seconds), synchronising CUDA around the call."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def seed001_config(channels: tuple[int, ...], **kw) -> Config:
    """Seed 001's diffusion: its ScoreNet at `channels`, linear betas 1e-4..0.1 over T = 200, MNIST in [-1, 1].

    kw overrides any other field (param, loss, mm_reduction, rho_lr, T, ...).
    """
    base = dict(data="mnist-grey", arch="scorenet", channels=tuple(channels), schedule="linear", T=200,
                beta_1=1e-4, beta_T=0.1)
    return Config(**{**base, **kw})


def quantiles(values) -> dict[str, float]:
    """min, 25%, median, 75%, max and the (population) variance of a list of numbers, as the seed prints them."""
    v = np.asarray(values, dtype=np.float64)
    q = np.percentile(v, [0, 25, 50, 75, 100])
    return {"min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]),
            "max": float(q[4]), "variance": float(v.var())}



# --------------------------------------------------------------------------- Gaussian MNIST models


def unit(x: torch.Tensor) -> torch.Tensor:
    """Data view [-1, 1] -> [0, 1], what the metrics and image grids take."""
    return (x.clamp(-1, 1) + 1) / 2


def total_variation(x_unit: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontally and vertically neighbouring pixels, per image (N,)."""
    dx = (x_unit[..., :, 1:] - x_unit[..., :, :-1]).abs().flatten(1).sum(1)  # (N,)
    dy = (x_unit[..., 1:, :] - x_unit[..., :-1, :]).abs().flatten(1).sum(1)  # (N,)
    return (dx + dy) / x_unit[0].numel()


def train_gaussian_mnist(ctx: RunContext, tag: str, *, channels: tuple[int, ...], T: int = 1000,
                         schedule: str = "cosine", n_train: int | None = None, **train_kw):
    """Train an eps-prediction U-Net (sinusoidal time embedding) with the simple loss on grey MNIST.

    Returns (trainer, model): sample inside ``trainer.averaged()`` to use the EMA weights.
    """
    from zoo.common.data import load_mnist
    from zoo.gaussian.model import Config, GaussianDiffusion

    x, _ = load_mnist("train", view="grey", limit=n_train)  # (N, 1, 28, 28) in [-1, 1]
    model = GaussianDiffusion(Config(data="mnist-grey", arch="unet", channels=channels, schedule=schedule, T=T,
                                     param="eps", loss="simple"))
    trainer = train(ctx, model, (x,), tag, val_every=0, **train_kw)
    return trainer, model


def train_on_budget(ctx: RunContext, budget: MnistBudget, tag: str = "unet"):
    """train_gaussian_mnist with the fields of a MnistBudget; returns (trainer, model)."""
    return train_gaussian_mnist(
        ctx, tag, channels=budget.channels, T=budget.T, n_train=budget.n_train, epochs=budget.epochs,
        max_steps=budget.max_steps, batch_size=budget.batch_size, lr=budget.lr, ema_decay=budget.ema_decay,
        log_every=10)


def step_curve(trainer: Trainer, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` from a trainer's per-step log lines."""
    rows = [r for r in trainer.history if r["kind"] == "step" and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def loss_figure(ctx: RunContext, trainer: Trainer, name: str = "loss") -> str:
    """Save the training curve of the simple loss (per logged step) as NAME.png."""
    from experiments.plotting import plt

    steps, values = step_curve(trainer)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(steps, values, lw=1)
    ax.set(xlabel="optimiser step", ylabel="simple loss |eps - eps_hat|^2", yscale="log",
           title=f"Training loss ({trainer.step} steps, batch {trainer.cfg.batch_size})")
    ax.grid(alpha=0.3)
    return ctx.savefig(fig, name)


@torch.no_grad()
def counted_sampling(denoiser: Callable, sampler: Callable, process, x_T: torch.Tensor, batch_size: int,
                     device: str = "cpu", **kw) -> tuple[torch.Tensor, int, float]:
    """Run `sampler(denoiser, process, x_T_batch, **kw)` over x_T in batches.

    Returns (x0 (N, ...) on the CPU, NFE per sample chain, wall seconds for all N). NFE is counted
    per batch with a CountingDenoiser; every batch must take the same number.
    """
    from zoo.gaussian.samplers import CountingDenoiser

    outs, nfes, seconds = [], set(), 0.0
    for i in range(0, len(x_T), batch_size):
        counter = CountingDenoiser(denoiser)
        x0, s = timed(lambda: sampler(counter, process, x_T[i:i + batch_size].to(device), **kw), device)
        outs.append(x0.cpu())
        nfes.add(counter.nfe)
        seconds += s
    if len(nfes) != 1:
        raise RuntimeError(f"batches took different NFE: {sorted(nfes)}")
    return torch.cat(outs), nfes.pop(), seconds
