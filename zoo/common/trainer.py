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
With ``train.cuda_graph`` (CUDA, one process) the step's device work is captured once as a CUDA
graph after three eager steps and replayed (``_GraphedStep``); loss() must then depend only on the
batch, the weights, the buffers and the default RNG, as Python inside it runs at the capture only.

Its parts live beside it and are re-exported here: TrainConfig, the optimisers and the LR schedule
in train_config.py, the EMA in ema.py, the checkpoint format, loader and run lock in checkpoint.py.
"""

from __future__ import annotations

import atexit
import copy
import errno
import io
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from zoo import ZooError
from zoo.common.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_KEYS, RESUME_KEYS, CheckpointError, RunDirBusy,
                                   RunLock, check_same_model, load_checkpoint, remove_stale_temps)
from zoo.common.config import ConfigError
from zoo.common.ema import EMA, SwapWeights
from zoo.common.train_config import (LR_SCHEDULES, OPTIMIZERS, TrainConfig, bf16_autocast, channels_last_for,
                                     lr_factor, optimiser_kernels)
from zoo.common.utils import atomic_write_bytes, resolve_device, rng_state, seed_everything, set_rng_state

# Re-exported: zoo.common.trainer is where SPEC 8 puts the training interface, and code outside the
# package imports these names from here.
__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "EMA", "LR_SCHEDULES", "OPTIMIZERS", "RESUME_KEYS",
           "CheckpointError", "NonFiniteLoss", "RunDirBusy", "RunLock", "TrainConfig", "Trainer",
           "bf16_autocast", "channels_last_for", "check_same_model", "load_checkpoint", "lr_factor",
           "optimiser_kernels", "remove_stale_temps"]


class NonFiniteLoss(ZooError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
        if cfg.cuda_graph and not GRAPHS.supports(self.device):  # e.g. train.device=auto without a GPU
            raise ConfigError(f"train.cuda_graph needs a CUDA device, and this run is on {self.device.type}")
        self.world, self.rank = _init_distributed(self.device)
        if cfg.cuda_graph and self.world > 1:
            raise ConfigError("train.cuda_graph runs in one process, not under torchrun (DDP)")
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        seed_everything(cfg.seed + self.rank)
        self.model = model.to(self.device)
        if channels_last_for(cfg.channels_last, self.device):
            self.model.to(memory_format=torch.channels_last)
        self.train_data = _resident(tuple(train_data), self.device)
        self.val_data = tuple(val_data) if val_data is not None else None
        n = len(self.train_data[0]) // self.world
        self.steps_per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch
        self.total_steps = cfg.total_steps(self.steps_per_epoch)
        groups = model.param_groups(cfg.lr) if hasattr(model, "param_groups") else model.parameters()
        self.optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg, optimiser_kernels(self.device, cfg.cuda_graph))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, self.steps_per_epoch, cfg.schedule_steps(self.steps_per_epoch)))
        self._lr_tensors: list[torch.Tensor] | None = None
        self._lrs_on_device()
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
        self._graph: _GraphedStep | None = None  # train.cuda_graph: captured at the first steps of fit()

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
        return bf16_autocast(self.device, self.cfg.amp and self.device.type == "cuda", self.cfg.cuda_graph)

    def fit(self) -> list[dict[str, Any]]:
        """Train until `total_steps`, resuming from `self.step`; returns the log records."""
        cfg = self.cfg
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (show and self.is_main),
                   desc=self.tag, dynamic_ncols=True, leave=False)
        self.model.train()
        self._step_on_device.fill_(self.step)
        try:
            self._epochs(bar)
        finally:
            bar.close()
            self._graph = None  # train.cuda_graph: its memory goes with the run; a later fit() captures again
        return self.history

    def _epochs(self, bar) -> None:
        """fit()'s loop: the steps of each epoch, then its log line, validation and checkpoint."""
        cfg, spe = self.cfg, self.steps_per_epoch
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
                               "lr": float(self.scheduler.get_last_lr()[0]), **logged})
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

    def _train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.cfg.cuda_graph:
            if self._graph is None:
                self._graph = _GraphedStep()
            out = self._graph(self, batch)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            out = self._update(batch)
        self.scheduler.step()  # on the host
        self._lrs_on_device()  # train.cuda_graph: the new lrs into the tensors the graph reads
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}

    def _update(self, batch: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """Forward, NaN guard, backward, clipping and the optimiser step: device work only, no host sync
        and no tensor created outside it, so that train.cuda_graph can capture it as it is."""
        with self._autocast():
            out = self.wrapped(batch)
        loss = out["loss"]
        self._step_on_device += 1
        newly_bad = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad.copy_(torch.where(newly_bad, self._step_on_device, self._first_bad))
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return out

    def _lrs_on_device(self) -> None:
        """train.cuda_graph: each param group's lr held in one float32 tensor on the device, which the
        captured Adam reads at every replay (a float lr would be frozen into the graph). The LR schedule
        fills it in place (torch >= 2.6) or sets a float, which is copied into the same tensor here; base
        lrs (`initial_lr`, the scheduler's) stay floats, so no step waits for the host."""
        if not self.cfg.cuda_graph:
            return
        if self._lr_tensors is None:
            self._lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
                                for g in self.optimizer.param_groups]
        for group, held in zip(self.optimizer.param_groups, self._lr_tensors):
            if group["lr"] is not held:
                held.fill_(float(group["lr"]))
                group["lr"] = held

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
        return SwapWeights(self.model, self.ema.shadow if self.ema is not None else None)

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
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "rng": rng_states[0],
            "rng_ranks": rng_states,
        }

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimiser's state_dict, with train.cuda_graph's device lrs as floats and capturable off, so
        that any trainer (eager, or on another device) resumes it; resume() makes them tensors again."""
        state = self.optimizer.state_dict()
        if self.cfg.cuda_graph:
            for group in state["param_groups"]:  # state_dict() packs fresh group dicts: the optimiser is untouched
                group["lr"] = float(group["lr"])
                group["capturable"] = False
        return state

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
            # The saved groups bring the writer's implementation flags; this trainer keeps its own (a
            # CUDA run's fused Adam resumed on the CPU, an eager run's groups under train.cuda_graph).
            flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g}
                     for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for group, own in zip(self.optimizer.param_groups, flags):
                group.update(own)
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"{path} does not match this model's configuration ({first})") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self._lrs_on_device()
        self._graph = None  # the optimiser's state tensors are new: capture again
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
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(base * factor(self.scheduler.last_epoch))
            else:
                group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

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


class CudaGraphs:
    """How `_GraphedStep` warms up and captures on CUDA: a side stream, and torch.cuda.graph."""

    @staticmethod
    def supports(device: torch.device) -> bool:
        return device.type == "cuda"

    @staticmethod
    def side_stream(device: torch.device) -> "_SideStream":
        """Context: the eager warm-up steps on their own stream, as torch.cuda.graph requires."""
        return _SideStream(device)

    @staticmethod
    def capture(fn: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
        """(replay, fn's outputs): fn's device work on `device` recorded, not run; each replay runs it
        again on the same tensors. If fn fails (a host sync is not allowed while capturing), the capture
        is ended and the stream restored before fn's own error is raised, so the process stays usable."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device):
            # The capture puts the device's default generator in capture mode, and only a capture that
            # ends cleanly takes it out: after a failed one every eager random draw in the process
            # raised "Offset increment outside graph capture" (H200, 2026-11-28). So a copy of its state
            # from before is put back on failure.
            generator = torch.cuda.default_generators[torch.cuda.current_device()]
            before = generator.clone_state()
            capturing = torch.cuda.graph(graph)
            capturing.__enter__()
            try:
                out = fn()
            except BaseException:
                try:
                    graph.capture_end()  # fails for an invalidated capture, and ends it
                except RuntimeError:
                    pass
                capturing.stream_ctx.__exit__(None, None, None)
                generator.graphsafe_set_state(before)
                raise
            capturing.__exit__(None, None, None)
        return graph.replay, out


class _SideStream:
    """Context: work on the device's side stream that waits for the current one, and the current one for
    it. One side stream per device for the process: cuBLAS keeps a workspace (~32 MiB) per stream it
    has run on, so a new stream per capture (every chunk size a sampler graphs) would pile them up."""

    streams: dict[torch.device, torch.cuda.Stream] = {}

    def __init__(self, device: torch.device):
        self.device = torch.device("cuda", torch.cuda.current_device()) if device.index is None else device
        if self.device not in self.streams:
            self.streams[self.device] = torch.cuda.Stream(self.device)
        self.stream = self.streams[self.device]

    def __enter__(self):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.context = torch.cuda.stream(self.stream)
        self.context.__enter__()

    def __exit__(self, *exc):
        self.context.__exit__(*exc)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return False


GRAPHS = CudaGraphs  # tests/cuda_graph_emulation.py puts CUDA graph semantics on the CPU here


class _GraphedStep:
    """train.cuda_graph: the Trainer's `_update` (forward, NaN guard, backward, clipping, Adam) as one
    CUDA graph (torch.cuda.graph, "whole network capture" in PyTorch's CUDA graphs notes).

    The first WARMUP calls are ordinary eager steps on a side stream (cuDNN's algorithm search, the
    autograd accumulators, Adam's state). The next call captures `_update` on static copies of the
    batch, with the gradients set to None first so that the captured backward writes them into the
    graph's memory and each replay overwrites them; from then on a call copies the batch into those
    tensors and replays. What changes between steps lives on the device and is updated in place: the
    lr tensors (the LR schedule's values are copied in), Adam's step counts (capturable), the NaN
    guard's flag and step, the default CUDA generator's offset (the graph advances it at each replay).
    The LR schedule and the EMA stay outside the graph, eager, after each step. It holds no reference
    to its Trainer (the Trainer passes itself), so a finished Trainer frees the graph's memory.
    """

    WARMUP = 3

    def __init__(self):
        self.calls = 0
        self.side = None
        self.replay: Callable[[], None] | None = None
        self.static_batch: tuple[torch.Tensor, ...] = ()
        self.static_out: dict[str, Any] = {}

    def __call__(self, tr: "Trainer", batch: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.WARMUP:
            self.side = self.side or GRAPHS.side_stream(tr.device)
            with self.side:
                tr.optimizer.zero_grad(set_to_none=True)
                return tr._update(batch)
        if self.replay is None:
            self._capture(tr, batch)
        for static, b in zip(self.static_batch, batch):
            static.copy_(b)
        self.replay()
        return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in self.static_out.items()}

    def _capture(self, tr: "Trainer", batch: tuple[torch.Tensor, ...]) -> None:
        self.static_batch = tuple(b.clone() for b in batch)
        tr.optimizer.zero_grad(set_to_none=True)
        try:
            self.replay, self.static_out = GRAPHS.capture(lambda: tr._update(self.static_batch), tr.device)
        except RuntimeError as e:  # a host sync or an unsupported op inside the loss
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ZooError(f"train.cuda_graph: the training step of {tr.tag} cannot be captured as a CUDA graph "
                           f"({first}); run it with train.cuda_graph=false") from None


def _resident(data: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The training tensors on the device when they take under a quarter of its free memory (else left
    on the host and moved batch by batch): no host-to-device copy per step."""
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    size = sum(d.numel() * d.element_size() for d in data)
    return tuple(d.to(device) for d in data) if size < free / 4 else data


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
