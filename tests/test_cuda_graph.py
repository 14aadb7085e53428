"""train.cuda_graph: the Trainer's step captured once as a CUDA graph and replayed (issue 13).

On the CPU: every way of asking for it where it cannot run is a one-line usage error before anything
is written. On CUDA (`make gpu-check`, `pytest -k cuda`): it trains the weights, EMA and losses of the
eager Trainer, its NaN guard stops a diverging run and keeps the last good checkpoint, and its
checkpoints resume in an eager Trainer and back.
"""

from __future__ import annotations

import pytest
import torch

from zoo.common.config import ConfigError
from zoo.common.trainer import NonFiniteLoss, TrainConfig, Trainer, load_checkpoint
from zoo.gaussian.model import Config, GaussianDiffusion


def test_config_refuses_what_a_cuda_graph_cannot_run():
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        TrainConfig(cuda_graph=True)  # device cpu
    with pytest.raises(ConfigError, match="adam or adamw"):
        TrainConfig(cuda_graph=True, device="cuda", optimizer="sgd")
    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(cuda_graph=True, device="cuda", compile=True)
    assert TrainConfig(cuda_graph=True, device="cuda").cuda_graph  # checked, not resolved: no GPU needed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_auto_device_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="this run is on cpu"):
        Trainer(_model(), (torch.zeros(8, 1, 28, 28),), TrainConfig(cuda_graph=True, device="auto"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_experiment_on_the_cpu_refuses_before_writing(capsys, tmp_path):
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "toy2d", "--preset", "smoke", "--out", str(tmp_path / "run"), "--set", "train.cuda_graph=true"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "train.cuda_graph needs a CUDA device" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def _model() -> GaussianDiffusion:
    return GaussianDiffusion(Config(data="mnist-grey", channels=(8, 16), T=50))


def _data(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _cfg(device, **kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, lr_schedule="cosine", warmup_steps=3, ema_decay=0.9,
                grad_clip=1.0, log_every=1, val_every=0, progress=False, device=device.type)
    return TrainConfig(**{**base, **kw})


def _fit(device, cuda_graph: bool, out_dir=None, **kw) -> Trainer:
    torch.manual_seed(0)
    tr = Trainer(_model(), (_data(),), _cfg(device, cuda_graph=cuda_graph, **kw), out_dir=out_dir)
    tr.fit()
    return tr


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.detach().float().flatten().cpu() for v in state.values()])


def test_graphed_trainer_trains_as_the_eager_one(device):
    """12 steps (3 eager warm-up steps, then 9 replays) under a warm-up + cosine LR schedule, the EMA's
    warm-up and gradient clipping: the same losses, weights and EMA as the eager Trainer. A graph that
    froze the lr, accumulated gradients, froze Adam's step or redrew the same noise would not match."""
    if device.type != "cuda":
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            _cfg(device, cuda_graph=True)
        return
    eager, graphed = _fit(device, False), _fit(device, True)
    losses = [[r["loss"] for r in t.history if r["kind"] == "step"] for t in (eager, graphed)]
    assert len(losses[1]) == graphed.step == 12
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    w0, w = _flat(eager.model.state_dict()), _flat(graphed.model.state_dict())
    assert (w - w0).abs().max() < 1e-3 * w0.abs().max()
    assert (_flat(graphed.ema.shadow) - _flat(eager.ema.shadow)).abs().max() < 1e-3 * w0.abs().max()
    lrs = [float(t.optimizer.param_groups[0]["lr"]) for t in (eager, graphed)]
    assert lrs[1] == pytest.approx(lrs[0], abs=1e-9) and torch.is_tensor(graphed.optimizer.param_groups[0]["lr"])


def test_graphed_guard_stops_a_diverging_run_and_keeps_the_last_good_checkpoint(device, tmp_path):
    """A NaN batch at step 7 (epoch 1, batch 2), fed through the data transform outside the graph: the
    replayed guard records it, the run stops at the next log boundary naming step 7, and the checkpoint
    of epoch 0 (step 4) is kept, finite."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need CUDA (the CPU's guard: tests/test_trainer.py)")

    def poison(batch, epoch, index):
        return tuple(b * float("nan") for b in batch) if (epoch, index) == (1, 2) else batch

    torch.manual_seed(0)
    tr = Trainer(_model(), (_data(),), _cfg(device, cuda_graph=True, log_every=50), out_dir=tmp_path,
                 transform=poison)
    with pytest.raises(NonFiniteLoss, match="at step 7 "):
        tr.fit()
    ckpt = load_checkpoint(tmp_path / "train.ckpt")
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_graphed_checkpoints_resume_eagerly_and_back(device, tmp_path):
    """A graphed run stopped at step 6 resumes in an eager Trainer, and an eager one in a graphed
    Trainer; both end where the uninterrupted eager run does (floats in the saved lrs, capturable off)."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need CUDA (the CPU's resume: tests/test_trainer.py)")
    full = _fit(device, False)
    for first, second in ((True, False), (False, True)):
        out = tmp_path / f"{first}-{second}"
        _fit(device, first, out_dir=out, max_steps=6)
        saved = load_checkpoint(out / "train.ckpt")["optimizer"]["param_groups"][0]
        assert isinstance(saved["lr"], float) and not saved.get("capturable")
        torch.manual_seed(1)
        tr = Trainer(_model(), (_data(),), _cfg(device, cuda_graph=second), out_dir=out).resume()
        tr.fit()
        assert tr.step == 12
        w0 = _flat(full.model.state_dict())
        assert (_flat(tr.model.state_dict()) - w0).abs().max() < 1e-3 * w0.abs().max(), (first, second)
