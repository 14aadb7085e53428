"""Device mixing, caught on the CPU: every formulation's loss, sampler and likelihood on the `meta` device.

A tensor created on the CPU inside a code path (``torch.zeros(n)`` without ``device=``, a float64
coefficient table never moved, a batch that was not placed on the model's device) meets the
model's meta tensors and raises "Tensor on device meta is not on the expected device cpu",
exactly as it would meet CUDA tensors on a GPU. A seeded CPU generator handed to a draw on
another device is what CUDA refuses too; `StrictGenerators` makes the CPU refuse it. A host value
turned into a device tensor (``torch.as_tensor(t, device=x.device)`` for an int step) works on any
device but waits for the GPU at every call; `NoHostCopies` refuses it. The meta device has no
data, so these tests check placement only; the numbers are checked elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from zoo.formulations import module

META = torch.device("meta")


class StrictGenerators(TorchFunctionMode):
    """Raise, as CUDA does, when a random draw gets a generator on another device than its output."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gen = kwargs.get("generator")
        if gen is not None:
            device = kwargs.get("device")
            if device is None:
                device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
            if torch.device(device).type != gen.device.type:
                raise RuntimeError(f"{getattr(func, '__name__', func)}: a {gen.device} generator for a draw on {device}")
        return func(*args, **kwargs)


class NoHostCopies(TorchFunctionMode):
    """Raise on torch.tensor / torch.as_tensor of host data for another device: on CUDA that copies from
    pageable memory and waits for the GPU, a host sync per call (per step, inside a loop)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type != "cpu":
            data = args[0] if args else kwargs.get("data")
            if not (isinstance(data, torch.Tensor) and data.device.type != "cpu"):
                raise RuntimeError(f"{func.__name__} copies host data to {device} (a sync on CUDA); fill it there")
        return func(*args, **kwargs)


# (formulation, Config overrides, example shape, sample kwargs of each variant)
CASES = [
    ("gaussian", dict(data="mnist-grey", channels=(8, 16), T=20), (1, 28, 28),
     [dict(sampler="ddpm"), dict(sampler="ddim", steps=4, eta=1.0), dict(sampler="ode", steps=3, method="heun")]),
    ("gaussian", dict(data="mnist-grey", arch="scorenet", channels=(4, 8, 8, 8), T=20, param="mean",
                      loss="mean-matching"), (1, 28, 28), [dict(sampler="ddim", steps=4)]),
    ("gaussian", dict(data="mnist-grey", channels=(8, 16), T=20, param="v", num_classes=10), (1, 28, 28),
     [dict(sampler="ddim", steps=4, w=2.0)]),
    ("gaussian", dict(data="swiss-roll", arch="mlp", hidden=16, layers=2, T=20, mlp_time="concat"), (2,),
     [dict(sampler="ddpm")]),
    ("gaussian", dict(data="mnist-binary", channels=(8, 16), T=20, learn_variance=True, t_sampling="importance",
                      variance="learned", nll_variance="learned"), (1, 28, 28), [dict(sampler="ddpm")]),
    ("ve", dict(data="mnist-grey", channels=(8, 16), embed_dim=16, dt=0.25), (1, 28, 28),
     [dict(rule="lambda"), dict(rule="stochastic"), dict(rule=1.0)]),
    ("ve", dict(data="spiral", hidden=16, layers=2, dt=0.25), (2,), [dict(rule="lambda")]),
    ("binary", dict(data="mnist-binary", channels=(8, 16), T=5), (1, 28, 28), [dict()]),
    ("binary", dict(data="mnist-binary", channels=(8, 16), T=5, parameterisation="x0"), (1, 28, 28), [dict()]),
    ("binary", dict(data="mnist-binary", channels=(8, 16), T=5, num_classes=10), (1, 28, 28), [dict(w=2.0)]),
    ("absorbing", dict(data="mnist-binary", channels=(8, 16), T=5), (1, 28, 28), [dict(), dict(steps=2)]),
    ("absorbing", dict(data="mnist-binary", channels=(8, 16), T=5, num_classes=10), (1, 28, 28), [dict(w=2.0)]),
    ("vae", dict(data="mnist-binary", latent_dim=4, iwae_k=3), (1, 28, 28), [dict()]),
    ("vae", dict(data="mnist-grey", likelihood="gaussian", arch="mlp", latent_dim=4, iwae_k=3), (1, 28, 28), [dict()]),
    ("vae", dict(data="mnist-grey", likelihood="discretised-logistic", latent_dim=4, iwae_k=3), (1, 28, 28),
     [dict(), dict(mean=True)]),
]
# The VE likelihood integrates an ODE (64 Heun steps by default, each a forward and a backward pass:
# about 35 s on meta); a few steps exercise the same code.
NLL_KW = {"ve": {"steps": 2}}


def _meta_model(name: str, overrides: dict):
    mod = module(name)
    torch.manual_seed(0)
    return mod.build(mod.Config(**overrides)).to(META)


def _batch(shape, overrides, device):
    x = torch.zeros((3, *shape), device=device)
    return (x, torch.zeros(3, dtype=torch.long, device=device)) if overrides.get("num_classes") else (x,)


@pytest.mark.parametrize("name, overrides, shape, samplers", CASES,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_loss_sample_and_nll_stay_on_the_model_device(name, overrides, shape, samplers):
    model = _meta_model(name, overrides)
    with StrictGenerators(), NoHostCopies():
        # Inputs from the caller may sit on the CPU (as a test set or an x_T drawn with a seeded CPU
        # generator does): every entry point places them on the model's device.
        for device in ("cpu", META):
            assert model.loss(_batch(shape, overrides, device))["loss"].device == META
            if hasattr(model, "nll"):
                assert model.nll(_batch(shape, overrides, device)[:1], **NLL_KW.get(name, {})).device == META
        for kw in samplers:
            gen = torch.Generator().manual_seed(0)
            x = model.sample(2, generator=gen, **kw)
            assert x.device == META and tuple(x.shape[1:]) == shape, kw


@pytest.mark.parametrize("name, overrides, shape", [c[:3] for c in CASES if c[0] != "vae"],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_sample_takes_starting_noise_from_the_cpu(name, overrides, shape):
    model = _meta_model(name, overrides)
    x_T = torch.randn(2, *shape)  # CPU, as an experiment draws it once for every sampler
    assert model.sample(2, x_T=x_T).device == META


def test_the_checks_themselves_catch_mixing():
    """A float64 table left on the CPU raises against meta data; so does a CPU generator for a meta draw."""
    table = torch.linspace(0.1, 0.9, 10, dtype=torch.float64)
    x = torch.empty(4, 3, device=META)
    with pytest.raises((RuntimeError, NotImplementedError)):
        _ = table[:4].unsqueeze(1).expand_as(x) * x
    with StrictGenerators(), pytest.raises(RuntimeError, match="generator"):
        torch.rand(3, generator=torch.Generator(), device=META)
    with NoHostCopies(), pytest.raises(RuntimeError, match="host data"):
        torch.as_tensor(5, device=META)
    with NoHostCopies():  # on the device already, or filled there: allowed
        torch.as_tensor(torch.zeros(2, device=META), device=META)
        torch.full((2,), 5, device=META)


@pytest.mark.parametrize("name, overrides, shape, samplers", CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_formulation_runs_on_device(device, name, overrides, shape, samplers):
    """The same code paths with real numbers on each available device: finite loss, gradients, samples, nll."""
    mod = module(name)
    torch.manual_seed(0)
    model = mod.build(mod.Config(**overrides)).to(device)
    x = torch.rand((3, *shape), device=device) * 2 - 1  # (3, ...) in [-1, 1]
    if overrides.get("data", "").startswith("mnist-binary"):
        x = torch.where(x > 0, 1.0, -1.0)
    batch = (x, torch.arange(3, device=device)) if overrides.get("num_classes") else (x,)
    loss = model.loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for kw in samplers:
        x = model.sample(2, generator=torch.Generator().manual_seed(1), **kw)
        assert x.device.type == device.type and torch.isfinite(x).all(), kw
    if hasattr(model, "nll"):
        assert torch.isfinite(model.nll(batch[:1], **NLL_KW.get(name, {}))).all()
