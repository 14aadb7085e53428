"""The one Trainer: exact resume, NaN guard, checkpoints, EMA, schedules, learning."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from zoo.common.trainer import EMA, CheckpointError, NonFiniteLoss, TrainConfig, Trainer, load_checkpoint, lr_factor


class Regress(nn.Module):
    """A small noisy regression formulation: uses the global RNG inside loss(), like diffusion."""

    def __init__(self, blowup_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.calls, self.blowup_at = 0, blowup_at

    def loss(self, batch):
        x, y = batch
        self.calls += 1
        noise = 0.1 * torch.randn_like(x)  # consumes the RNG every step
        loss = ((self.net(x + noise).squeeze(1) - y) ** 2).mean()
        if self.blowup_at is not None and self.calls >= self.blowup_at:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}


def _data(n=96):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.3


def _cfg(**kw):
    base = dict(epochs=4, batch_size=16, lr=3e-3, lr_schedule="cosine", ema_decay=0.9, seed=3,
                log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("stop_step", [12, 14])  # 6 steps per epoch: 12 is an epoch end, 14 mid-epoch
def test_resume_is_bit_identical(tmp_path, stop_step):
    torch.manual_seed(0)
    full = Trainer(Regress(), _data(), _cfg(), out_dir=tmp_path / "full")
    full.fit()

    torch.manual_seed(0)
    first = Trainer(Regress(), _data(), _cfg(max_steps=stop_step), out_dir=tmp_path / "split")
    first.fit()
    assert first.step == stop_step
    torch.manual_seed(12345)  # a different process state: resume must restore every RNG
    second = Trainer(Regress(), _data(), _cfg(), out_dir=tmp_path / "split").resume()
    second.fit()

    assert second.step == full.step == 24
    for (k, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k
    for k, a in full.ema.shadow.items():
        assert torch.equal(a, second.ema.shadow[k]), k
    assert second.ema.updates == full.ema.updates == 24
    assert full.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]


def test_training_learns_and_logs(tmp_path):
    tr = Trainer(Regress(), _data(), _cfg(epochs=30, lr=2e-2, val_every=1), out_dir=tmp_path, val_data=_data(32))
    tr.fit()
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert len(epochs) == 30 and all("val_loss" in r for r in epochs)
    assert epochs[-1]["train_loss"] < 0.1 * epochs[0]["train_loss"]
    assert epochs[-1]["val_loss"] < 0.1 * epochs[0]["val_loss"]


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    model = Regress(blowup_at=9)  # 6 steps per epoch: epoch 0 completes and is checkpointed
    tr = Trainer(model, _data(), _cfg(), out_dir=tmp_path)
    with pytest.raises(NonFiniteLoss, match="step 9"):
        tr.fit()
    ckpt = load_checkpoint(tmp_path / "train.ckpt")
    assert ckpt["step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_guard_without_a_host_sync_per_step(tmp_path):
    """The guard is a device-side flag read at log and checkpoint boundaries: with log_every = 50 the
    step-9 blow-up is found at the end of epoch 2 (step 12), reported as step 9, and never saved."""
    tr = Trainer(Regress(blowup_at=9), _data(), _cfg(log_every=50), out_dir=tmp_path)
    with pytest.raises(NonFiniteLoss, match="at step 9 ") as e:
        tr.fit()
    assert "grad_clip (now 1)" in str(e.value) and tr.step == 12
    ckpt = load_checkpoint(tmp_path / "train.ckpt")
    assert ckpt["step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(r["step"] <= 6 for r in tr.history)  # nothing non-finite was logged either


def test_checkpoint_errors_are_one_line(tmp_path):
    tr = Trainer(Regress(), _data(), _cfg(max_steps=2), out_dir=tmp_path)
    tr.fit()
    good = (tmp_path / "train.ckpt").read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    for name, pattern in [("trunc", "truncated or foreign"), ("foreign", "not a zoo checkpoint"),
                          ("junk", "truncated or foreign"), ("missing", "does not exist")]:
        with pytest.raises(CheckpointError, match=pattern) as e:
            Trainer(Regress(), _data(), _cfg(), out_dir=tmp_path).resume(tmp_path / f"{name}.ckpt")
        assert "\n" not in str(e.value)

    class Wider(Regress):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))

    Wider.__name__ = "Regress"  # same class name, other shapes: a mismatched configuration
    with pytest.raises(CheckpointError, match="does not match"):
        Trainer(Wider(), _data(), _cfg(), out_dir=tmp_path).resume()


def test_checkpoint_loads_weights_only(tmp_path):
    tr = Trainer(Regress(), _data(), _cfg(max_steps=3), out_dir=tmp_path)
    tr.fit()
    ckpt = torch.load(tmp_path / "train.ckpt", weights_only=True)
    assert ckpt["step"] == 3 and set(ckpt["rng"]) >= {"torch", "numpy_keys", "python"}


def test_step_lr_and_param_groups():
    f = lr_factor(TrainConfig(lr_schedule="step", step_size=2, gamma=0.1), steps_per_epoch=5, total_steps=50)
    assert [f(s) for s in (0, 9, 10, 19, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cos = lr_factor(TrainConfig(lr_schedule="cosine"), steps_per_epoch=5, total_steps=10)
    assert cos(0) == 1 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0)

    class Grouped(Regress):
        def param_groups(self, lr):
            return [{"params": self.net[0].parameters(), "lr": lr},
                    {"params": self.net[2].parameters(), "lr": 10 * lr}]

    tr = Trainer(Grouped(), _data(), _cfg(lr_schedule="constant", lr=1e-3))
    assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx([1e-3, 1e-2])


def test_cosine_horizon_is_the_step_budget():
    # 96 examples in batches of 16: 6 steps per epoch. A budget of 8 steps runs 2 epochs and stops at 8;
    # the cosine schedule must end there (it once ran to the 12 steps of the 2 epochs, ending at lr/4).
    tr = Trainer(Regress(), _data(), _cfg(steps=8))
    tr.fit()
    assert tr.step == 8 and tr.scheduler.get_last_lr()[0] == pytest.approx(0, abs=1e-12)
    # max_steps stops a run early and leaves the horizon alone: after 4 of 8 steps, half the LR
    early = Trainer(Regress(), _data(), _cfg(steps=8, max_steps=4))
    early.fit()
    assert early.step == 4 and early.scheduler.get_last_lr()[0] == pytest.approx(3e-3 * 0.5)
    assert TrainConfig(epochs=3).schedule_steps(6) == 18 and TrainConfig(steps=8, max_steps=4).schedule_steps(6) == 8


def test_ema_swaps_weights_in_and_out():
    tr = Trainer(Regress(), _data(), _cfg(max_steps=5))
    tr.fit()
    own = _weights(tr.model)
    with tr.averaged() as m:
        assert not torch.equal(m.net[0].weight, own["net.0.weight"])
        assert torch.equal(m.net[0].weight, tr.ema.shadow["net.0.weight"])
    assert torch.equal(tr.model.net[0].weight, own["net.0.weight"])


class Scalar(nn.Module):
    """One parameter p: lets a test set the weights the EMA sees at every update."""

    def __init__(self, p0: float):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p0, dtype=torch.float64))


def test_ema_update_matches_hand_computed_sequence():
    # d_n = min(0.25, (1 + n)/(10 + n)): 1/10, 2/11, then 3/12 = 0.25 reaches the cap and stays there
    model = Scalar(4.0)
    ema = EMA(model, decay=0.25)
    expected, d_seq = 4.0, [1 / 10, 2 / 11, 0.25, 0.25, 0.25, 0.25]
    for n, (value, d) in enumerate(zip([1.0, -2.0, 3.0, 0.5, 7.0, -1.0], d_seq)):
        assert ema.current_decay() == pytest.approx(d)
        model.p.data.fill_(value)
        ema.update(model)
        expected = d * expected + (1 - d) * value
        assert ema.shadow["p"].item() == pytest.approx(expected, rel=1e-12), n
    assert ema.updates == 6
    plain = EMA(Scalar(4.0), decay=0.5, warmup=False)
    assert plain.current_decay() == 0.5


def test_ema_warmup_forgets_the_initial_weights():
    """The EMA's weight on the initial parameters is < 1e-3 after every n >= 100 updates at decay 0.9999.

    The EMA is linear in the weights it sees: starting from p0 = 1 and seeing 0 at every update,
    the shadow *is* the weight left on the initial parameters (without warm-up it would be 0.9999^n).
    """
    model = Scalar(1.0)
    ema = EMA(model, decay=0.9999)
    model.p.data.zero_()
    for n in range(1, 2001):
        ema.update(model)
        if n >= 100:
            assert ema.shadow["p"].item() < 1e-3, n
    assert ema.shadow["p"].item() > 0  # the average still moves gradually


def test_trainer_ema_state_in_checkpoint(tmp_path):
    tr = Trainer(Regress(), _data(), _cfg(max_steps=5), out_dir=tmp_path)
    tr.fit()
    ckpt = load_checkpoint(tmp_path / "train.ckpt")
    assert ckpt["ema_updates"] == 5
    assert all(torch.equal(v, tr.ema.shadow[k]) for k, v in ckpt["ema"].items())


def test_optimiser_fused_on_cuda_only_and_the_same_update():
    """CUDA takes the fused optimiser, the CPU the foreach one. The fused update is the per-tensor
    one's within float rounding, so `zoo bench profile`'s comparison of the three times the same
    computation."""
    from zoo.common.trainer import optimiser_kernels

    tr = Trainer(Regress(), _data(), _cfg())
    assert optimiser_kernels(torch.device("cuda")) == {"fused": True}
    assert optimiser_kernels(torch.device("cpu")) == {"foreach": True}
    assert tr.optimizer.defaults["foreach"] and not tr.optimizer.defaults["fused"]
    torch.manual_seed(0)
    w = torch.randn(50, 7)
    grads = [torch.randn(50, 7) for _ in range(5)]
    out = []
    for fused in (True, None):
        p = torch.nn.Parameter(w.clone())
        opt = torch.optim.Adam([p], lr=1e-2, fused=fused, foreach=False if fused is None else None)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out.append(p.detach())
    assert torch.allclose(out[0], out[1], rtol=0, atol=1e-6) and not torch.equal(out[0], w)


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.01), ("sgd", 0.01)])
def test_cpu_foreach_optimiser_is_bit_identical_to_per_tensor(optimizer, weight_decay, monkeypatch):
    """The CPU's foreach optimiser must give bit for bit the weights of torch's per-tensor default,
    which trained every committed CPU result: otherwise those results would no longer rerun
    identically from their config.json. A real U-Net formulation (~100 parameter tensors), a warm-up
    and cosine LR schedule, clipping and the EMA, trained once with each implementation."""
    import zoo.common.trainer as trainer_mod
    from zoo.gaussian.model import Config, GaussianDiffusion

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = _cfg(epochs=2, batch_size=16, optimizer=optimizer, weight_decay=weight_decay, warmup_steps=3)
    runs = []
    for kernels in ({"foreach": True}, {"foreach": False}):
        monkeypatch.setattr(trainer_mod, "optimiser_kernels", lambda device, cuda_graph=False, k=kernels: k)
        torch.manual_seed(0)
        model = GaussianDiffusion(Config(data="mnist-grey", arch="unet", channels=(8, 16), T=100))
        tr = Trainer(model, (x,), cfg)
        assert tr.optimizer.defaults["foreach"] is kernels["foreach"]
        tr.fit()
        runs.append((_weights(model), {k: v.clone() for k, v in tr.ema.shadow.items()}))
    (w_foreach, ema_foreach), (w_loop, ema_loop) = runs
    assert len(w_foreach) > 50 and not all(torch.equal(a, b) for a, b in zip(w_foreach.values(), ema_foreach.values()))
    assert all(torch.equal(w_foreach[k], w_loop[k]) for k in w_loop)
    assert all(torch.equal(ema_foreach[k], ema_loop[k]) for k in ema_loop)

