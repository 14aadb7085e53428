"""What every benchmark shares: a best-of-N timer that waits for the GPU, the benchmarked Gaussian U-Net,
and a parameter count."""

from __future__ import annotations

import time

import torch
from torch import nn


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeats: int, n_calls: int = 1, warmup: bool = True) -> float:
    """Seconds per call of `fn`: best of `repeats` timed rounds of `n_calls` calls, after (with
    `warmup`) one discarded round that warms up caches, the allocator and any compilation."""
    best = float("inf")
    for r in range(repeats + int(warmup)):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_calls):
            fn()
        sync(device)
        if r >= int(warmup):
            best = min(best, time.perf_counter() - t0)
    return best / n_calls


def zoo_unet(channels, device: torch.device) -> nn.Module:
    from zoo.gaussian.model import Config, GaussianDiffusion

    return GaussianDiffusion(Config(data="mnist-grey", arch="unet", channels=tuple(channels), T=1000,
                                    schedule="cosine", param="eps", loss="simple")).to(device)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
