"""The Gaussian VP formulation's configuration: one frozen dataclass, every field validated once.

Each variant name (schedule, parameterisation, loss, sampler, variance, ...) is checked against its
registry at construction, with the valid choices in the error; the ranges of sizes, probabilities
and schedule constants are checked there too, and so are the combinations that would make the
mathematics undefined (zero terminal SNR with an eps prediction or a loss that cannot train t = T).
A Config that constructs is one the model can build and train.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoo.common.config import ConfigError, at_least, in_range, widths
from zoo.common.data import DATASETS
from zoo.common.nets import ARCHITECTURES
from zoo.gaussian import losses as L
from zoo.gaussian.likelihood import VARIANCES
from zoo.gaussian.samplers import ODE_METHODS, SAMPLERS
from zoo.gaussian.schedules import SCHEDULES, SPACINGS

PARAMS = ("eps", "x0", "v", "mean")
ARCHS = tuple(ARCHITECTURES)
T_SAMPLING = ("uniform", "importance")


@dataclass(frozen=True)
class Config:
    data: str = "mnist-grey"
    arch: str = "unet"  # unet | scorenet (seed 001 mean net) | scorenet-padded (its eps net) | mlp
    channels: tuple[int, ...] = (32, 64, 128)  # unet / scorenet widths
    hidden: int = 128  # mlp width
    layers: int = 3  # mlp hidden layers
    mlp_time: str = "embed"  # mlp time input: embed (sinusoidal) | concat (t/T appended, seed 002)
    schedule: str = "linear"  # linear | quadratic | sigmoid | cosine
    T: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    cosine_s: float = 0.008
    zero_terminal_snr: bool = False  # rescale the betas so alpha_bar_T = 0 (Lin et al. 2024); param x0 or v, loss v
    param: str = "eps"  # eps | x0 | v | mean
    loss: str = "simple"  # simple | elbo-eps | mean-matching | v (param x0 or v; zero_terminal_snr needs it)
    mm_target: str = "posterior"  # posterior (a draw of x_{t-1}) | analytic (mu_tilde)
    mm_reduction: str = "sum"  # sum | mean over pixels
    rho_lr: float | None = None  # learning rate of rho0, rho1 (None: the main one)
    num_classes: int = 0  # > 0: class-conditional, null class = num_classes
    label_dropout: float = 0.1  # probability of training on the null class
    sampler: str = "ddpm"  # ddpm | ddim | ode
    steps: int | None = None  # ddim / ode steps (None: T for ddpm, 50 otherwise)
    spacing: str = "leading"  # ddim / ode step grid: leading | trailing | linspace (SPEC 11)
    eta: float = 0.0
    variance: str = "beta_tilde"  # reverse variance of ddpm sampling: beta | beta_tilde | learned
    method: str = "heun"  # ode method
    w: float = 1.0  # guidance weight (conditional models)
    nll_variance: str = "beta"  # reverse variance of the ELBO: beta | beta_tilde | learned
    clip_x0: bool = True  # sampling 8-bit data: clamp x0_hat to [-1, 1] and re-derive eps
    learn_variance: bool = False  # extra output v: log sigma^2 = f log beta + (1 - f) log beta_tilde
    vlb_weight: float = 0.001  # lambda of the hybrid loss L + lambda L_vlb (learn_variance)
    t_sampling: str = "uniform"  # uniform | importance (sqrt E[L_t^2], learn_variance only)
    # Training steps t ~ U{t_min..T}: SPEC's 1; seed 001's code trains 2..T (its randint(1, T) over
    # 0-based steps never draws step 1, whose mean-matching weight 1/(2 beta_1) is 5000 at beta_1 = 1e-4).
    t_min: int = 1

    def __post_init__(self):
        validate(self)


_CHOICES = {"arch": ARCHS, "schedule": tuple(SCHEDULES), "param": PARAMS, "loss": tuple(L.LOSSES),
            "mm_target": L.MM_TARGETS, "mm_reduction": tuple(L.REDUCTIONS), "sampler": tuple(SAMPLERS),
            "variance": VARIANCES, "nll_variance": VARIANCES, "method": ODE_METHODS, "spacing": tuple(SPACINGS),
            "data": tuple(DATASETS), "t_sampling": T_SAMPLING}
# With alpha_bar_T = 0, x_T = eps: an eps (or mean) output cannot carry x0 at t = T, the
# ELBO-weighted losses divide by alpha_T = 1 - beta_T = 0 there, and L_simple's eps_hat is x_T itself
# whatever the network predicts (zero gradient): only the v loss trains t = T (Lin et al. 2024).
ZERO_SNR_PARAMS, ZERO_SNR_LOSSES = ("x0", "v"), ("v",)
# The v loss weighs an eps prediction's error by 1/alpha_bar_t (2.5e4 at t = T, linear schedule).
V_LOSS_PARAMS = ("x0", "v")


class GaussianConfigError(ConfigError):
    """An invalid Gaussian model configuration (the message lists the valid choices)."""


def validate(cfg: Config) -> None:
    """Every variant name checked once, with the valid choices in the error."""
    for field, choices in _CHOICES.items():
        if getattr(cfg, field) not in choices:
            raise GaussianConfigError(f"unknown {field} {getattr(cfg, field)!r}; choose from {', '.join(choices)}")
    try:
        _validate_ranges(cfg)
    except ConfigError as e:
        raise GaussianConfigError(str(e)) from None
    if cfg.zero_terminal_snr and cfg.param not in ZERO_SNR_PARAMS:
        raise GaussianConfigError(f"zero_terminal_snr makes eps undefined at t = T; param {cfg.param!r} cannot "
                                  f"predict x0 there: choose from {', '.join(ZERO_SNR_PARAMS)}")
    if cfg.zero_terminal_snr and cfg.loss not in ZERO_SNR_LOSSES:
        why = ("compares eps_hat, which is x_T itself at t = T whatever the network predicts, so nothing "
               "would train the x0 the samplers start from (Lin et al. 2024, sec. 3.2)" if cfg.loss == "simple"
               else "weighs t = T by 1/alpha_T, infinite (alpha_T = 0)")
        raise GaussianConfigError(f"zero_terminal_snr: loss {cfg.loss!r} {why}: choose from "
                                  f"{', '.join(ZERO_SNR_LOSSES)}")
    if cfg.loss == "v" and cfg.param not in V_LOSS_PARAMS:
        raise GaussianConfigError(f"loss 'v' weighs the error of param {cfg.param!r} (an eps prediction) by "
                                  f"1/alpha_bar_t, which explodes as t -> T: choose from {', '.join(V_LOSS_PARAMS)}")
    if cfg.t_min > 1 and cfg.t_sampling != "uniform":
        raise GaussianConfigError(f"t_min {cfg.t_min} restricts uniform step sampling; t_sampling "
                                  f"{cfg.t_sampling!r} draws every step: set t_min=1")
    if not cfg.learn_variance:
        for field, value in (("variance", "learned"), ("nll_variance", "learned"), ("t_sampling", "importance")):
            if getattr(cfg, field) == value:
                raise GaussianConfigError(f"{field} {value!r} needs learn_variance=True")


def _validate_ranges(cfg: Config) -> None:
    """Sizes, probabilities and schedule constants: finite and inside their valid ranges."""
    at_least(cfg.T, "T", 1)
    widths(cfg.channels, "channels")
    at_least(cfg.hidden, "hidden", 1)
    at_least(cfg.layers, "layers", 1)
    in_range(cfg.beta_1, "beta_1", 0, 1, lo_open=True, hi_open=True)
    in_range(cfg.beta_T, "beta_T", 0, 1, lo_open=True, hi_open=True)
    in_range(cfg.cosine_s, "cosine_s", 0, None, lo_open=True)
    if cfg.rho_lr is not None:
        in_range(cfg.rho_lr, "rho_lr", 0, None, lo_open=True)
    at_least(cfg.num_classes, "num_classes", 0)
    in_range(cfg.label_dropout, "label_dropout", 0, 1)
    at_least(cfg.steps, "steps", 1, optional=True)
    at_least(cfg.t_min, "t_min", 1)
    in_range(cfg.t_min, "t_min", 1, cfg.T)
    if cfg.steps is not None:
        in_range(cfg.steps, "steps", 1, cfg.T)
    in_range(cfg.eta, "eta", 0, None)
    in_range(cfg.w, "w", None, None)
    in_range(cfg.vlb_weight, "vlb_weight", 0, None)
