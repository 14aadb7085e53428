"""The variance-preserving forward process, its posterior and exact conversions (SPEC section 1).

Time convention: 1-based steps ``t = 1..T`` (``t = T`` is nearly pure noise), given as a long
tensor ``t`` of shape (B,), or as one Python int for the whole batch (what the samplers use: every
coefficient is then a Python float, so a sampler step launches no gather, cast or host sync).
Coefficient arrays are float64 and indexed so that ``alpha_bars[t - 1]`` is ``alpha_bar_t``;
``alpha_bar_0 = 1``. Gathered coefficients are cast to the dtype of the tensor they multiply (a
float for an int ``t`` holds exactly that dtype's value, so both forms compute the same numbers).

Symbols: ``beta_t``, ``alpha_t = 1 - beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s``,
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``, ``v = sqrt(alpha_bar) eps -
sqrt(1 - alpha_bar) x0``, posterior ``q(x_{t-1} | x_t, x0) = N(mu_tilde, beta_tilde I)``.

Zero terminal SNR (SPEC 11) makes ``beta_T = 1`` and ``alpha_bar_T = 0``: then ``x_T = eps`` carries
no information about x0, so an eps prediction at ``t = T`` does not determine x0 or the reverse
mean. ``split`` and ``reverse_mean`` take the prediction in its own kind (eps, x0 or v) and work
at ``t = T`` for x0 and v; asked to invert eps there they raise ``ZeroSNRError``.

A respaced process (``respace``) keeps a subset of the steps and rebuilds its betas from their
``alpha_bar`` (improved-diffusion's respace.py); ``timesteps`` maps its steps back to the steps of
the original process, which is what a network trained on the original process is given.
"""

from __future__ import annotations

import torch

from zoo import ZooError
from zoo.common.utils import append_dims

PREDICTIONS = ("eps", "x0", "v")


class ZeroSNRError(ZooError, ValueError):
    """An eps prediction used where alpha_bar_t = 0 (zero terminal SNR), where it does not determine x0."""


class VPProcess:
    """q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I) for a given beta schedule."""

    def __init__(self, betas: torch.Tensor, timesteps: torch.Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        inner = betas[:-1]
        if len(betas) < 1 or not (bool(((inner > 0) & (inner < 1)).all()) and 0 < float(betas[-1]) <= 1):
            raise ValueError("betas must be a non-empty vector with every entry in (0, 1) "
                             "(the last may be 1: zero terminal SNR)")
        self.T = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.zero_terminal_snr = bool(self.alpha_bars[-1] == 0)  # beta_T = 1 gives exactly 0
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t; beta_tilde_1 = 0.
        self.beta_tildes = (1 - self.alpha_bars_prev) / (1 - self.alpha_bars) * betas
        # Original steps of the process this one was respaced from (identity when not respaced).
        self.timesteps = (torch.arange(1, self.T + 1) if timesteps is None
                          else torch.as_tensor(timesteps, dtype=torch.long).clone())
        ab, ab_prev = self.alpha_bars, self.alpha_bars_prev
        # Every coefficient the formulas gather, computed once in float64 (CPU) and named.
        self.tables = {
            "betas": betas, "alphas": self.alphas, "alpha_bars": ab, "alpha_bars_prev": ab_prev,
            "beta_tildes": self.beta_tildes, "sqrt_alphas": self.alphas.sqrt(),
            "sqrt_alpha_bars": ab.sqrt(), "sqrt_one_minus_alpha_bars": (1 - ab).sqrt(),
            "posterior_c0": ab_prev.sqrt() * betas / (1 - ab),  # mu_tilde's coefficient of x0
            "posterior_c1": self.alphas.sqrt() * (1 - ab_prev) / (1 - ab),  # ... and of x_t
            "eps_to_mean": betas / (1 - ab).sqrt(),
            "mean_to_eps": (1 - ab).sqrt() / betas,
            "elbo_eps_weight": betas / (2 * self.alphas * (1 - ab)),
            "timesteps": self.timesteps,
        }
        self._on_device: dict[tuple[torch.device, torch.dtype | None, str], torch.Tensor] = {}
        self._numbers: dict[tuple[torch.dtype, str], list] = {}  # tables as Python numbers, for an int t

    # ------------------------------------------------------------------ coefficients

    def table(self, name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The named coefficient table on `device` (cast to `dtype`, default its own), made there once and cached."""
        key = (torch.device(device), dtype, name)
        if key not in self._on_device:
            self._on_device[key] = self.tables[name].to(device=device, dtype=dtype)
        return self._on_device[key]

    def numbers(self, name: str, dtype: torch.dtype) -> list:
        """The named table cast to `dtype`, as a list of Python numbers (cached): what an int t reads."""
        key = (dtype, name)
        if key not in self._numbers:
            self._numbers[key] = self.tables[name].to(dtype).tolist()
        return self._numbers[key]

    def coef(self, name: str, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor | float:
        """table[t - 1] in x's dtype: on t's device and broadcastable against x, (B, 1, ...), for a
        tensor t; a Python float holding that dtype's value for an int t (one step for the batch)."""
        if isinstance(t, int):
            self._check_step(t)
            return self.numbers(name, x.dtype)[t - 1]
        # Cast once, then select (the same values); index_select: advanced indexing is far slower on CPU.
        return append_dims(self.table(name, t.device, x.dtype).index_select(0, t.long() - 1), x.ndim)  # (B, 1, ...)

    def _check_step(self, t: int) -> None:
        if not 1 <= t <= self.T:
            raise IndexError(f"step {t} is outside 1..{self.T}")

    @staticmethod
    def gather(arr: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """arr[t - 1] (float64) cast to x's dtype and device, broadcastable against x: (B, 1, ...).

        For a table that is not one of ``tables`` (it is moved at every call); prefer ``coef``.
        """
        vals = arr.to(t.device).index_select(0, t.long() - 1)  # (B,) float64
        return append_dims(vals, x.ndim).to(device=x.device, dtype=x.dtype)

    def _check_eps_invertible(self, t: torch.Tensor | int) -> None:
        """Raise ZeroSNRError if some t is T and alpha_bar_T = 0 (only then does it look at t)."""
        if self.zero_terminal_snr and (t == self.T if isinstance(t, int) else bool((t == self.T).any())):
            raise ZeroSNRError("an eps prediction does not determine x0 at t = T when alpha_bar_T = 0 "
                               "(zero terminal SNR); predict x0 or v there (choose from x0, v)")

    def model_t(self, t: torch.Tensor | int) -> torch.Tensor | int:
        """The original step of each step `t` of this (possibly respaced) process: (B,) long, or an int."""
        if isinstance(t, int):
            self._check_step(t)
            return self.numbers("timesteps", torch.long)[t - 1]
        return self.table("timesteps", t.device).index_select(0, t.long() - 1)

    # ------------------------------------------------------------------ forward process

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (SPEC 1, forward)."""
        a = self.coef("sqrt_alpha_bars", t, x0)
        b = self.coef("sqrt_one_minus_alpha_bars", t, x0)
        return a * x0 + b * eps

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_tilde, beta_tilde) of q(x_{t-1} | x_t, x0) (SPEC 1; Ho et al. eq. 7).

        mu_tilde = sqrt(alpha_bar_{t-1}) beta_t/(1 - alpha_bar_t) x0
                   + sqrt(alpha_t)(1 - alpha_bar_{t-1})/(1 - alpha_bar_t) x_t;
        beta_tilde has shape (B, 1, ...), broadcastable to x_t.
        """
        mu = self.coef("posterior_c0", t, x_t) * x0 + self.coef("posterior_c1", t, x_t) * x_t
        return mu, self.coef("beta_tildes", t, x_t)

    def reverse_variance(self, t: torch.Tensor, x: torch.Tensor, variance: str) -> torch.Tensor:
        """sigma_t^2 of the reverse step: 'beta' (beta_t) or 'beta_tilde' (beta_tilde_t). (B, 1, ...)"""
        if variance not in REVERSE_VARIANCES:
            raise ValueError(f"unknown reverse variance {variance!r}; choose from {', '.join(REVERSE_VARIANCES)}")
        return self.coef(REVERSE_VARIANCES[variance], t, x)

    # ------------------------------------------------------------------ parameterisations

    def convert(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, src: str, dst: str) -> torch.Tensor:
        """Exact conversion of a prediction between 'eps', 'x0' and 'v' given x_t (SPEC 1)."""
        for name in (src, dst):
            if name not in PREDICTIONS:
                raise ValueError(f"unknown prediction {name!r}; choose from {', '.join(PREDICTIONS)}")
        if src == dst:
            return out
        a, b = self._scales(t, x_t)
        x0, eps = self._split(out, x_t, t, src, a, b)
        return _FROM_X0_EPS[dst](x0, eps, a, b)

    def clip_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, prediction: str) -> torch.Tensor:
        """The prediction of kind `prediction` whose implied x0_hat is clamped to [-1, 1]
        (improved-diffusion's clip_denoised). For eps, x0_hat is undefined where alpha_bar = 0
        (ZeroSNRError); x0 and v are clamped at every t."""
        x0_hat = self.convert(out, x_t, t, prediction, "x0").clamp(-1, 1)
        return self.convert(x0_hat, x_t, t, "x0", prediction)

    def split(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from a prediction of kind 'eps', 'x0' or 'v' given x_t, exactly (SPEC 1).

        x0 and v are defined at every t, alpha_bar_t = 0 included; eps raises ZeroSNRError there.
        """
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")
        return self._split(out, x_t, t, prediction, *self._scales(t, x_t))

    def _scales(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), each (B, 1, ...) in x's dtype."""
        return self.coef("sqrt_alpha_bars", t, x), self.coef("sqrt_one_minus_alpha_bars", t, x)

    def _split(self, out, x_t, t, prediction: str, a, b) -> tuple[torch.Tensor, torch.Tensor]:
        if prediction == "eps":
            self._check_eps_invertible(t)
        return _TO_X0_EPS[prediction](out, x_t, a, b)

    def reverse_mean(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """mu_theta(x_t, t) from a prediction of kind 'eps', 'x0' or 'v'.

        eps: the noise form (x_t - beta_t/sqrt(1 - alpha_bar_t) eps)/sqrt(alpha_t) (Ho et al. eq. 11);
        x0, v: the posterior mean mu_tilde(x0_hat, x_t), which has no 1/sqrt(alpha_t) and so holds at
        t = T with beta_T = 1 (zero terminal SNR), where the noise form is 0/0.
        """
        if prediction == "eps":
            return self.mean_from_eps(out, x_t, t)
        return self.posterior(self.split(out, x_t, t, prediction)[0], x_t, t)[0]

    def mean_from_eps(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """mu = (x_t - beta_t/sqrt(1 - alpha_bar_t) eps)/sqrt(alpha_t): the posterior mean in noise form."""
        self._check_eps_invertible(t)
        k = self.coef("eps_to_mean", t, x_t)
        return (x_t - k * eps) / self.coef("sqrt_alphas", t, x_t)

    def eps_from_mean(self, mu: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t)/beta_t, the exact inverse of mean_from_eps."""
        k = self.coef("mean_to_eps", t, x_t)
        return (x_t - self.coef("sqrt_alphas", t, x_t) * mu) * k

    # ------------------------------------------------------------------ respacing

    def respace(self, timesteps) -> "VPProcess":
        """The process on the increasing subset `timesteps` (1-based) of this one's steps.

        Betas are rebuilt so that the new alpha_bar equals the old one on the kept steps:
        beta'_i = 1 - alpha_bar_{tau_i}/alpha_bar_{tau_{i-1}} (improved-diffusion respace.py).
        """
        tau = torch.as_tensor(timesteps, dtype=torch.long).flatten()
        if len(tau) < 1 or bool((tau[1:] <= tau[:-1]).any()) or int(tau[0]) < 1 or int(tau[-1]) > self.T:
            raise ValueError(f"timesteps must be strictly increasing within 1..{self.T}")
        ab = self.alpha_bars[tau - 1]
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return VPProcess(1 - ab / ab_prev, timesteps=self.timesteps[tau - 1])


def strided_timesteps(T: int, steps: int) -> torch.Tensor:
    """`steps` evenly strided 1-based steps 1, 1 + T/steps, ... (floored; all of them when steps == T).

    As improved-diffusion's respacing (0-based range(0, T, stride)), the last kept step is
    T - T/steps + 1 rather than T: it avoids the nearly degenerate last step of the cosine schedule
    (beta_T clipped at 0.999, alpha_bar_T ~ 1e-7 for T = 100), from which the first deterministic
    jump would multiply the error of eps by sqrt(alpha_bar_next/alpha_bar_T).
    The samplers use ``schedules.step_grid`` instead, whose 'leading' spacing equals this grid
    when `steps` divides T (and keeps the constant stride floor(T/steps) when it does not).
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return 1 + torch.div(torch.arange(steps) * T, steps, rounding_mode="floor")


REVERSE_VARIANCES = {"beta": "betas", "beta_tilde": "beta_tildes"}

# Exact inverse pairs through (x0, eps); a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t), a^2 + b^2 = 1.
_TO_X0_EPS = {
    "eps": lambda eps, x_t, a, b: ((x_t - b * eps) / a, eps),
    "x0": lambda x0, x_t, a, b: (x0, (x_t - a * x0) / b),
    "v": lambda v, x_t, a, b: (a * x_t - b * v, b * x_t + a * v),
}
_FROM_X0_EPS = {
    "eps": lambda x0, eps, a, b: eps,
    "x0": lambda x0, eps, a, b: x0,
    "v": lambda x0, eps, a, b: a * eps - b * x0,
}
