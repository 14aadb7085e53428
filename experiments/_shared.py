"""Pieces the experiments share: training a formulation inside a run directory, timing, curves."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from experiments.registry import RunContext
from zoo.common.trainer import NonFiniteLoss, Trainer
from zoo.gaussian.model import Config


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


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images from the model's [-1, 1] to the metrics' [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)
