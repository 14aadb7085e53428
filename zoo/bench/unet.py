"""The paper U-Net's training step under each speed option, and the samplers, each beside diffusers' peer."""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

from zoo.bench.timing import best_time, param_count, sync, zoo_unet
from zoo.common import trainer
from zoo.common.config import UsageError
from zoo.common.graphed_net import graphed_network, warm_and_capture
from zoo.common.trainer import bf16_autocast, optimiser_kernels

# compile-graphs: torch.compile(mode="reduce-overhead"), CUDA graphs for the forward and backward (the
# host's per-kernel launch cost is what bounds the paper U-Nets on one H100); the same as compile on a CPU.
# cuda-graph: the whole eager step (forward, backward, capturable fused Adam) captured once with
# torch.cuda.graph and replayed, channels_last as the Trainer's CUDA default: no compile time, one launch
# per step; CUDA only. Once the host is out, the step is the GPU's kernel time (H200, 2026-11-28), and three
# levers are left to measure: cuda-graph-nchw drops channels_last (on CUDA, GroupNorm takes its input
# NCHW, `input.contiguous()` in ATen's group_norm, so an NHWC net pays a layout copy at each norm and
# the next convolution copies back, forward and backward); cuda-graph-bf16 adds bf16 autocast (its weight
# casts replayed from the graph, autocast's cache off as in the Trainer); cuda-graph-compile compiles the
# network (torch.compile, default mode: Inductor fuses each GroupNorm, SiLU and add into fewer kernels)
# and captures the whole step around it, the random draws and the fused Adam eager inside the graph.
UNET_VARIANTS = ("eager", "eager-bf16", "channels-last", "compile", "compile-bf16", "compile-graphs", "cuda-graph",
                 "cuda-graph-nchw", "cuda-graph-bf16", "cuda-graph-compile")
CUDA_ONLY = ("cuda-graph", "cuda-graph-nchw", "cuda-graph-bf16", "cuda-graph-compile")
COMPILE_MODES = {"compile": "default", "compile-bf16": "default", "compile-graphs": "reduce-overhead"}


class _PeerLoss(nn.Module):
    """diffusers' UNet2DModel under zoo's own forward process and simple loss: only the network differs."""

    def __init__(self, channels, device: torch.device, process):
        super().__init__()
        from diffusers import UNet2DModel

        n = len(channels)
        self.net = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(channels),
                               layers_per_block=1, down_block_types=("DownBlock2D",) * n,
                               up_block_types=("UpBlock2D",) * n, norm_num_groups=8).to(device)
        self.process = process

    def loss(self, batch):
        x0 = batch[0]
        t = torch.randint(1, 1001, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = self.process.q_sample(x0, t, eps)
        return {"loss": ((self.net(x_t, t).sample - eps) ** 2).mean()}


def check_variants(variants, device: str) -> None:
    """UsageError unless every variant is known and runs on `device`."""
    unknown = [v for v in variants if v not in UNET_VARIANTS]
    if unknown:
        raise UsageError(f"unknown variants {unknown}; choose from {', '.join(UNET_VARIANTS)}")
    cuda_only = [v for v in variants if v in CUDA_ONLY]
    if cuda_only and not trainer.GRAPHS.supports(torch.device(device)):  # the tests' emulation: the CPU
        raise UsageError(f"variant {cuda_only[0]} needs --device cuda")


def graphed(step, optimizer: torch.optim.Optimizer, device: torch.device, warmup: int = 3):
    """`step()` (forward, backward, optimiser step; no zero_grad) captured as one CUDA graph: returns the
    graph's replay, which runs the same kernels on the same (static) tensors with one launch.

    `warmup` eager steps run first on a side stream (cuDNN's algorithm search, the autograd engine's
    accumulators, the optimiser's state), as torch.cuda.graph requires; they are real training steps.
    Gradients are set to None before the capture, so the captured backward writes them into the graph's
    own memory and every replay overwrites rather than accumulates them. The optimiser must be
    capturable (its step count lives on the device); random draws inside `step` use the default CUDA
    generator, which the graph advances on every replay.
    """
    if not trainer.GRAPHS.supports(device):
        raise UsageError("a CUDA graph needs --device cuda")
    return warm_and_capture(step, device, warmup, reset=lambda: optimizer.zero_grad(set_to_none=True))[0]


def _step_rate(model: nn.Module, device: torch.device, batch_size: int, steps: int, repeats: int,
               bf16: bool = False, compile_mode: str | None = None, channels_last: bool = False,
               cuda_graph: bool = False, compile_net: bool = False) -> dict:
    """Training images/s of one fwd/bwd/Adam step of `model.loss` (best of `repeats` timed blocks of
    `steps` steps, after a warm-up that includes any compilation or graph capture), and the peak memory
    on CUDA."""
    from zoo.common.trainer import _LossModule

    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_net:  # the network alone; compiled at the first warm-up step
        model.net = torch.compile(model.net)
    step_fn = torch.compile(_LossModule(model), mode=compile_mode) if compile_mode else _LossModule(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=cuda_graph, **optimiser_kernels(device, cuda_graph))
    x = torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1

    def fwd_bwd_adam() -> None:
        with bf16_autocast(device, bf16, cuda_graph):
            loss = step_fn((x,))["loss"]
        loss.backward()
        opt.step()

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd_adam()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = one
    if cuda_graph:  # the warm-up: three eager steps, the capture and one replay
        sync(device)
        t0 = time.perf_counter()
        step = graphed(fwd_bwd_adam, opt, device)
        step()
        sync(device)
        warmup_s = time.perf_counter() - t0
    else:
        warmup_s = 3 * best_time(step, device, repeats=1, n_calls=3, warmup=False)  # cuDNN tuning, allocator, compile
    best = steps * best_time(step, device, repeats, n_calls=steps, warmup=False)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")
    return {"img_per_s": steps * batch_size / best, "steps_per_s": steps / best, "warmup_s": warmup_s,
            "peak_mib": peak}


def unet_training(channels=(32, 64, 128), batch_size: int = 128, steps: int = 30, device: str = "cpu",
                  repeats: int = 2, variants=UNET_VARIANTS, peer: bool = True, on_row=None) -> list[dict]:
    """Training throughput of the paper U-Net under each speed option, and of diffusers' UNet2DModel
    at the same widths (if diffusers is installed; `pip install .[bench]`) with the same loss.
    `on_row(row)` sees each row as soon as it is measured (`vs_eager`: against the first row)."""
    check_variants(variants, device)  # before anything is measured
    dev = torch.device(device)
    rows = []

    def add(row: dict) -> None:
        row.update(device=device, batch_size=batch_size, channels=tuple(channels))
        row["vs_eager"] = row["img_per_s"] / (rows[0]["img_per_s"] if rows else row["img_per_s"])
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for name in variants:
        torch.manual_seed(0)
        model = zoo_unet(channels, dev)
        res = _step_rate(model, dev, batch_size, steps, repeats, bf16=name.endswith("bf16"),
                         compile_mode=COMPILE_MODES.get(name),
                         channels_last=name in ("channels-last", "cuda-graph", "cuda-graph-bf16", "cuda-graph-compile"),
                         cuda_graph=name in CUDA_ONLY, compile_net=name == "cuda-graph-compile")
        add({"net": "zoo UNet", "variant": name, "params": param_count(model.net), **res})
    if peer:
        try:
            from diffusers import UNet2DModel  # noqa: F401
        except Exception as e:  # absent, or broken by its own dependencies: say so, measure the rest
            warnings.warn(f"diffusers peer skipped: {type(e).__name__}: {e}")
            peer = False
    if peer:
        process = zoo_unet(channels, dev).process
        for name in ("eager", "eager-bf16"):
            torch.manual_seed(0)
            model = _PeerLoss(channels, dev, process)
            res = _step_rate(model, dev, batch_size, steps, repeats, bf16=name.endswith("bf16"))
            add({"net": "diffusers UNet2DModel", "variant": name, "params": param_count(model.net), **res})
    return rows


@torch.no_grad()
def sampler_variants(T: int = 1000, ddim_steps: int = 50, batch_size: int = 1000, channels=(32, 64, 128),
                     device: str = "cpu", repeats: int = 2, compile_mode: str | None = "default",
                     peer: bool = True, on_row=None, cuda_graph: bool | None = None) -> list[dict]:
    """DDIM-S and DDPM-T wall time of zoo's sampler (eager, with the network as a CUDA graph, and with
    the network compiled) and of diffusers' DDIMScheduler / DDPMScheduler driving the same network;
    each against S (or T) x one forward of the eager network. `cuda_graph` None: on CUDA only."""
    from zoo.gaussian.model import Config, GaussianDiffusion

    torch.manual_seed(0)
    dev = torch.device(device)
    model = GaussianDiffusion(Config(data="mnist-grey", channels=tuple(channels), T=T, schedule="cosine",
                                     clip_x0=False)).to(dev).eval()
    x = torch.randn(batch_size, 1, 28, 28, device=dev)
    t_mid = torch.full((batch_size,), T // 2, dtype=torch.long, device=dev)

    def timed(fn, n_calls: int = 1) -> float:
        return best_time(fn, dev, repeats, n_calls)

    one = timed(lambda: model.eps(x, t_mid), n_calls=10)
    rows = []

    def add(row: dict) -> None:
        row.update(device=device, batch_size=batch_size, forward_s=one, ratio=row["seconds"] / (row["nfe"] * one))
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for sampler, nfe in (("ddim", ddim_steps), ("ddpm", T)):
        s = timed(lambda: model.sample(batch_size, sampler=sampler, steps=nfe, x_T=x))
        add({"impl": "zoo", "sampler": f"{sampler.upper()}-{nfe}", "seconds": s, "nfe": nfe})
    if peer:
        try:
            from diffusers import DDIMScheduler, DDPMScheduler
        except Exception as e:
            warnings.warn(f"diffusers peer skipped: {type(e).__name__}: {e}")
            peer = False
    if peer:
        def run_peer(sched, nfe):
            sched.set_timesteps(nfe)
            xt = x.clone()
            for tt in sched.timesteps:
                tb = torch.full((batch_size,), int(tt) + 1, dtype=torch.long, device=dev)  # diffusers' 0..T-1 is zoo's 1..T
                xt = sched.step(model.eps(xt, tb), tt, xt).prev_sample
            return xt

        kw = dict(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False)
        for sched, nfe in ((DDIMScheduler(**kw), ddim_steps), (DDPMScheduler(**kw), T)):
            s = timed(lambda: run_peer(sched, nfe))
            add({"impl": "diffusers", "sampler": f"{type(sched).__name__}-{nfe}", "seconds": s, "nfe": nfe})
    if cuda_graph if cuda_graph is not None else dev.type == "cuda":
        with graphed_network(model, dev):
            for sampler, nfe in (("ddim", ddim_steps), ("ddpm", T)):
                s = timed(lambda: model.sample(batch_size, sampler=sampler, steps=nfe, x_T=x))
                add({"impl": "zoo, net as a CUDA graph", "sampler": f"{sampler.upper()}-{nfe}", "seconds": s,
                     "nfe": nfe})
    if compile_mode:
        model.net = torch.compile(model.net, mode=compile_mode)
        for sampler, nfe in (("ddim", ddim_steps), ("ddpm", T)):
            s = timed(lambda: model.sample(batch_size, sampler=sampler, steps=nfe, x_T=x))
            add({"impl": f"zoo, net compiled ({compile_mode})", "sampler": f"{sampler.upper()}-{nfe}",
                 "seconds": s, "nfe": nfe})
    return rows
