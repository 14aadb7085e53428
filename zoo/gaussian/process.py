"""The variance-preserving forward process, its posterior and exact conversions (SPEC section 1).

Time convention: 1-based steps ``t = 1..T`` (``t = T`` is nearly pure noise), given as a long
tensor ``t`` of shape (B,). Coefficient arrays are float64 and indexed so that
``alpha_bars[t - 1]`` is ``alpha_bar_t``; ``alpha_bar_0 = 1``. Gathered coefficients are cast to
the dtype of the tensor they multiply.

Symbols: ``beta_t``, ``alpha_t = 1 - beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s``,
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``, ``v = sqrt(alpha_bar) eps -
sqrt(1 - alpha_bar) x0``, posterior ``q(x_{t-1} | x_t, x0) = N(mu_tilde, beta_tilde I)``.

A respaced process (``respace``) keeps a subset of the steps and rebuilds its betas from their
``alpha_bar`` (improved-diffusion's respace.py); ``timesteps`` maps its steps back to the steps of
the original process, which is what a network trained on the original process is given.
"""

from __future__ import annotations

import torch

from zoo.common.utils import append_dims

PREDICTIONS = ("eps", "x0", "v")


class VPProcess:
    """q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I) for a given beta schedule."""

    def __init__(self, betas: torch.Tensor, timesteps: torch.Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if len(betas) < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty vector with every entry in (0, 1)")
        self.T = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
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
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ coefficients

    def table(self, name: str, device: torch.device | str) -> torch.Tensor:
        """The named coefficient table on `device`, moved there once and cached."""
        device = torch.device(device)
        cache = self._on_device.setdefault(device, {})
        if name not in cache:
            cache[name] = self.tables[name].to(device)
        return cache[name]

    def coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """table[t - 1] cast to x's dtype, on t's device, broadcastable against x: (B, 1, ...)."""
        # index_select: plain advanced indexing is orders of magnitude slower on CPU.
        vals = self.table(name, t.device).index_select(0, t.long() - 1)  # (B,) float64
        return append_dims(vals, x.ndim).to(dtype=x.dtype)

    @staticmethod
    def gather(arr: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """arr[t - 1] (float64) cast to x's dtype and device, broadcastable against x: (B, 1, ...).

        For a table that is not one of ``tables`` (it is moved at every call); prefer ``coef``.
        """
        vals = arr.to(t.device).index_select(0, t.long() - 1)  # (B,) float64
        return append_dims(vals, x.ndim).to(device=x.device, dtype=x.dtype)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The original step of each step `t` of this (possibly respaced) process: (B,) long."""
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
        a = self.coef("sqrt_alpha_bars", t, x_t)
        b = self.coef("sqrt_one_minus_alpha_bars", t, x_t)
        x0, eps = _TO_X0_EPS[src](out, x_t, a, b)
        return _FROM_X0_EPS[dst](x0, eps, a, b)

    def mean_from_eps(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """mu = (x_t - beta_t/sqrt(1 - alpha_bar_t) eps)/sqrt(alpha_t): the posterior mean in noise form."""
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
