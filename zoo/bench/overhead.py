"""The Trainer against a bare loop, and a sampler against its network forwards (issue 13's ratios)."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from zoo.bench.timing import best_time
from zoo.common.nets import UNet, UNetConfig
from zoo.common.trainer import TrainConfig, Trainer, channels_last_for, optimiser_kernels
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


def _bare(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int, device: torch.device,
          channels_last: bool | None = None) -> float:
    """The same computation as the Trainer's step with nothing around it: the Trainer's optimiser, its
    memory format (channels_last on CUDA, train.channels_last's default) and its resident data (on CUDA
    the data is moved once, before the clock, as the Trainer's constructor does). Until 2026-11-28 the
    bare loop ran NCHW and copied each batch from the host, a copy that waits for the device every step:
    the H200's eager 0.927 compared the Trainer's NHWC step against an NCHW one. `channels_last` False:
    NCHW on CUDA too, what the Trainer's layout choice costs or gains."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **optimiser_kernels(device))  # the Trainer's optimiser
    if channels_last_for(channels_last, device):
        model.to(memory_format=torch.channels_last)
    data = data.to(device)
    perm = torch.randperm(len(data)).to(device)
    t0 = time.perf_counter()
    for i in range(steps):
        batch = (data[perm[i * batch_size:(i + 1) * batch_size]],)
        loss = model.loss(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def _trainer(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int, device: str,
             cuda_graph: bool = False) -> float:
    cfg = TrainConfig(epochs=1, max_steps=steps, batch_size=batch_size, lr=1e-3, grad_clip=None,
                      ema_decay=0.0, device=device, progress=False, log_every=50, val_every=0, cuda_graph=cuda_graph)
    trainer = Trainer(model, (data,), cfg)  # no out_dir: nothing written
    t0 = time.perf_counter()
    trainer.fit()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def trainer_overhead(steps: int = 60, batch_size: int = 64, device: str = "cpu", repeats: int = 3) -> dict:
    """Best-of-`repeats` steps/s of the Trainer and of a bare loop of the same step, interleaved, and their
    ratio; on CUDA also the Trainer with train.cuda_graph (its steps/s include the three eager warm-up
    steps and the capture) against the same bare loop, and the bare loop NCHW (`nhwc_vs_nchw`: what
    the Trainer's channels_last default gains on this net, above 1, or costs)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    data = torch.rand(steps * batch_size, 1, 28, 28) * 2 - 1
    bare, trained, graphed, nchw = [], [], [], []
    for r in range(repeats + 1):  # the first round warms up caches and is discarded
        torch.manual_seed(r)
        b = _bare(_Denoise().to(dev), data, steps, batch_size, dev)
        torch.manual_seed(r)
        n = _bare(_Denoise().to(dev), data, steps, batch_size, dev, channels_last=False) if dev.type == "cuda" else b
        torch.manual_seed(r)
        t = _trainer(_Denoise(), data, steps, batch_size, device)
        torch.manual_seed(r)
        g = _trainer(_Denoise(), data, steps, batch_size, device, cuda_graph=True) if dev.type == "cuda" else None
        if r > 0:
            nchw.append(n)
            bare.append(b)
            trained.append(t)
            graphed.append(g)
    res = {"bare_steps_per_s": max(bare), "trainer_steps_per_s": max(trained),
           "ratio": max(trained) / max(bare), "steps": steps, "batch_size": batch_size, "device": device}
    if dev.type == "cuda":
        res.update(graph_steps_per_s=max(graphed), graph_ratio=max(graphed) / max(bare),
                   bare_nchw_steps_per_s=max(nchw), nhwc_vs_nchw=max(bare) / max(nchw))
    return res


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
        return best_time(fn, dev, repeats, n_calls)

    one = timed(forward, n_calls=10)
    ddim_s = timed(lambda: model.sample(batch_size, sampler="ddim", steps=ddim_steps, x_T=x))
    out = {"device": device, "batch_size": batch_size, "T": T, "forward_s": one,
           f"ddim{ddim_steps}_s": ddim_s, "ddim_ratio": ddim_s / (ddim_steps * one)}
    if ddpm:
        ddpm_s = timed(lambda: model.sample(batch_size, sampler="ddpm", x_T=x))
        out.update({f"ddpm{T}_s": ddpm_s, "ddpm_ratio": ddpm_s / (T * one)})
    return out


# Ops that only make a view (no kernel launch on any device).
_VIEW_OPS = frozenset({"view", "_unsafe_view", "expand", "unsqueeze", "squeeze", "slice", "select", "t", "permute",
                       "as_strided", "alias", "reshape", "detach", "lift_fresh"})


class _OpCounter(TorchDispatchMode):
    """Counts the non-view aten ops dispatched inside it (each one a kernel launch on a GPU)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.__name__.split(".")[0] not in _VIEW_OPS
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def sampler_step_ops(T: int = 40, steps: int = 10, batch_size: int = 2) -> dict:
    """Ops each sampler step dispatches beyond its network evaluations, with and without clipping x0_hat.

    Counted, not timed: (ops of a whole sampling run - NFE x ops of one network forward) / steps, on a
    tiny CPU U-Net (the count does not depend on its size or device). On a launch-bound GPU each op
    costs ~5-10 us of host time, which is what a sampler adds to its NFE forwards.
    """
    from zoo.gaussian.model import Config, GaussianDiffusion

    def ops(fn) -> int:
        with _OpCounter() as counter:
            fn()
        return counter.n

    torch.manual_seed(0)
    out = {}
    for clip in (False, True):
        model = GaussianDiffusion(Config(data="mnist-grey", channels=(8, 16), T=T, clip_x0=clip)).eval()
        x = torch.randn(batch_size, 1, 28, 28)
        t = torch.full((batch_size,), T // 2, dtype=torch.long)
        forward = ops(lambda: model.eps(x, t))
        for name, kw in (("ddpm", {}), ("ddim", {"steps": steps})):
            total = ops(lambda: model.sample(batch_size, sampler=name, x_T=x, **kw))
            n_steps = kw.get("steps", T)
            out[f"{name}{'_clip' if clip else ''}"] = (total - n_steps * forward) / n_steps
    return out
