"""Pieces the experiments share: training a formulation inside a run directory, timing, curves."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from experiments.registry import RunContext
from zoo.common.trainer import Trainer


def train(ctx: RunContext, model: nn.Module, data: tuple[torch.Tensor, ...], tag: str,
          val: tuple[torch.Tensor, ...] | None = None, **train_kw) -> Trainer:
    """Train `model` through the shared Trainer into ctx.out_dir/TAG.ckpt (log lines tagged TAG)."""
    trainer = Trainer(model, data, ctx.train_config(**train_kw), out_dir=ctx.out_dir, val_data=val, tag=tag)
    trainer.fit()
    return trainer


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
