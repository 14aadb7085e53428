"""Training losses of the VP model, one value per example (SPEC section 1; STYLE 4).

Each loss is called as ``loss(process, x0, x_t, t, eps, pred, cfg) -> (B,)`` with the model's
prediction ``pred`` of kind ``PREDICTION[name]``, converted exactly from the network's own kind:
eps (``eps_hat``) for the three losses of SPEC 1, whose reverse mean is
``mu_theta = (x_t - beta_t/sqrt(1 - alpha_bar_t) eps_hat)/sqrt(alpha_t)``, exactly the mean the
network defines in the mean parameterisation; v (``v_hat``) for the v loss of zero terminal SNR.
Time convention: 1-based t (B,) long.
With a learned variance, `vlb` is the second term of the hybrid loss L_simple + lambda L_vlb.
"""

from __future__ import annotations

import math

import torch

from zoo.gaussian.likelihood import step_terms
from zoo.gaussian.learned_variance import LearnedLogVariance
from zoo.gaussian.process import VPProcess

MM_TARGETS = ("posterior", "analytic")
REDUCTIONS = {"sum": lambda e: e.flatten(1).sum(1), "mean": lambda e: e.flatten(1).mean(1)}


def simple(process: VPProcess, x0, x_t, t, eps, eps_hat, cfg=None) -> torch.Tensor:
    """L_simple = |eps - eps_hat|^2 averaged over pixels (Ho et al. eq. 14). (B,)"""
    return ((eps - eps_hat) ** 2).flatten(1).mean(1)


def elbo_eps(process: VPProcess, x0, x_t, t, eps, eps_hat, cfg=None) -> torch.Tensor:
    """beta_t/(2 alpha_t (1 - alpha_bar_t)) |eps - eps_hat|^2 summed over pixels (Ho et al. eq. 12). (B,)

    The ELBO term L_{t-1} with reverse variance beta_t, up to its constant.
    """
    return process.coef("elbo_eps_weight", t, x0).flatten() * ((eps - eps_hat) ** 2).flatten(1).sum(1)


def mean_matching(process: VPProcess, x0, x_t, t, eps, eps_hat, cfg) -> torch.Tensor:
    """|x_{t-1} - mu_theta(x_t, t)|^2/(2 beta_t) (seed 001), reduced by sum or mean over pixels. (B,)

    The target x_{t-1} is a draw from q(x_{t-1} | x_t, x0) (``mm_target = "posterior"``, the
    write-up's estimator) or its mean mu_tilde (``"analytic"``, lower variance, same gradient in
    expectation).
    """
    mu_tilde, beta_tilde = process.posterior(x0, x_t, t)
    target = mu_tilde
    if cfg.mm_target == "posterior":
        target = mu_tilde + beta_tilde.sqrt() * torch.randn_like(x0)
    mu_theta = process.mean_from_eps(eps_hat, x_t, t)
    err = (target - mu_theta) ** 2 / (2 * process.coef("betas", t, x0))
    return REDUCTIONS[cfg.mm_reduction](err)


def v_loss(process: VPProcess, x0, x_t, t, eps, v_hat, cfg=None) -> torch.Tensor:
    """|v - v_hat|^2 averaged over pixels, v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0. (B,)

    Salimans & Ho (2022); the loss Lin et al. (2024, sec. 3.2) train zero-terminal-SNR models with.
    For the same x_t, v_hat - v = -(x0_hat - x0)/sqrt(1 - alpha_bar_t), so it weighs the x0 error by
    1 + SNR_t where L_simple weighs it by SNR_t: at alpha_bar_T = 0 that is 1 against 0, and only
    this loss teaches the network the x0 (= E[x0]) that every sampler starts from at t = T.
    """
    v = process.coef("sqrt_alpha_bars", t, x0) * eps - process.coef("sqrt_one_minus_alpha_bars", t, x0) * x0
    return ((v - v_hat) ** 2).flatten(1).mean(1)


LOSSES = {"simple": simple, "elbo-eps": elbo_eps, "mean-matching": mean_matching, "v": v_loss}
PREDICTION = {"simple": "eps", "elbo-eps": "eps", "mean-matching": "eps", "v": "v"}  # the kind each loss takes


def vlb(process: VPProcess, log_variance: LearnedLogVariance, x0, x_t, t, eps_hat, v, decoder: str) -> torch.Tensor:
    """L_vlb's one-step estimate T L_{t-1}/(D log 2) in bits per dimension, the mean detached (N&D sec. 3.1). (B,)

    L_{t-1} is the ELBO term with the learned variance sigma_t^2 (the KL at t >= 2, the decoder at
    t = 1), in which only v carries a gradient: the stop-gradient on mu_theta leaves the mean to
    L_simple. T L_{t-1} with t uniform is an unbiased estimate of the bound's sum over t, in units
    of improved-diffusion's ``vb * num_timesteps``, so lambda = 0.001 weighs it as there.
    """
    mu_theta = process.mean_from_eps(eps_hat.detach(), x_t, t).double()
    sigma2 = log_variance(t, v).exp()
    L_t = step_terms(process, x0, x_t, t, mu_theta, sigma2, sigma2, decoder)  # (B,) nats
    return (process.T * L_t / (x0[0].numel() * math.log(2))).to(x0.dtype)
