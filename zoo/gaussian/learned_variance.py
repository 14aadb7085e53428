"""Learned reverse variances and importance-sampled steps (Nichol & Dhariwal 2021; SPEC 11).

The network's extra output ``v in [-1, 1]`` (a tanh of its raw channel) interpolates the two fixed
choices in the log domain, per pixel:

    f = (v + 1)/2,   log sigma_t^2 = f log beta_t + (1 - f) log beta_tilde_t          (N&D eq. 15)

``beta_tilde_1 = 0``, so at t = 1 ``log beta_tilde`` is replaced by ``log beta_tilde_2``, as
improved-diffusion's ``posterior_log_variance_clipped`` (T = 1: by ``log beta_1``); the decoder at
t = 1 then has std ``sigma_1``. The hybrid loss is ``L_simple + lambda L_vlb`` (lambda = 0.001) with
the mean detached inside ``L_vlb`` (zoo.gaussian.losses.vlb).

`ImportanceSampler` is improved-diffusion's ``LossSecondMomentResampler``: for each step it keeps
the last 10 values of the VLB term L_t, samples ``t`` uniformly until every step has 10, then with
``p_t ∝ sqrt(E[L_t^2])`` mixed with 0.1 % of the uniform law (N&D eq. 17); each example's loss is
weighted by ``1/(T p_t)`` so that every term stays an unbiased estimate of its uniform-t mean.
Time convention: 1-based steps t (B,) long.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.common.utils import append_dims
from zoo.gaussian.process import VPProcess

HISTORY = 10  # L_t values kept per step
UNIFORM_PROB = 1e-3  # share of the uniform law mixed into the importance law


class LearnedLogVariance:
    """log sigma_t^2 = f log beta_t + (1 - f) log beta_tilde_t, f = (v + 1)/2 (SPEC 11).

    Float64 tables (log beta_t, clipped log beta_tilde_t) moved to each device once and cached.
    """

    def __init__(self, process: VPProcess):
        beta_tilde_clipped = process.beta_tildes.clone()
        beta_tilde_clipped[0] = process.beta_tildes[1] if process.T > 1 else process.betas[0]
        self.bounds = torch.stack([process.betas.log(), beta_tilde_clipped.log()])  # (2, T): max, min
        self._tables: dict[torch.device, torch.Tensor] = {}

    def table(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = self.bounds.to(device)
        return self._tables[device]

    def __call__(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """log sigma_t^2 for steps t (B,) and outputs v (B, ...) in [-1, 1]: float64, the shape of v."""
        tab = self.table(v.device).index_select(1, t.to(v.device).long() - 1)  # (2, B)
        max_log, min_log = append_dims(tab[0], v.ndim), append_dims(tab[1], v.ndim)
        f = (v.double() + 1) / 2
        return f * max_log + (1 - f) * min_log


class ImportanceSampler(nn.Module):
    """t ~ p_t ∝ sqrt(E[L_t^2]) over the last HISTORY values of each step (uniform until all are filled).

    The history is a pair of buffers, so checkpoints and ``.to(device)`` carry it. Rows are
    right-aligned: row t - 1 holds the last min(count, HISTORY) values of L_t at its end.
    """

    def __init__(self, T: int):
        super().__init__()
        self.T = T
        self.register_buffer("history", torch.zeros(T, HISTORY, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(T, dtype=torch.long))

    def probs(self) -> torch.Tensor:
        """p_t for t = 1..T (T,) float64: uniform until every step has HISTORY values."""
        uniform = torch.full_like(self.history[:, 0], 1.0 / self.T)
        w = (self.history ** 2).mean(1).sqrt()
        p = w / w.sum().clamp(min=torch.finfo(torch.float64).tiny)
        p = (1 - UNIFORM_PROB) * p + UNIFORM_PROB / self.T
        p = p / p.sum()
        return torch.where((self.counts == HISTORY).all(), p, uniform)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (n,) long 1-based, weights 1/(T p_t) (n,) float64), on the buffers' device."""
        p = self.probs()
        idx = torch.multinomial(p, n, replacement=True, generator=generator)  # (n,)
        return idx + 1, 1.0 / (self.T * p.index_select(0, idx))

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each example's loss to its step's history, in batch order (no host sync)."""
        t = t.to(self.history.device).long() - 1
        losses = losses.detach().to(self.history)
        n_new = torch.zeros_like(self.counts).scatter_add_(0, t, torch.ones_like(t))  # (T,) new values per step
        order = torch.sort(t, stable=True).indices  # examples grouped by step, batch order kept
        t_sorted = t.index_select(0, order)
        first = torch.cumsum(n_new, 0) - n_new  # position of each step's first example in `order`
        rank = torch.arange(len(t), device=t.device) - first.index_select(0, t_sorted)
        # Old row then the new values, and keep the last HISTORY of them.
        ext = torch.cat([self.history, self.history.new_zeros(self.T, len(t))], 1)  # (T, HISTORY + B)
        ext[t_sorted, HISTORY + rank] = losses.index_select(0, order)
        cols = torch.arange(HISTORY, device=t.device)[None] + n_new[:, None]  # (T, HISTORY)
        self.history.copy_(ext.gather(1, cols))
        self.counts.copy_((self.counts + n_new).clamp(max=HISTORY))
