"""The variational bound (ELBO) of the variance-preserving model, in nats and bits/dim (SPEC 1, 10).

    -log p(x0) <= L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))                                   the prior term
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x0) || N(mu_theta(x_t, t), sigma_t^2 I))   t = 2..T
    L_0     = -E_q log p(x0 | x_1), p a Gaussian N(mu_theta(x_1, 1), sigma_1^2 I) integrated over
              each 8-bit bin of width 2/255, the two edge bins extended to -inf / +inf
              (Ho et al. 2020 section 3.3); on binarised data {-1, +1} over the two bins split at 0
              (SPEC 11); on continuous data (toys) its density

Each expectation over x_t is estimated with one draw of x_t per step and example, the KL itself
in closed form: improved-diffusion's ``calc_bpd_loop``. The reverse variance sigma_t^2 is beta_t
or beta_tilde_t for t >= 2, and the decoder variance at t = 1 is beta_1 in both cases
(beta_tilde_1 = 0); or learned, per pixel, at every t (zoo.gaussian.learned_variance).
Time convention: 1-based steps t = 1..T; data in [-1, 1] on the bin centres 2k/255 - 1.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from zoo.common.utils import randn
from zoo.gaussian.learned_variance import LearnedLogVariance
from zoo.gaussian.process import REVERSE_VARIANCES, VPProcess

BIN_WIDTH = 2.0 / 255.0  # 8-bit data in [-1, 1]


def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats."""
    return 0.5 * (torch.log(var2 / var1) + var1 / var2 - 1 + (mean1 - mean2) ** 2 / var2)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                                        bin_width: float = BIN_WIDTH) -> torch.Tensor:
    """log P(bin of x) under N(mean, std^2), elementwise, float64 (Ho et al. eq. 13).

    The bins are [x - w/2, x + w/2], the first extended to -inf and the last to +inf. Computed with
    log_ndtr on the side of the mean where the tail is small, so far tails do not underflow.
    """
    x, mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, std))
    lo = (x - bin_width / 2 - mean) / std
    hi = (x + bin_width / 2 - mean) / std
    first, last = x < -1 + bin_width / 2, x > 1 - bin_width / 2
    lo = torch.where(first, torch.full_like(lo, -math.inf), lo)
    hi = torch.where(last, torch.full_like(hi, math.inf), hi)
    # log(Phi(hi) - Phi(lo)) = log Phi(hi) + log1p(-exp(log Phi(lo) - log Phi(hi))); mirror when lo > 0.
    upper = lo > 0
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1 - 1e-16))


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2) elementwise, float64: the decoder for continuous (non-8-bit) data."""
    x, mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, std))
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def binary_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log P(x) for x in {-1, +1} under N(mean, std^2) cut at the one bin edge 0, elementwise, float64.

    P(+1) = 1 - Phi((0 - mean)/std) = Phi(mean/std) and P(-1) = Phi(-mean/std) (SPEC 11): both are
    log Phi(x mean/std), computed with log_ndtr so that neither tail underflows.
    """
    x, mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, std))
    return torch.special.log_ndtr(x.sign() * mean / std)


DECODERS = {"discretized": discretized_gaussian_log_likelihood, "gaussian": gaussian_log_density,
            "binary": binary_gaussian_log_likelihood}
VARIANCES = (*REVERSE_VARIANCES, "learned")


def prior_kl(process: VPProcess, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(N(sqrt(alpha_bar_T) x0, (1 - alpha_bar_T) I) || N(0, I)), summed per example. (B,)"""
    ab = process.table("alpha_bars", x0.device)[-1]  # on the data's device: (1 - ab) is expanded to x0
    x0 = x0.double()
    kl = normal_kl(ab.sqrt() * x0, (1 - ab).expand_as(x0), torch.zeros_like(x0), torch.ones_like(x0))
    return kl.flatten(1).sum(1)


@torch.no_grad()
def elbo_terms(eps_fn: Callable, process: VPProcess, x0: torch.Tensor, variance: str = "beta",
               decoder: str = "discretized", max_batch: int = 1024,
               generator: torch.Generator | None = None, prediction: str = "eps") -> dict[str, torch.Tensor]:
    """Every term of the bound for each example of x0 (B, ...), in nats per example.

    Returns {"prior": (B,), "kl": (B, T - 1) with column t - 2 holding L_{t-1} for t = 2..T,
    "decoder": (B,) = L_0, "total": (B,)}. Several steps are evaluated in one call of
    ``eps_fn(x_t, t)`` (the eps-denoiser on original steps), at most `max_batch` examples per call;
    ``prediction = "x0"`` or ``"v"`` says it predicts that instead (needed at t = T with zero
    terminal SNR, where mu_theta is formed as mu_tilde(x0_hat, x_t): VPProcess.reverse_mean).
    ``variance`` "learned": ``eps_fn`` returns (prediction, v) with v in [-1, 1] the variance output.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose from {', '.join(VARIANCES)}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
    learned = LearnedLogVariance(process) if variance == "learned" else None
    B, T = x0.shape[0], process.T
    per_call = max(1, max_batch // B)  # steps per denoiser call
    terms = torch.zeros(B, T, dtype=torch.float64, device=x0.device)  # column t - 1: the term of step t
    for start in range(1, T + 1, per_call):
        steps = torch.arange(start, min(start + per_call, T + 1), device=x0.device)  # (k,)
        t = steps.repeat_interleave(B)  # (k B,)
        x0_k = x0.repeat(len(steps), *([1] * (x0.ndim - 1)))  # (k B, ...)
        eps = randn(x0_k.shape, generator, x0.device, x0.dtype)
        x_t = process.q_sample(x0_k, t, eps)
        out = eps_fn(x_t, t)
        if learned is None:
            sigma2 = process.reverse_variance(t, x_t, variance).double()
            decoder_var = process.table("betas", x0.device)[0]
        else:
            out, v = out
            sigma2 = decoder_var = learned(t, v).exp()
        mu_theta = process.reverse_mean(out, x_t, t, prediction).double()
        terms[:, start - 1:start - 1 + len(steps)] = step_terms(
            process, x0_k, x_t, t, mu_theta, sigma2, decoder_var, decoder).reshape(len(steps), B).T
    out = {"prior": prior_kl(process, x0), "kl": terms[:, 1:], "decoder": terms[:, 0]}
    out["total"] = out["prior"] + out["kl"].sum(1) + out["decoder"]
    return out


def step_terms(process: VPProcess, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, mu_theta: torch.Tensor,
               sigma2: torch.Tensor, decoder_var: torch.Tensor, decoder: str) -> torch.Tensor:
    """L_{t-1} (t >= 2) or L_0 (t = 1) per example, float64, differentiable in mu_theta and the variances. (N,)

    ``sigma2`` the reverse variance (broadcastable to x_t) used by the KL at t >= 2; ``decoder_var``
    the decoder's variance at t = 1 (a scalar or broadcastable to x_t).
    """
    x0, x_t = x0.double(), x_t.double()
    mu_tilde, beta_tilde = process.posterior(x0, x_t, t)
    first = t == 1
    sigma2 = torch.as_tensor(sigma2, dtype=torch.float64).expand_as(x0)
    # t >= 2: closed-form KL; at t = 1 beta_tilde = 0, so give it a harmless value there.
    safe_bt = torch.where(beta_tilde > 0, beta_tilde, sigma2)
    kl = normal_kl(mu_tilde, safe_bt.expand_as(x0), mu_theta, sigma2).flatten(1).sum(1)
    # t = 1: -log p(x0 | x_1) with std sqrt(decoder_var); selected without a host round-trip.
    std1 = torch.as_tensor(decoder_var, dtype=torch.float64).sqrt().expand_as(x0)
    nll0 = -DECODERS[decoder](x0, mu_theta, std1).flatten(1).sum(1)
    return torch.where(first, nll0, kl)


def bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Nats per example -> bits per dimension."""
    return nats / (dims * math.log(2))
