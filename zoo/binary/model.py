"""The bit-flip diffusion formulation (SPEC section 2) behind the trainer interface (SPEC 8).

Time convention: 1-based steps ``t = 1..T``; the network sees ``t / T`` in [0, 1]. Data are
binarised MNIST images ``Y_0`` in ``{-1, +1}`` of shape ``(B, 1, 28, 28)``. The U-Net gives one
logit per pixel: either of ``Q_t = P_theta(Y_{t-1} = +1 | Y_t)`` directly (``posterior``, the
seed's model) or of ``P_theta(Y_0 = +1 | Y_t)``, turned into ``Q_t`` by marginalising the
posterior (``x0``).

- ``loss(batch)``: BCE against the posterior probability at ``t ~ Uniform{1..T}`` (summed over
  pixels, mean over the batch); logs the KL (= BCE - target entropy) and the one-t unbiased
  estimate of the ELBO in nats.
- ``nll(batch)``: the ELBO in nats per image with every t evaluated (an upper bound on -log p).
- ``sample(n)``: ancestral sampling from fair coins, T network evaluations.

With ``num_classes > 0`` the U-Net is class-conditional (null class ``num_classes``, label dropout
in training) and ``sample(n, labels=..., w=...)`` uses classifier-free guided logits (SPEC 11,
zoo/binary/guidance.py): on the network output, i.e. the logits of ``Q_t`` (``posterior``) or of
``P(Y_0 = +1)`` before the posterior is formed (``x0``). ``nll`` is unconditional (the null class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.binary import bitflip
from zoo.binary.guidance import logits_for, training_labels
from zoo.binary.schedules import ConfigError, constant_for_kappa_T, make_deltas
from zoo.common.config import at_least, in_range, one_of, widths
from zoo.common.data import DATASETS, is_binary, is_image
from zoo.common.nets import UNet, UNetConfig
from zoo.common.utils import module_device, to_device

IMAGE_SHAPE = (1, 28, 28)
BINARY_DATASETS = tuple(name for name in DATASETS if is_image(name) and is_binary(name))


@dataclass(frozen=True)
class Config:
    data: str = "mnist-binary"  # or "mnist-binary-stochastic"
    T: int = 200
    schedule: str = "constant"  # constant | linear | cosine (zoo/binary/schedules.py)
    delta: float | None = None  # constant schedule; None: the delta giving kappa_T below
    kappa_T: float = 1e-3
    delta_1: float = 1e-3  # linear schedule
    delta_T: float = 0.1
    s: float = 0.008  # cosine schedule
    parameterisation: str = "posterior"  # posterior (logits of Q_t) | x0 (logits of P(Y_0 = +1))
    channels: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1
    embed_dim: int = 128
    groups: int = 8
    eval_batch: int = 2048  # network inputs per call when evaluating the all-t ELBO
    num_classes: int = 0  # > 0: class-conditional, null class = num_classes
    label_dropout: float = 0.1  # probability of training on the null class

    def __post_init__(self):
        validate(self)


def validate(cfg: Config) -> None:
    """Every variant name and range checked once (at construction), with the valid choices."""
    try:
        one_of(cfg.data, "data (bit-flip diffusion needs binary data)", BINARY_DATASETS)
        one_of(cfg.schedule, "delta schedule", ("constant", "linear", "cosine"))
        one_of(cfg.parameterisation, "parameterisation", ("posterior", "x0"))
        at_least(cfg.T, "T", 1)
        if cfg.delta is not None:
            in_range(cfg.delta, "delta", 0, 0.5, lo_open=True)
        in_range(cfg.kappa_T, "kappa_T", 0, 1, lo_open=True, hi_open=True)
        in_range(cfg.delta_1, "delta_1", 0, 0.5, lo_open=True)
        in_range(cfg.delta_T, "delta_T", 0, 0.5, lo_open=True)
        in_range(cfg.s, "s", 0, None, lo_open=True)
        widths(cfg.channels, "channels")
        for name in ("blocks_per_level", "embed_dim", "groups", "eval_batch"):
            at_least(getattr(cfg, name), name, 1)
        at_least(cfg.num_classes, "num_classes", 0)
        in_range(cfg.label_dropout, "label_dropout", 0, 1)
    except ConfigError:
        raise
    except ValueError as e:  # zoo.common.config.ConfigError: one type for the binary formulations
        raise ConfigError(str(e)) from None


def _deltas(cfg: Config) -> torch.Tensor:
    kw = {
        "constant": lambda: {"delta": cfg.delta if cfg.delta is not None else constant_for_kappa_T(cfg.T, cfg.kappa_T)},
        "linear": lambda: {"delta_1": cfg.delta_1, "delta_T": cfg.delta_T},
        "cosine": lambda: {"s": cfg.s},
    }
    if cfg.schedule not in kw:
        raise ConfigError(f"unknown delta schedule {cfg.schedule!r}; choose from {', '.join(kw)}")
    return make_deltas(cfg.schedule, cfg.T, **kw[cfg.schedule]())


def _posterior_logits(out: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """The network's output already is the logit of Q_t."""
    return out


PARAMETERISATIONS = {"posterior": _posterior_logits, "x0": bitflip.x0_to_logits}


class BitFlipDiffusion(nn.Module):
    """Bit-flip diffusion on {-1, +1} images with a U-Net reverse model."""

    NETWORK = "net"  # the submodule whose calls are network evaluations (NFE)
    NLL_IS_ELBO = True  # nll(batch) is elbo_terms(batch)["total"]

    def __init__(self, cfg: Config = Config()):
        super().__init__()
        if cfg.data not in BINARY_DATASETS:
            raise ConfigError(f"bit-flip diffusion needs binary data; choose data from {', '.join(BINARY_DATASETS)}")
        if cfg.parameterisation not in PARAMETERISATIONS:
            raise ConfigError(f"unknown parameterisation {cfg.parameterisation!r}; "
                              f"choose from {', '.join(PARAMETERISATIONS)}")
        if not 0 <= cfg.label_dropout <= 1 or cfg.num_classes < 0:
            raise ConfigError(f"need label_dropout in [0, 1] and num_classes >= 0, got {cfg.label_dropout}, "
                              f"{cfg.num_classes}")
        self.cfg, self.T = cfg, cfg.T
        self.register_buffer("deltas", _deltas(cfg), persistent=False)  # (T,) float64
        self._to_logits = PARAMETERISATIONS[cfg.parameterisation]
        self.net = UNet(UNetConfig(channels=tuple(cfg.channels), blocks_per_level=cfg.blocks_per_level,
                                   embed_dim=cfg.embed_dim, groups=cfg.groups, num_classes=cfg.num_classes,
                                   in_channels=1, out_channels=1))

    def net_logits(self, y_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's per-pixel logits (of Q_t or of P(Y_0 = +1), per parameterisation), class y."""
        return self.net(y_t, t.float() / self.T, y)  # (B, 1, 28, 28)

    def logits(self, y_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of Q_t = P_theta(Y_{t-1} = +1 | Y_t), t a long tensor (B,); y the class (None: null)."""
        return self._to_logits(self.net_logits(y_t, t, y), y_t, t, self.deltas)

    def logits_fn(self, labels: torch.Tensor | None = None, w: float = 1.0) -> bitflip.LogitsFn:
        """(y_t, t) -> logits of Q_t: unconditional, or with the network's logits guided towards
        `labels` with weight w before Q_t is formed (SPEC 11)."""
        net_fn = logits_for(self.net_logits, self.cfg.num_classes, labels, w)
        return lambda y_t, t: self._to_logits(net_fn(y_t, t), y_t, t, self.deltas)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """BCE against the posterior probability (SPEC 2), t ~ Uniform{1..T}; logs KL and ELBO estimate."""
        batch = to_device(batch, module_device(self))
        y0 = batch[0]
        y = training_labels(batch, self.cfg.num_classes, self.cfg.label_dropout)
        t = torch.randint(1, self.T + 1, (y0.shape[0],), device=y0.device)
        y_t = bitflip.q_sample(y0, t, self.deltas)
        terms = bitflip.step_terms(self.logits(y_t, t, y), y_t, y0, t, self.deltas)
        elbo_est = bitflip.prior_kl(y0, self.deltas) + self.T * terms["kl"].detach()
        return {"loss": terms["bce"].mean(), "kl": terms["kl"].detach().mean(), "elbo_est": elbo_est.mean()}

    @torch.no_grad()
    def elbo_terms(self, batch: tuple[torch.Tensor, ...],
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The all-t ELBO terms of `bitflip.elbo_all_t`: prior (B,), kl (B, T), total (B,) in nats."""
        return bitflip.elbo_all_t(self.logits, batch[0].to(module_device(self)), self.deltas, generator, self.cfg.eval_batch)

    elbo = elbo_terms  # the earlier name

    def nll(self, batch: tuple[torch.Tensor, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """The ELBO bound on -log p(Y_0) in nats per image (B,), every t evaluated."""
        return self.elbo_terms(batch, generator)["total"]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, callback=None,
               labels: torch.Tensor | None = None, w: float = 1.0, x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n images in {-1, +1} (n, 1, 28, 28) by ancestral sampling from fair coins (or from x_T).

        A conditional model with no `labels` is guided towards labels 0, 1, ..., num_classes - 1 in
        turn (as the Gaussian model); w = 0 is unconditional, w = 1 conditional.
        """
        device = module_device(self)
        if x_T is None:
            x_T = bitflip.fair_coins((n, *IMAGE_SHAPE), generator=generator, device=device)
        if self.cfg.num_classes and labels is None:
            labels = torch.arange(n, device=device) % self.cfg.num_classes
        fn = self.logits_fn(None if labels is None else labels.to(device), w)
        return bitflip.ancestral_sample(fn, x_T.to(device), self.T, generator=generator, callback=callback)


def build(cfg: Config) -> BitFlipDiffusion:
    return BitFlipDiffusion(cfg)
