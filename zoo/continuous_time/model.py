"""The variance-exploding formulation for the Trainer (SPEC sections 3 and 8).

Time convention as in `zoo.continuous_time.ve`: ``t`` in [0, 1], ``x_t = x0 + N(0, sigma_q^2 t)``,
``dt = 1/N``; the network's time input is ``t`` itself.

The network's output is turned into ``f(x_t, t) ~ E[x_{t-dt} | x_t]`` by one of two
parameterisations (validated at construction):

- ``"f"``:  Pseudocode 1's ``f_theta`` with a skip connection, ``f = x_t + dt * net``; the network
  predicts the mean step per unit time ``(f - x_t)/dt``, which keeps its output O(1);
- ``"x0"``: the network predicts ``x0_hat ~ E[x0 | x_t]`` and ``f = x_t + (dt/t)(x0_hat - x_t)``.

Both give ``x0_hat`` exactly (`ve.x0_from_f`), so a model trained at one ``dt`` samples at any.
Training (Pseudocode 1): ``t ~ U[0, 1 - dt]``, ``x_t = x0 + N(0, sigma_q^2 t)``,
``x_{t+dt} = x_t + N(0, sigma_q^2 dt)``, loss ``w |f(x_{t+dt}, t + dt) - target|^2`` with the target
``x_t`` (``"sampled"``) or ``E[x_t | x_{t+dt}, x0]`` (``"analytic"``, lower variance), and the
weight ``w`` = ``1/dt^2`` (``"f"``: Pseudocode 1's loss, rescaled by a constant) or
``((t + dt)/dt)^2`` (``"x0"``: the same error measured on x0, uniform over t).
The network sees ``x_t / sqrt(1 + sigma_q^2 t)`` so that its input has unit scale at every t.

Likelihood: ``ode_nll`` (also ``nll``), the probability-flow ODE from ``t_min`` (default ``dt``, the
smallest time the network is trained at) to ``t = 1`` with the sampler's prior N(0, sigma_q^2 I),
8-bit data dequantised (SPEC 11; `ve.ode_terms`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.common.config import ConfigError, at_least, in_range, one_of, widths
from zoo.common.nets import MLP, UNet, UNetConfig
from zoo.common.ode_likelihood import BIN_WIDTH_8BIT
from zoo.common.utils import append_dims, module_device, randn
from zoo.continuous_time import ve
from zoo.common.data import DATASETS, is_image

PARAMETERISATIONS = ("f", "x0")
TARGETS = ("sampled", "analytic")
WEIGHTINGS = ("f", "x0")


@dataclass(frozen=True)
class Config:
    data: str = "spiral"  # one of zoo.common.data.DATASETS ("mnist-grey" or a 2-D toy)
    sigma_q: float = 4.0  # terminal noise scale: x_1 ~ N(0, sigma_q^2)
    dt: float = 0.01  # step of the training target (and default sampling step), 1/dt whole
    parameterisation: str = "x0"  # f | x0
    target: str = "analytic"  # sampled (Pseudocode 1) | analytic (E[x_{t-dt} | x_t, x0])
    weighting: str = "x0"  # f (Pseudocode 1) | x0 (uniform on x0)
    hidden: int = 128  # MLP (2-D data): width
    layers: int = 3  # MLP: hidden layers (ReLU)
    channels: tuple[int, ...] = (32, 64, 128)  # U-Net (MNIST) widths per level
    embed_dim: int = 64  # U-Net time embedding

    def __post_init__(self):
        validate(self)


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    one_of(value, name, choices)


def validate(cfg: Config) -> None:
    """Every variant name and range checked once (at construction), with the valid choices."""
    _check("dataset", cfg.data, tuple(DATASETS))
    _check("parameterisation", cfg.parameterisation, PARAMETERISATIONS)
    _check("target", cfg.target, TARGETS)
    _check("weighting", cfg.weighting, WEIGHTINGS)
    in_range(cfg.sigma_q, "sigma_q", 0, None, lo_open=True)
    in_range(cfg.dt, "dt", 0, 1, lo_open=True)
    try:
        ve.num_steps(cfg.dt)
    except ValueError as e:
        raise ConfigError(f"{e} (e.g. dt=0.01)") from None
    for name in ("hidden", "layers", "embed_dim"):
        at_least(getattr(cfg, name), name, 1)
    widths(cfg.channels, "channels")


class VEDiffusion(nn.Module):
    """A network plus the VE process: ``loss(batch)``, ``f``, ``x0_hat`` and ``sample(n)``."""

    NETWORK = "net"  # the submodule whose calls are network evaluations (NFE)

    def __init__(self, cfg: Config):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        if is_image(cfg.data):
            self.shape = (1, 28, 28)
            self.net = UNet(UNetConfig(channels=tuple(cfg.channels), embed_dim=cfg.embed_dim))
        else:
            self.shape = (2,)
            self.net = MLP(dim=2, hidden=cfg.hidden, layers=cfg.layers, time="concat", act="relu")
        self._x0_hat = {"f": self._x0_from_step, "x0": self._x0_direct}[cfg.parameterisation]
        self._target = {"sampled": self._sampled_target, "analytic": self._analytic_target}[cfg.target]
        self._weight = {"f": lambda s, dt: torch.full_like(s, 1 / dt ** 2),
                        "x0": lambda s, dt: (s / dt) ** 2}[cfg.weighting]

    # ------------------------------------------------------------------ the network as f and x0_hat

    def _net(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c_in = append_dims((1 + self.cfg.sigma_q ** 2 * t).rsqrt(), x_t.ndim)
        return self.net(c_in * x_t, t)

    def _x0_direct(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._net(x_t, t)

    def _x0_from_step(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # f = x_t + dt * net  <=>  x0_hat = x_t + (t/dt)(f - x_t) = x_t + t * net, for every dt.
        return x_t + append_dims(t, x_t.ndim) * self._net(x_t, t)

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's estimate of E[x0 | x_t]; t a float tensor (B,) in (0, 1]."""
        return self._x0_hat(x_t, t)

    def f(self, x_t: torch.Tensor, t: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        """The model's estimate of E[x_{t-dt} | x_t] (default dt: the training step)."""
        dt = self.cfg.dt if dt is None else dt
        return ve.posterior_mean(x_t, self.x0_hat(x_t, t), t, dt)

    # ------------------------------------------------------------------ training (Pseudocode 1)

    def _sampled_target(self, x_prev, x_s, x0, s, dt):
        return x_prev

    def _analytic_target(self, x_prev, x_s, x0, s, dt):
        return ve.posterior_mean(x_s, x0, s, dt)

    def loss_per_example(self, x0: torch.Tensor) -> torch.Tensor:
        """w(s) |f(x_s, s) - target|^2 averaged over dimensions, s = t + dt; one value per example."""
        dt, sigma_q = self.cfg.dt, self.cfg.sigma_q
        t = torch.rand(x0.shape[0], device=x0.device) * (1 - dt)  # t ~ U[0, 1 - dt]
        x_t = ve.q_sample(x0, t, sigma_q, torch.randn_like(x0))  # the "x_{t-dt}" of the sampler
        s = t + dt
        x_s = ve.forward_step(x_t, dt, sigma_q, torch.randn_like(x0))
        target = self._target(x_t, x_s, x0, s, dt)
        err = (self.f(x_s, s, dt) - target) ** 2
        return self._weight(s, dt) * err.flatten(1).mean(1)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return {"loss": self.loss_per_example(batch[0].to(module_device(self))).mean()}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, rule="lambda", dt: float | None = None,
               x_1: torch.Tensor | None = None, callback=None, x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n samples with `ve.sample` (``rule`` "lambda", "stochastic" or a fixed lambda) from
        x_1 ~ N(0, sigma_q^2) (or the given starting noise ``x_T``, alias ``x_1``), at step ``dt``
        (default: the training dt)."""
        dt = self.cfg.dt if dt is None else dt
        device = module_device(self)
        x_1 = x_T if x_1 is None else x_1  # x_T: the name every formulation's sample() takes
        if x_1 is None:
            x_1 = self.cfg.sigma_q * randn((n, *self.shape), generator, device)
        was_training = self.training
        self.eval()
        try:
            return ve.sample(lambda x, t: self.f(x, t, dt), x_1.to(device), dt, rule, self.cfg.sigma_q,
                             generator=generator, callback=callback)
        finally:
            self.train(was_training)


    # ------------------------------------------------------------------ likelihood (SPEC 11)

    def ode_nll(self, batch, steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
                generator: torch.Generator | None = None, t_min: float | None = None) -> torch.Tensor:
        """-log p(x) through the probability-flow ODE in nats per example (B,), dequantisation included."""
        return self.ode_terms(batch, steps, solver, hutchinson, generator, t_min)["total"]

    nll = ode_nll  # the zoo's likelihood of this formulation

    def ode_terms(self, batch, steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
                  generator: torch.Generator | None = None, t_min: float | None = None) -> dict[str, torch.Tensor]:
        """The ODE likelihood's terms (`ve.ode_terms`): "ode", "dequant" (-D log w on 8-bit data, from a
        uniform u over each bin drawn with ``generator``), "total", "bits_per_dim", "prior", "divergence".

        ``t_min`` (default ``dt``): where the flow starts. Below the smallest training time the
        network extrapolates, and x0_hat/t is singular at t = 0.
        """
        t_min = self.cfg.dt if t_min is None else t_min
        dtype = next(self.parameters()).dtype
        bin_width = BIN_WIDTH_8BIT if DATASETS[self.cfg.data][1] == "grey" else None
        was_training = self.training
        self.eval()
        try:
            x0_hat = lambda x, t: self.x0_hat(x.to(dtype), t.to(dtype))  # noqa: E731
            return ve.ode_terms(x0_hat, batch[0].to(module_device(self)), self.cfg.sigma_q, bin_width, t_min,
                                steps=steps, solver=solver, hutchinson=hutchinson, generator=generator)
        finally:
            self.train(was_training)


def build(cfg: Config) -> VEDiffusion:
    """The formulation of `cfg` (zoo.formulations contract)."""
    return VEDiffusion(cfg)

