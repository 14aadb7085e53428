"""The absorbing (masked) diffusion formulation (SPEC 11) behind the trainer interface (SPEC 8).

Time convention: 1-based steps ``t = 1..T``, continuous time ``u = t/T``; the network sees ``u``.
Data are binarised MNIST images ``x_0`` in ``{-1, +1}`` of shape ``(B, 1, 28, 28)``; a state
``x_t`` holds ``{-1, 0 (mask), +1}``. The U-Net (zoo/common/nets.py) takes two channels, the value
``x_t`` and the mask indicator ``[x_t = M]``, and gives one logit of ``mu_theta(x_0^j = +1 | x_t)``
per pixel; with ``num_classes > 0`` it is class-conditional with the null class ``num_classes``
(label dropout), and samplers and the ELBO use guided logits (zoo/binary/guidance.py).

- ``loss(batch)``: the ELBO as a weighted cross-entropy on the masked pixels, per example then
  the batch mean: ``continuous`` (MD4/MDLM, ``u ~ U(0, 1]``, stratified or i.i.d.) or ``discrete``
  (``T`` times the step-t KL at ``t ~ U{1..T}``); both are unbiased nats-per-image estimates.
- ``nll(batch)`` / ``elbo_terms(batch)``: the exact discrete-time ELBO in nats per image with
  every t evaluated (one draw of x_t per t), unconditional for a conditional model.
- ``sample(n)``: ancestral unmasking from all-masked, ``steps`` (default T) network evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.binary import absorbing
from zoo.binary.guidance import logits_for, training_labels
from zoo.binary.schedules import MASK_SCHEDULES, ConfigError, make_alphas, mask_schedule
from zoo.common import config as C
from zoo.common.data import DATASETS, is_binary, is_image
from zoo.common.nets import UNet, UNetConfig
from zoo.common.utils import module_device, to_device

IMAGE_SHAPE = (1, 28, 28)
BINARY_DATASETS = tuple(name for name in DATASETS if is_image(name) and is_binary(name))


@dataclass(frozen=True)
class Config:
    data: str = "mnist-binary"  # or "mnist-binary-stochastic"
    T: int = 200  # steps of the discrete-time ELBO and of the sampler
    schedule: str = "linear"  # linear | cosine | polynomial (zoo/binary/schedules.py)
    power: float = 2.0  # polynomial schedule: alpha(u) = 1 - u^power
    loss: str = "continuous"  # continuous (MD4/MDLM weighted CE) | discrete (T x step-t KL)
    time_sampling: str = "stratified"  # continuous loss: stratified | uniform times u in (0, 1]
    steps: int | None = None  # sampling steps (None: T)
    channels: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1
    embed_dim: int = 128
    groups: int = 8
    num_classes: int = 0  # > 0: class-conditional, null class = num_classes
    label_dropout: float = 0.1  # probability of training on the null class
    eval_batch: int = 2048  # network inputs per call when evaluating the all-t ELBO

    def __post_init__(self):
        validate(self)


LOSSES = ("continuous", "discrete")
TIME_SAMPLERS = {"stratified": absorbing.stratified_times, "uniform": absorbing.uniform_times}


def validate(cfg: Config) -> None:
    """Every variant name and range checked once, with the valid choices in the message."""
    choices = {"data": BINARY_DATASETS, "schedule": tuple(MASK_SCHEDULES), "loss": LOSSES,
               "time_sampling": tuple(TIME_SAMPLERS)}
    for field, valid in choices.items():
        if getattr(cfg, field) not in valid:
            raise ConfigError(f"unknown {field} {getattr(cfg, field)!r} for absorbing diffusion; "
                              f"choose from {', '.join(valid)}")
    if cfg.T < 1 or (cfg.steps is not None and not 1 <= cfg.steps <= cfg.T):
        raise ConfigError(f"need T >= 1 and steps in 1..T (or None), got T = {cfg.T}, steps = {cfg.steps}")
    if not 0 <= cfg.label_dropout <= 1 or cfg.num_classes < 0:
        raise ConfigError(f"need label_dropout in [0, 1] and num_classes >= 0, got {cfg.label_dropout}, "
                          f"{cfg.num_classes}")
    try:
        C.at_least(cfg.T, "T", 1)
        C.at_least(cfg.steps, "steps", 1, optional=True)
        C.in_range(cfg.power, "power", 0, None, lo_open=True)
        C.widths(cfg.channels, "channels")
        for name in ("blocks_per_level", "embed_dim", "groups", "eval_batch"):
            C.at_least(getattr(cfg, name), name, 1)
        C.in_range(cfg.label_dropout, "label_dropout", 0, 1)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


class AbsorbingDiffusion(nn.Module):
    """Masked diffusion on {-1, +1} images with an x0-predicting U-Net."""

    NETWORK = "net"  # the submodule whose calls are network evaluations (NFE)
    NLL_IS_ELBO = True  # nll(batch) is elbo_terms(batch)["total"]: zoo.evaluation computes it once

    def __init__(self, cfg: Config = Config()):
        super().__init__()
        validate(cfg)
        self.cfg, self.T = cfg, cfg.T
        kw = {"power": cfg.power} if cfg.schedule == "polynomial" else {}
        self.alpha_fn, self.alpha_prime_fn = mask_schedule(cfg.schedule, **kw)
        self.register_buffer("alphas", make_alphas(cfg.schedule, cfg.T, **kw), persistent=False)  # (T + 1,) float64
        self.draw_times = TIME_SAMPLERS[cfg.time_sampling]
        self._loss = {"continuous": self._continuous_loss, "discrete": self._discrete_loss}[cfg.loss]
        self.net = UNet(UNetConfig(channels=tuple(cfg.channels), blocks_per_level=cfg.blocks_per_level,
                                   embed_dim=cfg.embed_dim, groups=cfg.groups, num_classes=cfg.num_classes,
                                   in_channels=2, out_channels=1))

    def x0_logits(self, x_t: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of mu_theta(x_0 = +1 | x_t) (B, 1, 28, 28) at continuous times u (B,)."""
        inp = torch.cat([x_t, absorbing.is_masked(x_t).to(x_t.dtype)], dim=1)  # (B, 2, H, W)
        return self.net(inp, u.float(), y)

    def logits_fn(self, labels: torch.Tensor | None = None, w: float = 1.0) -> absorbing.LogitsFn:
        """(x_t, u) -> x0 logits: unconditional, or guided towards `labels` with weight w (SPEC 11)."""
        return logits_for(self.x0_logits, self.cfg.num_classes, labels, w)

    # ------------------------------------------------------------------ trainer interface

    def _continuous_loss(self, fn, x0: torch.Tensor) -> torch.Tensor:
        u = self.draw_times(x0.shape[0], device=x0.device)
        return absorbing.continuous_elbo(fn, x0, u, self.alpha_fn, self.alpha_prime_fn)

    def _discrete_loss(self, fn, x0: torch.Tensor) -> torch.Tensor:
        return absorbing.elbo_sampled_t(fn, x0, self.alphas)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The ELBO estimate in nats per image (the configured form), mean over the batch."""
        batch = to_device(batch, module_device(self))
        x0 = batch[0]
        y = training_labels(batch, self.cfg.num_classes, self.cfg.label_dropout)
        per_example = self._loss(lambda x_t, u: self.x0_logits(x_t, u, y), x0)  # (B,)
        return {"loss": per_example.mean(), "elbo_est": per_example.detach().mean()}

    @torch.no_grad()
    def elbo_terms(self, batch: tuple[torch.Tensor, ...],
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The discrete-time ELBO of `absorbing.elbo_all_t`: kl (B, T) and total (B,) in nats."""
        return absorbing.elbo_all_t(self.logits_fn(), batch[0].to(module_device(self)), self.alphas, generator, self.cfg.eval_batch)

    def nll(self, batch: tuple[torch.Tensor, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """The ELBO bound on -log p(x_0) in nats per image (B,), every t evaluated."""
        return self.elbo_terms(batch, generator)["total"]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
               w: float = 1.0, steps: int | None = None, callback=None, x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n images in {-1, +1} (n, 1, 28, 28) by ancestral unmasking from all-masked x_T.

        A conditional model with no `labels` is guided towards labels 0, 1, ..., num_classes - 1 in
        turn (as the Gaussian model); w = 0 is unconditional, w = 1 conditional.
        """
        device = module_device(self)
        if x_T is None:
            x_T = absorbing.all_masked((n, *IMAGE_SHAPE), device=device)
        if self.cfg.num_classes and labels is None:
            labels = torch.arange(n, device=device) % self.cfg.num_classes
        fn = self.logits_fn(None if labels is None else labels.to(device), w)
        steps = steps or self.cfg.steps
        if steps is not None and not 1 <= steps <= self.T:
            raise ConfigError(f"steps must be in 1..{self.T}, got {steps}")
        return absorbing.ancestral_sample(fn, x_T.to(device), self.alphas, steps, generator, callback)


def build(cfg: Config) -> AbsorbingDiffusion:
    return AbsorbingDiffusion(cfg)
