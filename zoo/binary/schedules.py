"""Flip-probability schedules of the bit-flip process (SPEC section 2).

Time convention: 1-based steps ``t = 1..T``, ``t = T`` is (nearly) fair coins. Each schedule is a
pure function returning ``deltas`` as a float64 tensor of length T with ``deltas[t - 1] = delta_t``,
the probability that step t flips a pixel. Every ``delta_t`` lies in (0, 1/2]: 0 would make some
posteriors 0/0 (an impossible flip observed) and 1/2 already replaces the pixel by a fair coin.
"""

from __future__ import annotations

import math

import torch


def constant(T: int, delta: float = 0.02) -> torch.Tensor:
    """delta_t = delta for every t (the discrete HW's process)."""
    return torch.full((T,), float(delta), dtype=torch.float64)


def linear(T: int, delta_1: float = 1e-3, delta_T: float = 0.1) -> torch.Tensor:
    """delta_t linear from delta_1 to delta_T."""
    return torch.linspace(delta_1, delta_T, T, dtype=torch.float64)


def cosine(T: int, s: float = 0.008) -> torch.Tensor:
    """kappa_t = f(t)/f(0) with Nichol & Dhariwal's f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), so that
    delta_t = (1 - kappa_t/kappa_{t-1})/2 (from kappa_t = kappa_{t-1}(1 - 2 delta_t)); the last
    step has kappa_T = 0, i.e. delta_T = 1/2."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2
    kappa = f / f[0]
    return ((1 - kappa[1:] / kappa[:-1]) / 2).clamp(1e-12, 0.5)


def constant_for_kappa_T(T: int, kappa_T: float = 1e-3) -> float:
    """The constant delta whose kappa_T = (1 - 2 delta)^T equals `kappa_T`."""
    return (1 - kappa_T ** (1.0 / T)) / 2


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine}


def make_deltas(name: str, T: int, **kw) -> torch.Tensor:
    """deltas[T] (float64) of the named schedule; kw: delta (constant), delta_1, delta_T (linear),
    s (cosine)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown delta schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    deltas = SCHEDULES[name](T, **kw)
    check_deltas(deltas)
    return deltas


def check_deltas(deltas: torch.Tensor) -> None:
    """Raise unless every delta_t is in (0, 1/2]."""
    if deltas.ndim != 1 or len(deltas) < 1:
        raise ValueError(f"deltas must be a non-empty 1-D tensor, got shape {tuple(deltas.shape)}")
    if not bool(((deltas > 0) & (deltas <= 0.5)).all()):
        raise ValueError(f"every delta_t must lie in (0, 0.5]; got min {deltas.min().item():.3g}, "
                         f"max {deltas.max().item():.3g}")
