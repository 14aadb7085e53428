"""The Gaussian VP diffusion formulation: config, parameterisations, losses, guidance (SPEC 1, 8).

Time convention: 1-based steps t = 1..T drawn uniformly for training; the network is called as
``net(x_t, t / T, y)`` (zoo/common/nets.py) with ``y = num_classes`` the null class of
classifier-free guidance. Every parameterisation is turned into an eps prediction and a reverse
mean ``mu_theta`` exactly, so every loss, sampler and the ELBO work with each of them:

    eps   the network predicts eps
    x0    the network predicts x0                         (exact conversion, VPProcess.convert)
    v     v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (exact conversion)
    mean  mu = rho0 (x_t - rho1 delta), delta the network output, rho0 = rho1 = 1 at init (seed 001);
          eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t)/beta_t
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.common.nets import build_net
from zoo.common.data import DATASETS, example_shape
from zoo.gaussian import losses as L
from zoo.gaussian.likelihood import elbo_terms
from zoo.gaussian.process import REVERSE_VARIANCES, VPProcess
from zoo.gaussian.samplers import ODE_METHODS, SAMPLERS
from zoo.gaussian.schedules import SCHEDULES, make_betas

PARAMS = ("eps", "x0", "v", "mean")
ARCHS = ("unet", "scorenet", "mlp")


@dataclass(frozen=True)
class Config:
    data: str = "mnist-grey"
    arch: str = "unet"  # unet | scorenet | mlp
    channels: tuple[int, ...] = (32, 64, 128)  # unet / scorenet widths
    hidden: int = 128  # mlp width
    layers: int = 3  # mlp hidden layers
    mlp_time: str = "embed"  # mlp time input: embed (sinusoidal) | concat (t/T appended, seed 002)
    schedule: str = "linear"  # linear | quadratic | sigmoid | cosine
    T: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    cosine_s: float = 0.008
    param: str = "eps"  # eps | x0 | v | mean
    loss: str = "simple"  # simple | elbo-eps | mean-matching
    mm_target: str = "posterior"  # posterior (a draw of x_{t-1}) | analytic (mu_tilde)
    mm_reduction: str = "sum"  # sum | mean over pixels
    rho_lr: float | None = None  # learning rate of rho0, rho1 (None: the main one)
    num_classes: int = 0  # > 0: class-conditional, null class = num_classes
    label_dropout: float = 0.1  # probability of training on the null class
    sampler: str = "ddpm"  # ddpm | ddim | ode
    steps: int | None = None  # ddim / ode steps (None: T for ddpm, 50 otherwise)
    eta: float = 0.0
    variance: str = "beta_tilde"  # reverse variance of ddpm sampling
    method: str = "heun"  # ode method
    w: float = 1.0  # guidance weight (conditional models)
    nll_variance: str = "beta"  # reverse variance of the ELBO
    clip_x0: bool = True  # sampling 8-bit data: clamp x0_hat to [-1, 1] and re-derive eps


_CHOICES = {"arch": ARCHS, "schedule": tuple(SCHEDULES), "param": PARAMS, "loss": tuple(L.LOSSES),
            "mm_target": L.MM_TARGETS, "mm_reduction": tuple(L.REDUCTIONS), "sampler": tuple(SAMPLERS),
            "variance": tuple(REVERSE_VARIANCES), "nll_variance": tuple(REVERSE_VARIANCES),
            "method": ODE_METHODS, "data": tuple(DATASETS)}


def validate(cfg: Config) -> None:
    """Every variant name checked once, with the valid choices in the error."""
    for field, choices in _CHOICES.items():
        if getattr(cfg, field) not in choices:
            raise ValueError(f"unknown {field} {getattr(cfg, field)!r}; choose from {', '.join(choices)}")
    if not 0 <= cfg.label_dropout <= 1:
        raise ValueError(f"label_dropout must be in [0, 1], got {cfg.label_dropout}")


def data_shape(data: str) -> tuple[int, ...]:
    """Shape of one example of a dataset's view."""
    return example_shape(data)


def _schedule_kw(cfg: Config) -> dict:
    return {"s": cfg.cosine_s} if cfg.schedule == "cosine" else {"beta_1": cfg.beta_1, "beta_T": cfg.beta_T}


class GaussianDiffusion(nn.Module):
    """A network plus the VP process: loss, sample, nll and param_groups for the shared Trainer."""

    NETWORK = "net"  # the submodule whose calls are network evaluations (NFE)
    NLL_IS_ELBO = True  # nll(batch) is elbo_terms(batch)["total"]

    def __init__(self, cfg: Config):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        self.process = VPProcess(make_betas(cfg.schedule, cfg.T, **_schedule_kw(cfg)))
        self.shape = data_shape(cfg.data)
        self.discrete = DATASETS[cfg.data][1] == "grey"  # 8-bit data: discretised decoder, clamped samples
        kw = {"num_classes": cfg.num_classes}
        if cfg.arch == "mlp":
            kw.update(dim=self.shape[0], hidden=cfg.hidden, layers=cfg.layers, time=cfg.mlp_time)
        else:
            kw["channels"] = cfg.channels
        self.net = build_net(cfg.arch, **kw)
        if cfg.param == "mean":
            self.rho0 = nn.Parameter(torch.tensor(1.0))
            self.rho1 = nn.Parameter(torch.tensor(1.0))
        self.loss_fn = L.LOSSES[cfg.loss]
        self._to_eps = {"eps": self._eps_from_prediction, "x0": self._eps_from_prediction,
                        "v": self._eps_from_prediction, "mean": self._eps_from_delta}[cfg.param]

    # ------------------------------------------------------------------ parameterisations

    def _eps_from_prediction(self, out, x_t, t):
        return self.process.convert(out, x_t, t, self.cfg.param, "eps")

    def _eps_from_delta(self, delta, x_t, t):
        mu = self.rho0 * (x_t - self.rho1 * delta)  # seed 001: mu = rho0 (x_t - rho1 delta)
        return self.process.eps_from_mean(mu, x_t, t)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The eps prediction at original steps t (B,) long, whatever the parameterisation."""
        out = self.net(x_t, t.float() / self.cfg.T, y)
        return self._to_eps(out, x_t, t)

    def denoiser(self, labels: torch.Tensor | None = None, w: float = 1.0, clip: bool = False):
        """An eps-denoiser for the samplers: unconditional, or classifier-free guided towards `labels`.

        eps_guided = (1 - w) eps(x, null) + w eps(x, y) (SPEC 1): w = 0 unconditional, w = 1
        conditional, w > 1 amplified. Both evaluations go through the network as one batch.
        `clip` clamps the implied x0_hat to [-1, 1] and returns the matching eps (improved-diffusion's
        clip_denoised), so that every sampler sees it.
        """
        if self.cfg.num_classes == 0:
            if labels is not None:
                raise ValueError("labels were given but this model is unconditional (num_classes = 0)")
            den = lambda x_t, t: self.eps(x_t, t)  # noqa: E731
        elif labels is None:
            den = lambda x_t, t: self.eps(x_t, t, self._null(x_t.shape[0], x_t.device))  # noqa: E731
        else:
            den = guided(self.eps, labels, w, self.cfg.num_classes)
        return clipped(den, self.process) if clip else den

    def _null(self, n: int, device) -> torch.Tensor:
        return torch.full((n,), self.cfg.num_classes, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ trainer interface

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Mean over the batch of the per-example loss; t ~ U{1..T}, labels dropped to null at random."""
        x0 = batch[0]
        y = None
        if self.cfg.num_classes:
            y = batch[1] if len(batch) > 1 else self._null(x0.shape[0], x0.device)
            drop = torch.rand(y.shape, device=y.device) < self.cfg.label_dropout
            y = torch.where(drop, torch.full_like(y, self.cfg.num_classes), y)
        t = torch.randint(1, self.cfg.T + 1, (x0.shape[0],), device=x0.device)  # (B,)
        eps = torch.randn_like(x0)
        x_t = self.process.q_sample(x0, t, eps)
        eps_hat = self.eps(x_t, t, y)
        per_example = self.loss_fn(self.process, x0, x_t, t, eps, eps_hat, self.cfg)  # (B,)
        out = {"loss": per_example.mean(),
               "mse_eps": ((eps_hat - eps) ** 2).flatten(1).mean(1).mean().detach()}
        if self.cfg.param == "mean":
            out.update(rho0=self.rho0.detach().clone(), rho1=self.rho1.detach().clone())
        return out

    @torch.no_grad()
    def sample(self, n: int, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
               sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, variance: str | None = None,
               method: str | None = None, w: float | None = None, labels: torch.Tensor | None = None,
               callback=None) -> torch.Tensor:
        """n samples in the data view ((n, 1, 28, 28) in [-1, 1] for MNIST, (n, 2) for toys).

        Unset options fall back to the config. `x_T` is the starting noise (default: drawn with
        `generator`). A conditional model with no `labels` is guided towards labels 0, 1, ...,
        num_classes - 1 in turn.
        """
        cfg, dev = self.cfg, next(self.parameters()).device
        sampler = sampler or cfg.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if cfg.num_classes and labels is None:
            labels = torch.arange(n, device=dev) % cfg.num_classes
        denoiser = self.denoiser(None if labels is None else labels.to(dev), cfg.w if w is None else w,
                                 clip=cfg.clip_x0 and self.discrete)
        if x_T is None:  # drawn on the generator's device (CPU by default), so a seed means the same noise
            x_T = torch.randn((n, *self.shape), generator=generator, device=generator.device if generator else "cpu")
        x_T = x_T.to(dev)
        steps = steps or cfg.steps or 50
        kw = {
            "ddpm": lambda: dict(variance=variance or cfg.variance, generator=generator),
            "ddim": lambda: dict(steps=steps, eta=cfg.eta if eta is None else eta, generator=generator),
            "ode": lambda: dict(steps=steps, method=method or cfg.method),
        }[sampler]()
        was_training = self.training
        self.eval()
        x0 = SAMPLERS[sampler](denoiser, self.process, x_T, callback=callback, **kw)
        self.train(was_training)
        return x0.clamp(-1, 1) if self.discrete else x0

    @torch.no_grad()
    def nll(self, batch, variance: str | None = None, generator: torch.Generator | None = None,
            max_batch: int = 1024) -> torch.Tensor:
        """-ELBO in nats per example (B,) (8-bit data: discretised decoder; toys: a Gaussian density)."""
        return self.elbo_terms(batch, variance, generator, max_batch)["total"]

    @torch.no_grad()
    def elbo_terms(self, batch, variance: str | None = None, generator: torch.Generator | None = None,
                   max_batch: int = 1024) -> dict[str, torch.Tensor]:
        """The per-term breakdown of the bound (likelihood.elbo_terms), unconditional."""
        was_training = self.training
        self.eval()
        out = elbo_terms(self.denoiser(), self.process, batch[0], variance=variance or self.cfg.nll_variance,
                         decoder="discretized" if self.discrete else "gaussian", max_batch=max_batch,
                         generator=generator)
        self.train(was_training)
        return out

    def param_groups(self, lr: float) -> list[dict]:
        """The network at `lr`; rho0, rho1 (mean parameterisation) at `rho_lr`."""
        groups = [{"params": list(self.net.parameters()), "lr": lr}]
        if self.cfg.param == "mean":
            groups.append({"params": [self.rho0, self.rho1], "lr": self.cfg.rho_lr or lr})
        return groups


def guided(eps_fn, labels: torch.Tensor, w: float, null: int):
    """Classifier-free guidance: denoiser(x_t, t) = (1 - w) eps(x_t, t, null) + w eps(x_t, t, y)."""

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        y = torch.cat([torch.full_like(labels, null), labels])  # (2B,)
        e = eps_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), y)  # (2B, ...)
        return (1 - w) * e[:n] + w * e[n:]

    return denoiser


def clipped(denoiser, process: VPProcess):
    """The eps-denoiser whose implied x0_hat = (x_t - sqrt(1 - alpha_bar) eps)/sqrt(alpha_bar) is clamped to [-1, 1]."""

    def den(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0_hat = process.convert(denoiser(x_t, t), x_t, t, "eps", "x0").clamp(-1, 1)
        return process.convert(x0_hat, x_t, t, "x0", "eps")

    return den


def build(cfg: Config) -> GaussianDiffusion:
    return GaussianDiffusion(cfg)
