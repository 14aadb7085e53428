"""Benchmarks behind `zoo bench`: ratios measured in one run, never timed tests."""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

from zoo.common.config import UsageError
from zoo.common.nets import UNet, UNetConfig
from zoo.common.trainer import TrainConfig, Trainer, fused_optimiser
from zoo.common.utils import append_dims


class _Denoise(nn.Module):
    """A minimal denoising objective on a small U-Net: predict the noise at a random level."""

    def __init__(self):
        super().__init__()
        self.net = UNet(UNetConfig(channels=(16, 32), embed_dim=32))

    def loss(self, batch):
        (x,) = batch
        t = torch.rand(x.shape[0], device=x.device)
        eps = torch.randn_like(x)
        x_t = append_dims((1 - t).sqrt(), x.ndim) * x + append_dims(t.sqrt(), x.ndim) * eps
        return {"loss": ((self.net(x_t, t) - eps) ** 2).mean()}


def _bare(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int, device: torch.device) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused_optimiser(device))  # the Trainer's optimiser
    perm = torch.randperm(len(data))
    t0 = time.perf_counter()
    for i in range(steps):
        batch = (data[perm[i * batch_size:(i + 1) * batch_size]].to(device),)
        loss = model.loss(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def _trainer(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int, device: str) -> float:
    cfg = TrainConfig(epochs=1, max_steps=steps, batch_size=batch_size, lr=1e-3, grad_clip=None,
                      ema_decay=0.0, device=device, progress=False, log_every=50, val_every=0)
    trainer = Trainer(model, (data,), cfg)  # no out_dir: nothing written
    t0 = time.perf_counter()
    trainer.fit()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def trainer_overhead(steps: int = 60, batch_size: int = 64, device: str = "cpu", repeats: int = 3) -> dict:
    """Best-of-`repeats` steps/s of the Trainer and of a bare loop, interleaved, and their ratio."""
    torch.manual_seed(0)
    dev = torch.device(device)
    data = torch.rand(steps * batch_size, 1, 28, 28) * 2 - 1
    bare, trained = [], []
    for r in range(repeats + 1):  # the first round warms up caches and is discarded
        torch.manual_seed(r)
        b = _bare(_Denoise().to(dev), data, steps, batch_size, dev)
        torch.manual_seed(r)
        t = _trainer(_Denoise(), data, steps, batch_size, device)
        if r > 0:
            bare.append(b)
            trained.append(t)
    return {"bare_steps_per_s": max(bare), "trainer_steps_per_s": max(trained),
            "ratio": max(trained) / max(bare), "steps": steps, "batch_size": batch_size, "device": device}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device: torch.device, repeats: int, n_calls: int = 1, warmup: bool = True) -> float:
    """Seconds per call of `fn`: best of `repeats` timed rounds of `n_calls` calls, after (with
    `warmup`) one discarded round that warms up caches, the allocator and any compilation."""
    best = float("inf")
    for r in range(repeats + int(warmup)):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n_calls):
            fn()
        _sync(device)
        if r >= int(warmup):
            best = min(best, time.perf_counter() - t0)
    return best / n_calls


@torch.no_grad()
def sampler_overhead(T: int = 1000, ddim_steps: int = 50, batch_size: int = 256, channels=(32, 64),
                     device: str = "cpu", repeats: int = 3, ddpm: bool = True) -> dict:
    """Wall time of DDIM-S (and DDPM-T) sampling over NFE x the time of one bare network forward.

    The same untrained Gaussian U-Net and batch for all three; best of `repeats` each (the first
    round warms up and is discarded). A ratio of 1.0 means the sampler adds nothing to the network.
    """
    from zoo.gaussian.model import Config, GaussianDiffusion

    torch.manual_seed(0)
    dev = torch.device(device)
    model = GaussianDiffusion(Config(data="mnist-grey", channels=tuple(channels), T=T, clip_x0=False)).to(dev).eval()
    x = torch.randn(batch_size, 1, 28, 28, device=dev)
    t = torch.full((batch_size,), T // 2, dtype=torch.long, device=dev)

    def forward() -> None:
        model.eps(x, t)

    def timed(fn, n_calls: int = 1) -> float:
        return _best_time(fn, dev, repeats, n_calls)

    one = timed(forward, n_calls=10)
    ddim_s = timed(lambda: model.sample(batch_size, sampler="ddim", steps=ddim_steps, x_T=x))
    out = {"device": device, "batch_size": batch_size, "T": T, "forward_s": one,
           f"ddim{ddim_steps}_s": ddim_s, "ddim_ratio": ddim_s / (ddim_steps * one)}
    if ddpm:
        ddpm_s = timed(lambda: model.sample(batch_size, sampler="ddpm", x_T=x))
        out.update({f"ddpm{T}_s": ddpm_s, "ddpm_ratio": ddpm_s / (T * one)})
    return out


# ---------------------------------------------------------------------- the U-Net step, with its speed options

# compile-graphs: torch.compile(mode="reduce-overhead"), CUDA graphs for the forward and backward (the
# host's per-kernel launch cost is what bounds the paper U-Nets on one H100); the same as compile on a CPU.
UNET_VARIANTS = ("eager", "eager-bf16", "channels-last", "compile", "compile-bf16", "compile-graphs")
COMPILE_MODES = {"compile": "default", "compile-bf16": "default", "compile-graphs": "reduce-overhead"}


def _zoo_unet(channels, device: torch.device) -> nn.Module:
    from zoo.gaussian.model import Config, GaussianDiffusion

    return GaussianDiffusion(Config(data="mnist-grey", arch="unet", channels=tuple(channels), T=1000,
                                    schedule="cosine", param="eps", loss="simple")).to(device)


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


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _step_rate(model: nn.Module, device: torch.device, batch_size: int, steps: int, repeats: int,
               bf16: bool = False, compile_mode: str | None = None, channels_last: bool = False) -> dict:
    """Training images/s of one fwd/bwd/Adam step of `model.loss` (best of `repeats` timed blocks of
    `steps` steps, after a warm-up that includes any compilation), and the peak memory on CUDA."""
    from zoo.common.trainer import _LossModule

    if channels_last:
        model.to(memory_format=torch.channels_last)
    step_fn = torch.compile(_LossModule(model), mode=compile_mode) if compile_mode else _LossModule(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused_optimiser(device))
    x = torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1

    def one() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_fn((x,))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s = 3 * _best_time(one, device, repeats=1, n_calls=3, warmup=False)  # cuDNN tuning, allocator, compile
    best = steps * _best_time(one, device, repeats, n_calls=steps, warmup=False)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")
    return {"img_per_s": steps * batch_size / best, "steps_per_s": steps / best, "warmup_s": warmup_s,
            "peak_mib": peak}


def unet_training(channels=(32, 64, 128), batch_size: int = 128, steps: int = 30, device: str = "cpu",
                  repeats: int = 2, variants=UNET_VARIANTS, peer: bool = True, on_row=None) -> list[dict]:
    """Training throughput of the paper U-Net under each speed option, and of diffusers' UNet2DModel
    at the same widths (if diffusers is installed; `pip install .[bench]`) with the same loss.
    `on_row(row)` sees each row as soon as it is measured (`vs_eager`: against the first row)."""
    unknown = [v for v in variants if v not in UNET_VARIANTS]
    if unknown:  # before anything is measured
        raise UsageError(f"unknown variants {unknown}; choose from {', '.join(UNET_VARIANTS)}")
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
        model = _zoo_unet(channels, dev)
        res = _step_rate(model, dev, batch_size, steps, repeats, bf16=name.endswith("bf16"),
                         compile_mode=COMPILE_MODES.get(name), channels_last=name == "channels-last")
        add({"net": "zoo UNet", "variant": name, "params": _params(model.net), **res})
    if peer:
        try:
            from diffusers import UNet2DModel  # noqa: F401
        except Exception as e:  # absent, or broken by its own dependencies: say so, measure the rest
            warnings.warn(f"diffusers peer skipped: {type(e).__name__}: {e}")
            peer = False
    if peer:
        process = _zoo_unet(channels, dev).process
        for name in ("eager", "eager-bf16"):
            torch.manual_seed(0)
            model = _PeerLoss(channels, dev, process)
            res = _step_rate(model, dev, batch_size, steps, repeats, bf16=name.endswith("bf16"))
            add({"net": "diffusers UNet2DModel", "variant": name, "params": _params(model.net), **res})
    return rows


@torch.no_grad()
def sampler_variants(T: int = 1000, ddim_steps: int = 50, batch_size: int = 1000, channels=(32, 64, 128),
                     device: str = "cpu", repeats: int = 2, compile_mode: str | None = "default",
                     peer: bool = True, on_row=None) -> list[dict]:
    """DDIM-S and DDPM-T wall time of zoo's sampler (eager, and with the network compiled) and of
    diffusers' DDIMScheduler / DDPMScheduler driving the same network; each against S (or T) x one
    forward of the eager network."""
    from zoo.gaussian.model import Config, GaussianDiffusion

    torch.manual_seed(0)
    dev = torch.device(device)
    model = GaussianDiffusion(Config(data="mnist-grey", channels=tuple(channels), T=T, schedule="cosine",
                                     clip_x0=False)).to(dev).eval()
    x = torch.randn(batch_size, 1, 28, 28, device=dev)
    t_mid = torch.full((batch_size,), T // 2, dtype=torch.long, device=dev)

    def timed(fn, n_calls: int = 1) -> float:
        return _best_time(fn, dev, repeats, n_calls)

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
    if compile_mode:
        model.net = torch.compile(model.net, mode=compile_mode)
        for sampler, nfe in (("ddim", ddim_steps), ("ddpm", T)):
            s = timed(lambda: model.sample(batch_size, sampler=sampler, steps=nfe, x_T=x))
            add({"impl": f"zoo, net compiled ({compile_mode})", "sampler": f"{sampler.upper()}-{nfe}",
                 "seconds": s, "nfe": nfe})
    return rows


# ---------------------------------------------------------------------- CPU threads, idle and beside another job

def _trainer_rate(env: dict, steps: int, timeout: float) -> float | None:
    """Trainer steps/s of `zoo bench trainer` in a fresh process with `env` (None: it timed out)."""
    import os
    import re
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "zoo.cli", "bench", "trainer", "--steps", str(steps), "--repeats", "1"]
    try:
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return None
    found = re.search(r"Trainer\s*:\s*([\d.]+) steps/s", out)
    return float(found.group(1)) if found else None


def thread_policies(steps: int = 20, timeout: float = 240.0, on_row=None) -> list[dict]:
    """`zoo bench trainer` steps/s per thread setting, alone and beside a competing training job (a
    second trainer with torch's default threads, the situation of a test run or a helper's training)."""
    import os
    import subprocess
    import sys

    from zoo.common.threads import choose_threads, usable_cpus

    cpus = usable_cpus()
    settings = [(f"{cpus} threads, spinning (torch's default)", {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "ACTIVE"}),
                (f"{cpus} threads, passive wait", {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"}),
                ("1 thread", {"OMP_NUM_THREADS": "1"})]
    rows = []
    for situation in ("alone", "beside a competing job"):
        competitor = None
        if situation != "alone":
            competitor = subprocess.Popen([sys.executable, "-m", "zoo.cli", "bench", "trainer", "--steps", "100000",
                                           "--repeats", "1"], env={**os.environ, "OMP_NUM_THREADS": str(cpus)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(5)  # let it start training
        try:
            for label, env in settings:
                rate = _trainer_rate(env, steps, timeout)
                picked = choose_threads(cpus, 0.0 if situation == "alone" else 1.0)
                row = {"situation": situation, "setting": label, "steps_per_s": rate, "cpus": cpus,
                       "policy_threads": picked, "timeout_s": timeout}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    return rows


# ---------------------------------------------------------------------- where a training step's time goes

# Operator categories of a profile, matched in order on the aten name (self time, so nothing counts twice).
PROFILE_CATEGORIES = (("convolution", ("conv",)), ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
                      ("normalisation", ("group_norm", "layer_norm", "batch_norm")),
                      ("optimiser", ("_foreach", "adam")),
                      ("elementwise and other", ("",)))


def _category(name: str) -> str:
    low = name.lower()
    return next(cat for cat, keys in PROFILE_CATEGORIES if any(k in low for k in keys))


def _matmul_rate(device: torch.device, n: int, repeats: int) -> float:
    """FLOP/s of one n x n x n fp32 matmul: the machine's dense ceiling as torch reaches it."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / _best_time(lambda: a @ b, device, repeats, n_calls=3)


def profile_step(channels=(32, 64, 128), batch_size: int = 128, steps: int = 10, device: str = "cpu",
                 repeats: int = 2, trace: str | None = None, top: int = 12) -> dict:
    """Where one training step of the Gaussian U-Net (eps, simple loss, Adam) spends its time.

    Measures, in one run: the step's wall time (best of `repeats`, unprofiled); its FLOPs, forward and
    backward (torch.utils.flop_counter); the machine's dense fp32 matmul rate, so that achieved/peak
    says how close to compute-bound the step is; the Adam step alone, fused and torch's default; and a
    torch.profiler profile of `steps` steps: host time per phase (forward, backward, optimiser) and per
    operator category, and on CUDA the kernels per step and the fraction of the wall the GPU is busy
    (low: launch-bound, the host is the limit). `trace`: also write a Chrome trace (chrome://tracing,
    Perfetto)."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.common.trainer import _LossModule

    dev = torch.device(device)
    torch.manual_seed(0)
    model = _zoo_unet(channels, dev)
    step_fn = _LossModule(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused_optimiser(dev))
    x = torch.rand(batch_size, 1, 28, 28, device=dev) * 2 - 1

    def one() -> None:  # its three phases labelled for the profile (free when no profiler runs)
        with record_function("zoo::forward"):
            loss = step_fn((x,))["loss"]
        with record_function("zoo::backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("zoo::optimiser"):
            opt.step()

    def adam_step_s(**kw) -> float:  # the optimiser step alone, on this model's gradients
        o = torch.optim.Adam(model.parameters(), lr=1e-4, **kw)
        return _best_time(o.step, dev, repeats, n_calls=10)

    step_s = _best_time(one, dev, repeats, n_calls=steps)
    opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        step_fn((x,))["loss"].backward()  # the gradients stay for the optimiser timing
    flops = counter.get_total_flops()
    adam = {"fused": adam_step_s(fused=True), "default": adam_step_s()}
    peak = _matmul_rate(dev, 4096 if dev.type == "cuda" else 1024, repeats)

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    _sync(dev)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            one()
        _sync(dev)
    if trace:
        prof.export_chrome_trace(trace)
    averages = prof.key_averages()
    events = [e for e in averages if e.key.startswith("aten::")]
    host = sum(e.self_cpu_time_total for e in events) or 1.0
    shares: dict[str, float] = {cat: 0.0 for cat, _ in PROFILE_CATEGORIES}
    for e in events:
        shares[_category(e.key)] += e.self_cpu_time_total / host
    marks = {e.key.removeprefix("zoo::"): e.cpu_time_total for e in averages if e.key.startswith("zoo::")}
    phases = {k: v / (sum(marks.values()) or 1.0) for k, v in marks.items()}
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    out = {"device": device, "channels": tuple(channels), "batch_size": batch_size, "steps": steps,
           "params": _params(model.net), "step_ms": 1e3 * step_s, "img_per_s": batch_size / step_s,
           "gflop_per_step": flops / 1e9, "achieved_gflops": flops / step_s / 1e9, "matmul_gflops": peak / 1e9,
           "of_peak": flops / step_s / peak, "adam_step_ms": {k: 1e3 * v for k, v in adam.items()},
           "host_phases": phases, "host_shares": shares,
           "aten_calls_per_step": sum(e.count for e in events) / steps,
           "top_ops": [{"op": e.key, "calls_per_step": e.count / steps,
                        "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps} for e in ops]}
    if dev.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.time_range.elapsed_us() for e in kernels)
        wall_us = (max(e.time_range.end for e in prof.events()) - min(e.time_range.start for e in prof.events()))
        out.update(kernels_per_step=len(kernels) / steps, gpu_busy=busy_us / max(wall_us, 1))
    return out
