"""DDIM, its step grids and zero terminal SNR against diffusers' DDIMScheduler (a test-only peer).

Skipped without diffusers (``pip install -e .[test-peers]``). diffusers counts steps from 0: its
timestep t is our step t + 1. Its step goes from t to t - T // S whatever the spacing, so for
'leading' and 'trailing' with S dividing T (grids of constant stride T/S) it walks our grid; for
'linspace' (stride (T - 1)/(S - 1)) it does not, and only the timesteps are compared there.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr  # noqa: E402

from zoo.gaussian import samplers  # noqa: E402
from zoo.gaussian.process import VPProcess  # noqa: E402
from zoo.gaussian.schedules import make_betas, rescale_betas_zero_snr, step_grid  # noqa: E402

f64 = torch.float64
SPACINGS = ("leading", "trailing", "linspace")
KINDS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def scheduler(T: int, spacing: str, zero_snr: bool = False, kind: str = "eps", schedule: str = "linear"):
    return diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule=schedule, timestep_spacing=spacing,
                                   rescale_betas_zero_snr=zero_snr, prediction_type=KINDS[kind],
                                   clip_sample=False, set_alpha_to_one=True, steps_offset=0)


def theirs_1_based(sched, S: int) -> list[int]:
    sched.set_timesteps(S)
    return sorted(int(t) + 1 for t in sched.timesteps)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_step_grids_equal_diffusers_timesteps(spacing):
    for T, S in [(1000, 10), (1000, 50), (1000, 30), (1000, 7), (10, 3), (7, 3), (7, 6), (1000, 1000)]:
        assert step_grid(T, S, spacing).tolist() == theirs_1_based(scheduler(T, spacing), S), (T, S)
    for T in range(1, 41):
        sched = scheduler(T, spacing)
        for S in range(1, T + 1):
            theirs = theirs_1_based(sched, S)
            if len(theirs) == S + 1:
                # diffusers' trailing takes len(np.arange(T, 0, -T/S)), which float rounding makes S + 1
                # for some (T, S) (e.g. 15, 13): the extra timestep is -1 (our 0), beyond the grid.
                assert spacing == "trailing" and theirs[0] == 0, (T, S, theirs)
                theirs = theirs[1:]
            assert step_grid(T, S, spacing).tolist() == theirs, (T, S)


@pytest.mark.parametrize("schedule,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedules_and_zero_snr_equal_diffusers(schedule, theirs, zero_snr):
    """The rescaling itself in float64 to rounding; diffusers' float32 tables to float32 precision."""
    betas = make_betas(schedule, 1000)
    if zero_snr:
        torch.testing.assert_close(rescale_betas_zero_snr(betas), rescale_zero_terminal_snr(betas.clone()),
                                   rtol=1e-12, atol=1e-15)
        betas = rescale_betas_zero_snr(betas)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=theirs, rescale_betas_zero_snr=zero_snr)
    ours = VPProcess(betas).alpha_bars
    # float32 cumprod over 1000 factors: relative error up to ~1000 * 2^-24 ~ 6e-5.
    torch.testing.assert_close(sched.alphas_cumprod.double(), ours, rtol=1e-4, atol=1e-7)
    if zero_snr:
        assert sched.alphas_cumprod[-1].item() == 0 and ours[-1].item() == 0


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed smooth 'network' of x and the 1-based step (float64): the same output for both samplers."""
    return 0.4 * torch.tanh(x) + 0.3 * torch.cos(0.01 * t.to(x.dtype)).reshape(-1, *[1] * (x.ndim - 1)) * x.flip(0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("kind,zero_snr", [("eps", False), ("x0", False), ("v", False), ("v", True), ("x0", True)])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_trajectory_equals_diffusers(spacing, kind, zero_snr, eta):
    """The same model output at the same step gives the same previous sample, at every step (float64).

    diffusers' float32 alphas_cumprod is replaced by our float64 one, so the update formula alone is
    compared; with eta > 0 both draw their noise from generators in the same state, one draw per step.
    """
    T, S = 1000, 20
    betas = make_betas("linear", T)
    process = VPProcess(rescale_betas_zero_snr(betas) if zero_snr else betas)
    sched = scheduler(T, spacing, zero_snr, kind)
    sched.alphas_cumprod = process.alpha_bars.clone()
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=f64)
    sched.set_timesteps(S)
    x_T = torch.randn(6, 1, 4, 4, dtype=f64, generator=torch.Generator().manual_seed(0))

    ours = []
    samplers.ddim(toy_model, process, x_T, S, eta=eta, generator=torch.Generator().manual_seed(1),
                  spacing=spacing, prediction=kind, callback=lambda info: ours.append((info["t"], info["x"])))

    x, g, theirs = x_T, torch.Generator().manual_seed(1), []
    for t0 in sched.timesteps:
        out = toy_model(x, torch.full((x.shape[0],), int(t0) + 1))
        x = sched.step(out, int(t0), x, eta=eta, generator=g if eta > 0 else None).prev_sample
        theirs.append((int(t0) + 1, x))
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    if zero_snr and spacing == "trailing":
        assert ours[0][0] == T  # the first step starts from alpha_bar_T = 0
    for (t, a), (_, b) in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"step {t}")
