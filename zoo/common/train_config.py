"""How a run trains: the TrainConfig every formulation shares, and the optimiser and LR schedule it names.

Each field checks its own range once, at construction (``zoo.common.config.check``), so a bad
``--set train.KEY=VALUE`` is a one-line usage error before anything runs or is written. The Trainer
(zoo/common/trainer.py) builds its optimiser through ``OPTIMIZERS`` and its LambdaLR from
``lr_factor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from zoo.common.config import check, finite_positive


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    steps: int | None = None  # a step budget: the Trainer runs ceil(steps / steps per epoch) epochs, then stops
    max_steps: int | None = None  # stop after this many optimiser steps in total (None: all epochs)
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | step | cosine
    step_size: int = 20  # epochs between StepLR decays
    gamma: float = 0.1
    warmup_steps: int = 0
    ema_decay: float = 0.0  # 0 disables the EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n)/(10 + n)) after n updates (SPEC 11)
    grad_clip: float | None = 1.0  # max global grad norm, None disables
    device: str = "cpu"
    # Speed options, defaults from `zoo bench unet` (docs/benchmarks.md; one H100, paper U-Nets, batch 128):
    # bf16 gave 1.05x (2.5 M params) and 0.77x (9.1 M): these nets are launch-bound, so off by default;
    # torch.compile gave 1.07x after a 55 s compile (0.85x on 2 idle CPU cores): off; NHWC gave 1.24x on
    # CUDA and 0.90x on CPU: on for CUDA only (None), True / False force it.
    amp: bool = False  # bf16 autocast, on CUDA only
    compile: bool = False  # torch.compile the loss (network and objective together)
    channels_last: bool | None = None  # NHWC conv weights; None: on CUDA, off on CPU
    # The step (forward, NaN guard, backward, clipping, Adam) captured once as a CUDA graph after three
    # eager steps and replayed: one launch per step instead of thousands (the paper U-Nets are
    # launch-bound, docs/benchmarks.md). CUDA, adam/adamw, one process; loss() must then be a function
    # of the batch, the weights, the buffers and the default RNG (Python inside it runs at the capture).
    cuda_graph: bool = False
    seed: int = 0
    log_every: int = 50  # steps between log.jsonl step lines
    val_every: int = 1  # epochs between validations (0: never)
    ckpt_every: int = 0  # steps between checkpoints (0: at each epoch end only)
    progress: bool | None = None  # None: a bar only when stderr is a TTY

    def __post_init__(self):
        check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        check(self.steps is None or self.steps >= 1, f"train.steps must be None or >= 1, got {self.steps}")
        check(self.max_steps is None or self.max_steps >= 1, f"train.max_steps must be None or >= 1, got {self.max_steps}")
        check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        finite_positive(self.lr, "train.lr")
        check(self.optimizer in OPTIMIZERS, f"unknown train.optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        check(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
              f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        check(self.lr_schedule in LR_SCHEDULES,
              f"unknown train.lr_schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        check(self.step_size >= 1, f"train.step_size must be >= 1, got {self.step_size}")
        finite_positive(self.gamma, "train.gamma")
        check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        check(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
              f"train.grad_clip must be None or a finite number > 0, got {self.grad_clip}")
        check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        check(self.val_every >= 0, f"train.val_every must be >= 0, got {self.val_every}")
        check(self.ckpt_every >= 0, f"train.ckpt_every must be >= 0, got {self.ckpt_every}")
        check(not self.cuda_graph or self.optimizer in ("adam", "adamw"),
              f"train.cuda_graph needs train.optimizer adam or adamw (a capturable one), got {self.optimizer!r}")
        check(not (self.cuda_graph and self.compile),
              "train.cuda_graph and train.compile exclude each other (compile's own CUDA graphs: zoo bench unet)")
        check(not self.cuda_graph or self.device != "cpu", "train.cuda_graph needs a CUDA device (--device cuda)")
        check(self.channels_last in (None, True, False),
              f"train.channels_last must be None (CUDA only), true or false, got {self.channels_last!r}")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs to run: `epochs`, or with a step budget as many as the budget needs."""
        return self.epochs if self.steps is None else math.ceil(self.steps / steps_per_epoch)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps to run: the budget (or all epochs), capped by max_steps."""
        total = self.epochs_for(steps_per_epoch) * steps_per_epoch if self.steps is None else self.steps
        return total if self.max_steps is None else min(total, self.max_steps)

    def schedule_steps(self, steps_per_epoch: int) -> int:
        """The LR schedule's horizon: the step budget, or all epochs. Never max_steps, which stops a run
        early without changing its schedule."""
        return self.epochs * steps_per_epoch if self.steps is None else self.steps


def optimiser_kernels(device: torch.device, cuda_graph: bool = False) -> dict[str, bool]:
    """Which of torch's optimiser implementations runs on `device`: the fused kernels on CUDA (the whole
    update in one launch for all parameters, where the per-tensor loop costs a launch per op) and for a
    step captured as a graph (`cuda_graph`; the CPU emulation of the tests too); the foreach form
    elsewhere: on the CPU its multi-tensor ops loop over the same per-tensor kernels in C++, so the
    update is the per-tensor default's bit for bit (tests/test_trainer.py checks it, so committed CPU
    results rerun identically) at ~1.7x its speed (`zoo bench profile`). The fused CPU Adam is faster
    still but rounds differently, so it would change every CPU run's numbers."""
    return {"fused": True} if device.type == "cuda" or cuda_graph else {"foreach": True}


def channels_last_for(setting: bool | None, device: torch.device) -> bool:
    """train.channels_last resolved on `device`: None means NHWC on CUDA, NCHW on the CPU."""
    return device.type == "cuda" if setting is None else setting


def bf16_autocast(device: torch.device, enabled: bool, cuda_graph: bool = False) -> torch.autocast:
    """bf16 autocast on `device`. Under a CUDA graph (`cuda_graph`) the captured casts are replayed, so
    autocast's weight-cast cache, which would hold stale copies, is off."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled,
                          cache_enabled=not cuda_graph)


# capturable (adam, adamw): the step count on the device, as a CUDA graph needs (train.cuda_graph).
OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda groups, c, kernels: torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay,
                                                        capturable=c.cuda_graph, **kernels),
    "adamw": lambda groups, c, kernels: torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay,
                                                          capturable=c.cuda_graph, **kernels),
    "sgd": lambda groups, c, kernels: torch.optim.SGD(groups, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay,
                                                      **kernels),
}


LR_SCHEDULES = ("constant", "step", "cosine")


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimiser step `step` (0-based), with linear warm-up."""

    def constant(step: int) -> float:
        return 1.0

    def step_lr(step: int) -> float:  # StepLR on epochs: gamma every step_size epochs
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)

    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))

    schedules = {"constant": constant, "step": step_lr, "cosine": cosine}
    base = schedules[cfg.lr_schedule]
    if cfg.warmup_steps <= 0:
        return base
    return lambda step: base(step) * min(1.0, (step + 1) / cfg.warmup_steps)
