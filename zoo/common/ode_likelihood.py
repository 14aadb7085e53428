"""Likelihood through a probability-flow ODE: the instantaneous change of variables (SPEC 11).

A formulation supplies a flow ``dy/dsigma = g(y, sigma)`` that carries its data (at ``sigma_min``)
to its prior (at ``sigma_max``) and the prior's variance. Along a trajectory
``d log p(y(sigma))/dsigma = -div_y g`` (Chen et al. 2018, Song et al. 2021 eq. 39), so

    log p_min(y(sigma_min)) = log N(y(sigma_max); 0, prior_var I) + integral div_y g(y, sigma) dsigma.

The state and the running integral are integrated together, with fixed-step Heun on a Karras
grid (Karras et al. 2022, eq. 5, rho = 7) or scipy's adaptive RK45 (``solve_ivp``). The divergence
is exact (one backward pass per dimension, for small dimension) or Hutchinson's estimate
``e^T (dg/dy) e`` with one seeded Rademacher probe ``e`` per trajectory, fixed along it (Grathwohl
et al. 2019). Each formulation chooses its own ``sigma`` (VP: DDIM's ``sqrt((1 - alpha_bar)/alpha_bar)``,
VE: ``sigma_q sqrt(t)``); ``g`` is called with a float64 state (B, ...) and a Python float sigma
and casts to its own dtype. Every tensor is created on the state's device.

For 8-bit data in [-1, 1] (bin width ``w = 2/255``), uniform dequantisation gives the bound
``-log P(x) <= -E_u log p(x + u) - D log w`` (Theis et al. 2016); `dequantisation_term` is the
second term, which callers report separately.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from zoo import ZooError
from zoo.common.utils import rand, randint

Flow = Callable[[torch.Tensor, float], torch.Tensor]  # g(y, sigma) -> dy/dsigma, shape of y
BIN_WIDTH_8BIT = 2.0 / 255.0  # 8-bit data in [-1, 1]
EXACT_MAX_DIM = 64  # `hutchinson=None` uses the exact trace up to this many dimensions
SOLVERS = ("heun", "rk45")


class ODELikelihoodError(ZooError):
    """A bad option of the ODE likelihood (one line, lists the valid choices)."""


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ODELikelihoodError(f"unknown ODE solver {solver!r}; choose from {', '.join(SOLVERS)}")


# --------------------------------------------------------------------------- divergence


def drift_and_divergence(g: Flow, y: torch.Tensor, sigma: float,
                         probe: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(g(y, sigma), div_y g) for each example: float64 (B, ...) and (B,).

    ``probe`` None: the exact trace, sum_i d g_i / d y_i, one backward pass per dimension.
    ``probe`` e (like y): Hutchinson's unbiased estimate e^T (dg/dy) e from one vector-Jacobian product.
    """
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        d = g(y, sigma)
        flat = d.flatten(1)  # (B, D)
        div = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        if d.requires_grad and probe is not None:
            (vjp,) = torch.autograd.grad(d, y, grad_outputs=probe.to(d.dtype), allow_unused=True)
            if vjp is not None:
                div = (vjp.double() * probe).flatten(1).sum(1)
        elif d.requires_grad:
            for i in range(flat.shape[1]):
                (row,) = torch.autograd.grad(flat[:, i].sum(), y, retain_graph=True, allow_unused=True)
                if row is not None:  # None: g does not depend on y
                    div = div + row.flatten(1)[:, i].double()
    return d.detach().double(), div.detach()


def rademacher(shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A float64 tensor of independent +-1 signs, drawn on the generator's device, moved to `device`."""
    return (2 * randint(0, 2, shape, generator, device) - 1).double()


# --------------------------------------------------------------------------- grids and solvers


def karras_grid(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> list[float]:
    """`steps + 1` increasing sigmas from sigma_min to sigma_max, dense near sigma_min (Karras eq. 5).

    sigma_i = (sigma_max^(1/rho) + (1 - i/steps)(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    """
    if steps < 1:
        raise ODELikelihoodError(f"steps must be >= 1, got {steps}")
    if not 0 <= sigma_min < sigma_max:
        raise ODELikelihoodError(f"need 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    grid = [(lo + i / steps * (hi - lo)) ** rho for i in range(steps + 1)]
    grid[0], grid[-1] = sigma_min, sigma_max
    return grid


def integrate_heun(g: Flow, y: torch.Tensor, grid: list[float], probe: torch.Tensor | None = None,
                   callback=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Heun's method (Karras et al. Alg. 1) from grid[0] to grid[-1] on the state and on the
    integral of the divergence. Returns (y at grid[-1], integral div g dsigma (B,), NFE)."""
    y = y.double()
    integral = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
    d_cur, div_cur = drift_and_divergence(g, y, grid[0], probe)
    nfe = 1
    for s_cur, s_next in zip(grid[:-1], grid[1:]):
        h = s_next - s_cur
        # Euler step.
        y_next = y + h * d_cur
        # Apply 2nd order correction (the trapezoid on the state and on the divergence).
        d_next, div_next = drift_and_divergence(g, y_next, s_next, probe)
        nfe += 1
        y = y + 0.5 * h * (d_cur + d_next)
        integral = integral + 0.5 * h * (div_cur + div_next)
        if callback is not None:
            callback({"sigma": s_next, "y": y, "integral": integral})
        # The next step starts from the corrected state.
        if s_next != grid[-1]:
            d_cur, div_cur = drift_and_divergence(g, y, s_next, probe)
            nfe += 1
    return y, integral, nfe


def integrate_rk45(g: Flow, y: torch.Tensor, sigma_min: float, sigma_max: float,
                   probe: torch.Tensor | None = None, rtol: float = 1e-5,
                   atol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, int]:
    """scipy's adaptive Dormand-Prince RK45 (``solve_ivp``) on the state and the divergence integral.

    The state travels through NumPy (float64, host memory) between evaluations; each evaluation
    runs on the state's device. Returns (y at sigma_max, integral div g dsigma (B,), NFE).
    """
    from scipy.integrate import solve_ivp

    shape, device, B = y.shape, y.device, y.shape[0]
    n = y.numel()

    def rhs(sigma, z):
        state = torch.from_numpy(z[:n]).to(device).reshape(shape)
        d, div = drift_and_divergence(g, state, float(sigma), probe)
        return torch.cat([d.flatten(), div]).cpu().numpy()

    z0 = torch.cat([y.double().flatten(), torch.zeros(B, dtype=torch.float64, device=device)]).cpu().numpy()
    sol = solve_ivp(rhs, (sigma_min, sigma_max), z0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise ODELikelihoodError(f"RK45 failed: {sol.message}; try solver='heun'")
    z1 = torch.from_numpy(sol.y[:, -1]).to(device)
    return z1[:n].reshape(shape), z1[n:], int(sol.nfev)


# --------------------------------------------------------------------------- the likelihood


def gaussian_log_prior(y: torch.Tensor, var: float) -> torch.Tensor:
    """log N(y; 0, var I) summed per example, float64. (B,)"""
    y = y.double().flatten(1)
    return -0.5 * (y ** 2).sum(1) / var - 0.5 * y.shape[1] * math.log(2 * math.pi * var)


def dequantisation_term(dims: int, bin_width: float) -> float:
    """-D log w: what uniform dequantisation over bins of width w adds to -E_u log p(x + u) (SPEC 11)."""
    return -dims * math.log(bin_width)


def ode_log_likelihood(g: Flow, y: torch.Tensor, sigma_min: float, sigma_max: float, prior_var: float,
                       steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
                       generator: torch.Generator | None = None, rtol: float = 1e-5,
                       atol: float = 1e-5) -> dict[str, torch.Tensor | int]:
    """log p(y) of the density at sigma_min that the flow g pushes to N(0, prior_var I) at sigma_max.

    Returns float64 per-example terms {"log_prob": (B,), "prior": log N(y(sigma_max)) (B,),
    "integral": the divergence integral (B,), "nfe": int}. ``hutchinson`` None chooses the exact
    trace for at most EXACT_MAX_DIM dimensions; the Rademacher probe is drawn from ``generator``.
    """
    check_solver(solver)
    dims = y[0].numel()
    if hutchinson is None:
        hutchinson = dims > EXACT_MAX_DIM
    probe = rademacher(y.shape, y.device, generator) if hutchinson else None
    if solver == "heun":
        y_end, integral, nfe = integrate_heun(g, y, karras_grid(sigma_min, sigma_max, steps), probe)
    else:
        y_end, integral, nfe = integrate_rk45(g, y, sigma_min, sigma_max, probe, rtol, atol)
    prior = gaussian_log_prior(y_end, prior_var)
    return {"log_prob": prior + integral, "prior": prior, "integral": integral, "nfe": nfe}


def dequantised_nll(log_likelihood: Callable[[torch.Tensor], dict], x: torch.Tensor, bin_width: float | None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The nats per example of data x through a continuous density, with the dequantisation explicit.

    ``bin_width`` w: 8-bit data, ``y = x + u`` with u ~ U(-w/2, w/2)^D drawn from ``generator``;
    returns, each (B,) float64 in nats: {"ode": -log p(y) = "prior" + "divergence" (-log of the
    prior density at the trajectory's end, minus the divergence integral), "dequant": -D log w,
    "total": ode + dequant, "bits_per_dim": total / (D log 2)} (SPEC 11).
    ``bin_width`` None: continuous data, y = x and "dequant" is 0.
    """
    y = x.double()
    dims = x[0].numel()
    if bin_width is not None:
        u = rand(x.shape, generator, x.device, torch.float64)
        y = y + (u - 0.5) * bin_width
    out = log_likelihood(y)
    ode = -out["log_prob"]
    dequant = torch.full_like(ode, 0.0 if bin_width is None else dequantisation_term(dims, bin_width))
    total = ode + dequant
    return {"ode": ode, "dequant": dequant, "total": total, "bits_per_dim": total / (dims * math.log(2)),
            "prior": -out["prior"], "divergence": -out["integral"]}
