"""Where a training step's time goes: FLOP/s against the machine's matmul ceiling, host time per phase and
operator category, and on CUDA the kernels per step and the GPU's busy fraction."""

from __future__ import annotations

import torch

from zoo.bench.timing import best_time, param_count, sync, zoo_unet
from zoo.common.trainer import bf16_autocast, optimiser_kernels

# Operator categories of a profile, matched in order on the aten name (self time, so nothing counts twice).
PROFILE_CATEGORIES = (("convolution", ("conv",)), ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
                      ("normalisation", ("group_norm", "layer_norm", "batch_norm")),
                      ("optimiser", ("_foreach", "adam")),
                      ("elementwise and other", ("",)))


# GPU kernel categories, matched in order on the lowercased kernel name (cuDNN's, cuBLAS's and ATen's
# names as the profiler reports them): the GroupNorm kernels' element-wise passes carry "GroupNorm" in
# their template arguments, a cast or a layout change is a copy kernel, cuDNN's convolutions are
# implicit GEMMs (fprop, dgrad, wgrad), so they are matched before plain GEMMs.
KERNEL_CATEGORIES = (("normalisation", ("groupnorm", "group_norm", "rowwisemoments", "computefusedparams",
                                        "computeinternalgradients", "gammabeta", "layer_norm", "batch_norm")),
                     ("copies (layout, dtype)", ("nchwtonhwc", "nhwctonchw", "direct_copy", "copy_kernel",
                                                 "transpose")),
                     ("convolution", ("conv", "fprop", "dgrad", "wgrad")),
                     ("matmul", ("gemm", "gemv")),
                     ("optimiser", ("multi_tensor_apply", "adam")),
                     ("reduction", ("reduce_kernel",)),
                     ("elementwise and other", ("",)))


def _category(name: str, categories=PROFILE_CATEGORIES) -> str:
    low = name.lower()
    return next(cat for cat, keys in categories if any(k in low for k in keys))


def _matmul_rate(device: torch.device, n: int, repeats: int) -> float:
    """FLOP/s of one n x n x n fp32 matmul: the machine's dense ceiling as torch reaches it."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / best_time(lambda: a @ b, device, repeats, n_calls=3)


def profile_step(channels=(32, 64, 128), batch_size: int = 128, steps: int = 10, device: str = "cpu",
                 repeats: int = 2, trace: str | None = None, top: int = 12, cuda_graph: bool = False,
                 channels_last: bool | None = None, bf16: bool = False) -> dict:
    """Where one training step of the Gaussian U-Net (eps, simple loss, Adam) spends its time.

    Measures, in one run: the step's wall time (best of `repeats`, unprofiled); its FLOPs, forward and
    backward (torch.utils.flop_counter); the machine's dense fp32 matmul rate, so that achieved/peak
    says how close to compute-bound the step is; the Adam step alone in each of torch's implementations
    (fused, foreach, per-tensor); and a torch.profiler profile of `steps` steps: host time per phase
    (forward, backward, optimiser) and per operator category, and on CUDA the kernels per step, the
    fraction of the wall the GPU is busy (low: launch-bound, the host is the limit) and the kernels that
    take the most GPU time. `trace`:
    also write a Chrome trace (chrome://tracing, Perfetto). `cuda_graph`: time and profile the step as
    `zoo bench unet`'s cuda-graph variant runs it (channels_last, capturable Adam, the whole step
    replayed as one CUDA graph): the host phases are then empty, and the kernel table says where the
    GPU's time goes once the host is out of the loop. `channels_last`: NHWC weights (None: with
    `cuda_graph`, as that variant); `bf16`: the forward under bf16 autocast (the cuda-graph-bf16
    variant). On CUDA, `kernel_shares` sums the GPU time per KERNEL_CATEGORIES entry."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.bench.unet import graphed
    from zoo.common.trainer import _LossModule

    dev = torch.device(device)
    torch.manual_seed(0)
    model = zoo_unet(channels, dev)
    nhwc = cuda_graph if channels_last is None else channels_last  # the cuda-graph variant's, the Trainer's on CUDA
    if nhwc:
        model.to(memory_format=torch.channels_last)
    loss_module = _LossModule(model)

    def step_fn(batch):
        with bf16_autocast(dev, bf16, cuda_graph):
            return loss_module(batch)

    opt = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=cuda_graph, **optimiser_kernels(dev, cuda_graph))
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
        return best_time(o.step, dev, repeats, n_calls=10)

    opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        step_fn((x,))["loss"].backward()  # the gradients stay for the optimiser timing
    flops = counter.get_total_flops()
    adam = {"fused": adam_step_s(fused=True), "foreach": adam_step_s(foreach=True),
            "per-tensor": adam_step_s(foreach=False)}
    if cuda_graph:  # the same three phases, captured once (after three eager steps) and replayed
        def raw() -> None:
            step_fn((x,))["loss"].backward()
            opt.step()

        one = graphed(raw, opt, dev)
    step_s = best_time(one, dev, repeats, n_calls=steps)
    peak = _matmul_rate(dev, 4096 if dev.type == "cuda" else 1024, repeats)

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync(dev)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            one()
        sync(dev)
    if trace:
        prof.export_chrome_trace(trace)
    averages = prof.key_averages()
    events = [e for e in averages if e.key.startswith("aten::")]
    host = sum(e.self_cpu_time_total for e in events) or 1.0
    shares: dict[str, float] = {cat: 0.0 for cat, _ in PROFILE_CATEGORIES}
    for e in events:
        shares[_category(e.key)] += e.self_cpu_time_total / host
    # Host time of each labelled phase. On CUDA each label also has a GPU annotation entry (the averages
    # group by device) with no CPU time, which overwrote the host entry: forward 0%, backward 0% on the
    # H200 (2026-11-28). Only the CPU entries count.
    marks: dict[str, float] = {}
    for e in averages:
        if e.key.startswith("zoo::") and e.device_type == DeviceType.CPU:
            name = e.key.removeprefix("zoo::")
            marks[name] = marks.get(name, 0.0) + e.cpu_time_total
    phases = {k: v / (sum(marks.values()) or 1.0) for k, v in marks.items()}
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    out = {"device": device, "cuda_graph": cuda_graph, "channels_last": nhwc, "bf16": bf16,
           "channels": tuple(channels), "batch_size": batch_size, "steps": steps,
           "params": param_count(model.net), "step_ms": 1e3 * step_s, "img_per_s": batch_size / step_s,
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
        gpu = sorted((e for e in averages if e.device_type == DeviceType.CUDA),
                     key=lambda e: e.self_device_time_total, reverse=True)[:top]
        out["top_kernels"] = [{"kernel": e.key, "calls_per_step": e.count / steps,
                               "ms_per_step": e.self_device_time_total / 1e3 / steps} for e in gpu]
        out["kernel_shares"] = _kernel_shares([(k.name, k.time_range.elapsed_us()) for k in kernels])
    return out


def _kernel_shares(kernels: list[tuple[str, float]]) -> dict[str, float]:
    """Each KERNEL_CATEGORIES entry's share of the summed GPU time of `kernels` ((name, microseconds))."""
    shares = {cat: 0.0 for cat, _ in KERNEL_CATEGORIES}
    total = sum(us for _, us in kernels) or 1.0
    for name, us in kernels:
        shares[_category(name, KERNEL_CATEGORIES)] += us / total
    return shares
