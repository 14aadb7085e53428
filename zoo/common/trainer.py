"""The one Trainer every formulation trains through (SPEC section 8).

A formulation is an ``nn.Module`` with

- ``loss(batch) -> dict``: key ``"loss"`` is a scalar to minimise, other scalar keys are logged;
  ``batch`` is the tuple of tensors of one minibatch (e.g. ``(x, y)``), already on the device;
- ``sample(n, generator=None, **kw) -> Tensor`` in data space;
- optionally ``nll(batch) -> Tensor[B]`` in nats per example, and ``param_groups(lr)`` giving
  parameter groups with their own learning rates (e.g. the rho0/rho1 of the mean parameterisation).

The Trainer owns everything else: optimiser, LR schedule, EMA, gradient clipping, device, bf16
autocast on GPU, seeding, the tqdm bar, ``log.jsonl``, validation, atomic checkpoints and exact
resume (the data order of epoch e is a permutation drawn from ``seed + e``, so a checkpoint only
needs the epoch, the batch index inside it and the RNG states). Under ``torchrun`` the same loop
runs with DistributedDataParallel, each rank taking every world-th example of the permutation.
"""

from __future__ import annotations

import atexit
import copy
import errno
import fcntl
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from zoo import ZooError
from zoo.common.config import check, finite_positive
from zoo.common.utils import atomic_write_bytes, resolve_device, rng_state, seed_everything, set_rng_state

CHECKPOINT_FORMAT = "zoo-checkpoint-v1"
# Keys every checkpoint holds (load_checkpoint), and those resume needs on top.
CHECKPOINT_KEYS = ("model_class", "meta", "model")
RESUME_KEYS = ("optimizer", "scheduler", "step", "rng")


class NonFiniteLoss(ZooError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ZooError):
    """A checkpoint that is missing, truncated, foreign or for another model."""


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


def fused_optimiser(device: torch.device) -> bool | None:
    """Fused optimiser kernels (the whole update in one kernel for all parameters) on CUDA, where the
    per-tensor default costs a launch per op. On the CPU torch's default: the fused CPU Adam step is
    several times faster (`zoo bench profile`) but only 3-7% of a quick U-Net step, and it would
    change the floating-point path of every CPU run, so committed results would no longer rerun
    bit-identically from their config.json."""
    return True if device.type == "cuda" else None


OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda groups, c, fused: torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay, fused=fused),
    "adamw": lambda groups, c, fused: torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay, fused=fused),
    "sgd": lambda groups, c, fused: torch.optim.SGD(groups, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay,
                                                    fused=fused),
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


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Update ``n`` (n = 0, 1, ...) moves the shadow towards the weights with the decay

        d_n = min(decay, (1 + n) / (10 + n))      with warm-up (SPEC 11; TensorFlow, flow_matching)
        d_n = decay                               without

    so that early in training the average forgets the random initial weights: with warm-up the
    initial weights keep the share prod_{m<n} d_m = 9! n! / (n + 9)! after n updates (< 1e-3 for
    n >= 100 at any decay), without it decay^n (14% after 2000 updates at 0.999). The update
    count ``n`` is part of the state, so a resumed run continues the same sequence.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """d_n for the next update, n = self.updates."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        floats, targets = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(self.shadow[k])
                targets.append(v)
            else:
                self.shadow[k].copy_(v)
        if floats:
            torch._foreach_lerp_(floats, targets, 1 - d)  # one fused launch for every tensor
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
        self.updates = int(updates)


class _LossModule(nn.Module):
    """Routes forward() to model.loss() so DistributedDataParallel hooks see the call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


class Trainer:
    """Trains one formulation on in-memory tensors; see the module docstring for the contract."""

    def __init__(self, model: nn.Module, train_data: tuple[torch.Tensor, ...], cfg: TrainConfig,
                 out_dir: str | Path | None = None, val_data: tuple[torch.Tensor, ...] | None = None,
                 tag: str = "train", meta: dict[str, Any] | None = None,
                 transform: Callable[[tuple[torch.Tensor, ...], int, int], tuple[torch.Tensor, ...]] | None = None):
        if not hasattr(model, "loss"):
            raise TypeError(f"{type(model).__name__} has no loss(batch) method; it cannot be trained")
        self.cfg, self.tag, self.meta = cfg, tag, dict(meta or {})
        # transform(batch, epoch, batch number) -> batch, applied on the device (e.g. the dynamic
        # binarisation of zoo.common.data); it must draw from its own seeded generator, never the
        # global RNG, so that an exact resume stays bit-identical.
        self.transform = transform
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(cfg.device)
        self.world, self.rank = _init_distributed(self.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        seed_everything(cfg.seed + self.rank)
        self.model = model.to(self.device)
        if cfg.channels_last or (cfg.channels_last is None and self.device.type == "cuda"):
            self.model.to(memory_format=torch.channels_last)
        self.train_data = _resident(tuple(train_data), self.device)
        self.val_data = tuple(val_data) if val_data is not None else None
        n = len(self.train_data[0]) // self.world
        self.steps_per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch
        self.total_steps = cfg.total_steps(self.steps_per_epoch)
        groups = model.param_groups(cfg.lr) if hasattr(model, "param_groups") else model.parameters()
        self.optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg, fused_optimiser(self.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, self.steps_per_epoch, cfg.schedule_steps(self.steps_per_epoch)))
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.step = 0  # optimiser steps taken
        self.wrapped = _LossModule(self.model)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.wrapped, device_ids=ids)
        if cfg.compile:  # the network and the objective as one graph; the optimiser and EMA stay eager
            self.wrapped = torch.compile(self.wrapped)
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        # The NaN/inf guard lives on the device: the first step whose loss was not finite (-1: none),
        # read at log and checkpoint boundaries only, so a step never waits for the host.
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._step_on_device = torch.zeros((), dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ paths and logging

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path | None:
        return self.out_dir / f"{self.tag}.ckpt" if self.out_dir is not None else None

    def _log(self, record: dict[str, Any]) -> None:
        record = {"run": self.tag, **record}
        self.history.append(record)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ the loop

    def _permutation(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s order of this rank's examples, drawn on the CPU, placed beside the data."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        perm = torch.randperm(len(self.train_data[0]), generator=gen)
        return perm[self.rank::self.world].to(self.train_data[0].device)

    def _batch(self, idx: torch.Tensor, epoch: int = 0, index: int = 0) -> tuple[torch.Tensor, ...]:
        """The examples `idx` on the device, through the transform (batch `index` of `epoch`, numbered
        across ranks) where there is one."""
        batch = tuple(d[idx].to(self.device, non_blocking=True) for d in self.train_data)
        return batch if self.transform is None else self.transform(batch, epoch, index * self.world + self.rank)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if any step so far had a NaN or infinite loss (one host sync)."""
        first = int(self._first_bad)
        if first < 0:
            return
        where = f" ({self.ckpt_path} keeps the last good state)" if self.ckpt_path and self.ckpt_path.exists() else ""
        advice = "lower the learning rate" + (" or enable grad_clip" if self.cfg.grad_clip is None else
                                              f" or grad_clip (now {self.cfg.grad_clip:g})")
        raise NonFiniteLoss(f"loss became NaN or infinite at step {first} of {self.tag}{where}; {advice}, "
                            f"then resume (e.g. --resume --train lr={self.cfg.lr / 10:g})")

    def _autocast(self):
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def fit(self) -> list[dict[str, Any]]:
        """Train until `total_steps`, resuming from `self.step`; returns the log records."""
        cfg, spe = self.cfg, self.steps_per_epoch
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (show and self.is_main),
                   desc=self.tag, dynamic_ncols=True, leave=False)
        self.model.train()
        self._step_on_device.fill_(self.step)
        while self.step < self.total_steps:
            epoch, start = divmod(self.step, spe)
            perm = self._permutation(epoch)
            sums: dict[str, torch.Tensor] = {}
            count, t0 = 0, time.perf_counter()
            for b in range(start, spe):
                if self.step >= self.total_steps:
                    break
                out = self._train_step(self._batch(perm[b * cfg.batch_size:(b + 1) * cfg.batch_size], epoch, b))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self.check_finite()
                    logged = {k: float(v) for k, v in out.items()}
                    self._log({"kind": "step", "step": self.step, "epoch": epoch,
                               "lr": self.scheduler.get_last_lr()[0], **logged})
                    bar.set_postfix(loss=f"{logged['loss']:.4g}")
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.check_finite()
                    self.save()
            self.check_finite()  # never log or save a non-finite state
            seconds = time.perf_counter() - t0
            self.train_seconds += seconds
            finished_epoch = self.step % spe == 0
            record = {"kind": "epoch", "step": self.step, "epoch": epoch, "seconds": seconds,
                      "complete": finished_epoch,
                      **{f"train_{k}": float(v) / max(count, 1) for k, v in sums.items()}}
            if finished_epoch and self.val_data is not None and cfg.val_every and (epoch + 1) % cfg.val_every == 0:
                record.update({f"val_{k}": v for k, v in self.validate().items()})
            self._log(record)
            self.save()
        bar.close()
        return self.history

    def _train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        with self._autocast():
            out = self.wrapped(batch)
        loss = out["loss"]
        self._step_on_device += 1
        newly_bad = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, self._step_on_device, self._first_bad)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}

    @torch.no_grad()
    def validate(self, data: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
        """Mean of every loss key over `data` (default: the validation set), with the EMA weights.

        Uses its own seeded RNG so that validation does not change the training RNG stream.
        """
        data = data if data is not None else self.val_data
        state = rng_state()
        torch.manual_seed(self.cfg.seed + 7)
        sums: dict[str, float] = {}
        n = 0
        with self.averaged():
            for i in range(0, len(data[0]), self.cfg.batch_size):
                batch = tuple(d[i:i + self.cfg.batch_size].to(self.device) for d in data)
                with self._autocast():
                    out = self.model.loss(batch)
                m = len(batch[0])
                for k, v in out.items():
                    if torch.is_tensor(v) and v.numel() == 1:
                        sums[k] = sums.get(k, 0.0) + float(v) * m
                n += m
        set_rng_state(state)
        return {k: v / max(n, 1) for k, v in sums.items()}

    def averaged(self):
        """Context manager: the model holds the EMA weights inside, its own weights after."""
        return _SwapWeights(self.model, self.ema.shadow if self.ema is not None else None)

    def averaged_model(self) -> nn.Module:
        """A copy of the model in eval mode holding the EMA weights (the model itself if no EMA)."""
        model = copy.deepcopy(self.model)
        if self.ema is not None:
            model.load_state_dict(self.ema.shadow)
        return model.eval()

    # ------------------------------------------------------------------ checkpoints

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (rank order): each rank draws its own t and noise, and resumes them."""
        state = rng_state()
        if self.world == 1:
            return [state]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def state_dict(self, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        rng_states = rng_states if rng_states is not None else self._rng_states()
        return {
            "format": CHECKPOINT_FORMAT,
            "model_class": type(self.model).__name__,
            "meta": self.meta,
            "train_config": asdict(self.cfg),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "rng": rng_states[0],
            "rng_ranks": rng_states,
        }

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the checkpoint atomically (temp file + rename); only rank 0 writes."""
        path = Path(path) if path is not None else self.ckpt_path
        if path is None:
            return None
        rng_states = self._rng_states()  # a collective: every rank takes part, rank 0 writes
        if not self.is_main:
            return None
        state = self.state_dict(rng_states)
        buffer = io.BytesIO()  # serialised in memory first: a failed write is then the OS's own error
        torch.save(state, buffer)
        try:
            atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))
        except OSError as e:
            full = e.errno == errno.ENOSPC
            why = "no space left on the device" if full else (str(e).strip().splitlines() or [type(e).__name__])[0]
            kept = "; the previous checkpoint is kept" if path.exists() else ""
            raise CheckpointError(f"could not write checkpoint {path} ({why}){kept}") from None
        return path

    def resume(self, path: str | Path | None = None, new_lr: bool = False) -> "Trainer":
        """Restore model, EMA, optimiser, scheduler, step and every RNG state from a checkpoint.

        The checkpoint must hold the same formulation and model config as this trainer's meta
        (CheckpointError naming the fields that differ). With `new_lr` (the command set train.lr
        on purpose, e.g. to rescue a diverged run) this config's learning rate replaces the saved
        one: every param group's base lr and the scheduler's base_lrs, logged as a "resume" line.
        Log lines of this tag after the checkpoint's step are dropped from log.jsonl.
        """
        path = Path(path) if path is not None else self.ckpt_path
        ckpt = load_checkpoint(path, map_location=self.device, required=RESUME_KEYS)
        if ckpt["model_class"] != type(self.model).__name__:
            raise CheckpointError(f"{path} holds a {ckpt['model_class']}, not a {type(self.model).__name__}")
        check_same_model(path, ckpt.get("meta") or {}, self.meta)
        fresh_lrs = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None and ckpt["ema"] is not None:
                # Checkpoints from before the warm-up held no count: the EMA was updated every step.
                self.ema.load_state_dict(ckpt["ema"], ckpt.get("ema_updates", ckpt["step"]))
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{path} does not match this model's configuration ({first})") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(ranks) != self.world:
            raise CheckpointError(f"{path} was written by {len(ranks)} process(es); resume it with as many, "
                                  f"not {self.world}")
        set_rng_state(ranks[self.rank])
        saved_lr = float((ckpt.get("train_config") or {}).get("lr", self.cfg.lr))
        if new_lr and saved_lr != self.cfg.lr:
            self._set_base_lrs(fresh_lrs)
        self._cut_log()
        if new_lr and saved_lr != self.cfg.lr:
            self._log({"kind": "resume", "step": self.step, "lr_from": saved_lr, "lr_to": self.cfg.lr})
        return self

    def _set_base_lrs(self, base_lrs: list[float]) -> None:
        """Base lrs of every param group (and the scheduler) set to `base_lrs`, the current lr rescaled."""
        self.scheduler.base_lrs = list(base_lrs)
        for group, base, factor in zip(self.optimizer.param_groups, base_lrs, self.scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _cut_log(self) -> None:
        """Drop this tag's log.jsonl lines after the resumed step (they will be written again); the
        ones up to it become this trainer's history again, so curves span the whole run."""
        if self.out_dir is None or not self.is_main or not (self.out_dir / "log.jsonl").exists():
            return
        kept, mine = [], []
        for line in (self.out_dir / "log.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            ours = isinstance(rec, dict) and rec.get("run") == self.tag
            if not (ours and rec.get("step", 0) > self.step):
                kept.append(line)
                if ours:
                    mine.append(rec)
        self.history = mine
        data = "".join(line + "\n" for line in kept).encode()
        atomic_write_bytes(self.out_dir / "log.jsonl", lambda f: f.write(data))


class _SwapWeights:
    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor] | None):
        self.model, self.weights, self.saved = model, weights, None

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        if self.weights is not None:
            self.saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.weights)
        return self.model

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.load_state_dict(self.saved)
        self.model.train(self.was_training)
        return False


def _resident(data: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The training tensors on the device when they take under a quarter of its free memory (else left
    on the host and moved batch by batch): no host-to-device copy per step."""
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    size = sum(d.numel() * d.element_size() for d in data)
    return tuple(d.to(device) for d in data) if size < free / 4 else data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a zoo checkpoint with ``weights_only=True``; anything else is a one-line CheckpointError.

    The schema is checked before use: CHECKPOINT_KEYS and `required` must be present (the
    message names the missing ones), ``model`` and ``meta`` must be dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists() else
                              f"checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with foreign globals, plain garbage ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path} is not a readable zoo checkpoint (truncated or foreign: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a zoo checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    missing = [k for k in (*CHECKPOINT_KEYS, *required) if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)} (not written by this zoo, "
                              f"or damaged)")
    for key in ("model", "meta"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path} is damaged: {key!r} is a {type(ckpt[key]).__name__}, not a dict")
    return ckpt


def _plain(value: Any) -> Any:
    """Lists and tuples alike (config.json stores tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_same_model(path: str | Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """CheckpointError unless checkpoint meta `saved` holds the formulation and model config of `current`."""
    if "formulation" in saved and "formulation" in current and saved["formulation"] != current["formulation"]:
        raise CheckpointError(f"{path} holds a {saved['formulation']!r} model, not {current['formulation']!r}; "
                              f"use another --out or remove the checkpoint")
    a, b = _plain(saved.get("config")), _plain(current.get("config"))
    if isinstance(a, dict) and isinstance(b, dict) and a != b:
        diff = [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise CheckpointError(f"{path} was trained with another model config ({'; '.join(diff)}); "
                              f"resume with the same --set values or use another --out")


def remove_stale_temps(out_dir: str | Path) -> list[Path]:
    """Delete the temp files (``.NAME.ckpt.*.tmp``) a killed checkpoint write left in `out_dir`.

    Call it only while holding the RunLock: another writer's temp file is not stale.
    """
    stale = sorted(Path(out_dir).glob(".*.ckpt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunDirBusy(ZooError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive ``fcntl.flock`` on OUT/.lock for the life of a run (one writer per run directory).

    The file holds the owner's pid; a second writer gets a one-line RunDirBusy naming it. The
    kernel drops the lock when the process dies (SIGKILL included), so a stale file never blocks.
    Under torchrun only rank 0 takes it, for the whole job: the other ranks share its directory.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if int(os.environ.get("RANK", "0")) > 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(f"{self.path.parent} is in use by another zoo process (pid {holder}); "
                             f"wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _end_distributed() -> None:
    """Destroy the default process group if it is still alive (idempotent; run at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(world size, rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Started here, so ended here: a process that exits with a live gloo group can abort (SIGABRT)
        # in interpreter finalisation, after its work is done (pytorch/pytorch#179291).
        atexit.register(_end_distributed)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_world_size(), dist.get_rank()
