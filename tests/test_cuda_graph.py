"""train.cuda_graph: the Trainer's step captured once as a CUDA graph and replayed, and the samplers'
network the same way (issue 13).

On the CPU: every way of asking for it where it cannot run is a one-line usage error before anything
is written. Its behaviour runs twice: on CUDA (`make gpu-check`, `pytest -k cuda`) with real graphs,
and on the CPU under `EmulatedGraphs`, the semantics of a CUDA graph at the level of aten ops (capture
records and runs nothing, a replay runs the recorded ops again on the same tensors with their Python
scalars frozen, a host sync inside a capture fails). Either way the graphed Trainer trains the weights,
EMA and losses of the eager one, its NaN guard stops a diverging run and keeps the last good
checkpoint, and its checkpoints resume in an eager Trainer and back. Sampling under `zoo run
--cuda-graph` (every draw() with the formulation's network as CUDA graphs) gives the eager samples.
"""

from __future__ import annotations

import pytest
import torch

import zoo.common.trainer as trainer_module
from zoo import ZooError
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


@pytest.fixture
def replays(monkeypatch) -> list[int]:
    """The steps (1-based, per graph) that were replays of a captured graph, as the Trainer took them."""
    seen: list[int] = []
    call = trainer_module._GraphedStep.__call__

    def spy(self, tr, batch):
        out = call(self, tr, batch)
        if self.replay is not None:
            seen.append(self.calls)
        return out

    monkeypatch.setattr(trainer_module._GraphedStep, "__call__", spy)
    return seen


def _model() -> GaussianDiffusion:
    return GaussianDiffusion(Config(data="mnist-grey", channels=(8, 16), T=50))


def _data(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _cfg(device: torch.device, cuda_graph: bool = False, **kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, lr_schedule="cosine", warmup_steps=3, ema_decay=0.9,
                grad_clip=1.0, log_every=1, val_every=0, progress=False, device=device.type)
    cfg = TrainConfig(**{**base, **kw})
    if cuda_graph:  # past the config's own check on the CPU, where EmulatedGraphs stands in for CUDA
        object.__setattr__(cfg, "cuda_graph", True)
    return cfg


def _fit(device, cuda_graph: bool, out_dir=None, **kw) -> Trainer:
    torch.manual_seed(0)
    tr = Trainer(_model(), (_data(),), _cfg(device, cuda_graph, **kw), out_dir=out_dir)
    tr.fit()
    return tr


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.detach().float().flatten().cpu() for v in state.values()])


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding, which Adam's normalisation amplifies where gradients are near zero
    (the fused Adam of a graph against the CPU's per-tensor one: 2% of the largest move over 12 steps,
    as much as between the two eager Adams): within 5% of how far the eager run moved any weight."""
    torch.manual_seed(0)
    start = _flat(_model().state_dict())
    return bool((a - b).abs().max() < 0.05 * (b - start).abs().max())


def test_graphed_trainer_trains_as_the_eager_one(graphs, replays):
    """12 steps (3 eager warm-up steps, then 9 replays) under a warm-up + cosine LR schedule, the EMA's
    warm-up and gradient clipping: the same losses, weights, EMA and lr as the eager Trainer. A graph
    that froze the lr, accumulated gradients, froze Adam's step or redrew the same noise would not."""
    eager, graphed = _fit(graphs, False), _fit(graphs, True)
    assert replays == list(range(4, 13)) and graphed._graph is None  # the graph's memory went with the run
    losses = [[r["loss"] for r in t.history if r["kind"] == "step"] for t in (eager, graphed)]
    assert len(losses[1]) == graphed.step == 12
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert _close(_flat(graphed.model.state_dict()), _flat(eager.model.state_dict()))
    assert _close(_flat(graphed.ema.shadow), _flat(eager.ema.shadow))
    lrs = [float(t.optimizer.param_groups[0]["lr"]) for t in (eager, graphed)]
    assert lrs[1] == pytest.approx(lrs[0], rel=1e-6) and torch.is_tensor(graphed.optimizer.param_groups[0]["lr"])
    assert int(graphed._step_on_device) == 12


def test_a_frozen_learning_rate_is_caught(graphs, monkeypatch):
    """The check above can fail: with the lr tensors left out (each group's lr a Python float, frozen
    into the graph at its capture value), the graphed weights leave the eager ones."""
    monkeypatch.setattr(Trainer, "_lrs_on_device", lambda self: None)
    eager, frozen = _fit(graphs, False), _fit(graphs, True)
    assert not _close(_flat(frozen.model.state_dict()), _flat(eager.model.state_dict()))


def test_graphed_guard_stops_a_diverging_run_and_keeps_the_last_good_checkpoint(graphs, replays, tmp_path):
    """A NaN batch at step 7 (epoch 1, batch 2), fed through the data transform outside the graph: the
    replayed guard records it, the run stops at the next log boundary naming step 7, and the checkpoint
    of epoch 0 (step 4) is kept, finite."""

    def poison(batch, epoch, index):
        return tuple(b * float("nan") for b in batch) if (epoch, index) == (1, 2) else batch

    torch.manual_seed(0)
    tr = Trainer(_model(), (_data(),), _cfg(graphs, True, log_every=50), out_dir=tmp_path, transform=poison)
    with pytest.raises(NonFiniteLoss, match="at step 7 "):
        tr.fit()
    assert replays == [4, 5, 6, 7, 8]  # the poisoned step 7 among them
    ckpt = load_checkpoint(tmp_path / "train.ckpt")
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_graphed_checkpoints_resume_eagerly_and_back(graphs, tmp_path):
    """A graphed run stopped at step 6 resumes in an eager Trainer, and an eager one in a graphed
    Trainer; both end where the uninterrupted eager run does (floats in the saved lrs, capturable off)."""
    full = _flat(_fit(graphs, False).model.state_dict())
    for first, second in ((True, False), (False, True)):
        out = tmp_path / f"{first}-{second}"
        _fit(graphs, first, out_dir=out, max_steps=6)
        saved = load_checkpoint(out / "train.ckpt")["optimizer"]["param_groups"][0]
        assert isinstance(saved["lr"], float) and not saved.get("capturable")
        torch.manual_seed(1)
        tr = Trainer(_model(), (_data(),), _cfg(graphs, second), out_dir=out).resume()
        tr.fit()
        assert tr.step == 12
        assert _close(_flat(tr.model.state_dict()), full), (first, second)


def _formulations() -> dict:
    """Every model of the zoo table, and the Gaussian options that add work to loss(): importance-sampled
    t, labels with dropout, the mean parameterisation's own rho parameters."""
    import dataclasses

    from experiments.zoo_table import Entries

    models = {f.name: getattr(Entries(), f.name) for f in dataclasses.fields(Entries)}
    models["gaussian_importance"] = dataclasses.replace(models["gaussian_learned"], t_sampling="importance")
    models["gaussian_conditional"] = dataclasses.replace(models["gaussian"], num_classes=10, label_dropout=0.2)
    models["gaussian_mean"] = dataclasses.replace(models["gaussian"], param="mean")
    return {k: dataclasses.replace(v, channels=(8, 16)) if "vae" not in k else v for k, v in models.items()}


@pytest.mark.parametrize("name", list(_formulations()))
def test_every_formulation_trains_under_a_graph(name, graphs, replays, fake_mnist):
    """Each formulation's loss() is capturable (no host sync, nothing the replays would freeze): 6
    steps, the last 3 replays, give the eager Trainer's losses."""
    from zoo.common.data import training_set
    from zoo.formulations import build

    model_cfg = _formulations()[name]
    data, transform = training_set(model_cfg.data, limit=64, seed=0)
    data = data if getattr(model_cfg, "num_classes", 0) else data[:1]
    losses = []
    for graph in (False, True):
        torch.manual_seed(0)
        cfg = _cfg(graphs, graph, epochs=1, steps=6, batch_size=8, ema_decay=0.0)
        tr = Trainer(build(model_cfg), data, cfg, transform=transform, tag=name)
        tr.fit()
        losses.append([r["loss"] for r in tr.history if r["kind"] == "step"])
    assert replays == [4, 5, 6] and len(losses[1]) == 6
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


# --------------------------------------------------------------------------- sampling (zoo.common.graphed_net)


@pytest.fixture
def captures(monkeypatch) -> list[tuple]:
    """The input signatures GraphedNet captured a graph for, in order."""
    import zoo.common.graphed_net as graphed_net

    seen: list[tuple] = []
    capture = graphed_net.warm_and_capture

    def spy(fn, device, warmup, reset=lambda: None):
        seen.append(device)
        return capture(fn, device, warmup, reset)

    monkeypatch.setattr(graphed_net, "warm_and_capture", spy)
    return seen


@pytest.mark.parametrize("name", list(_formulations()))
def test_every_formulation_samples_under_a_graph(name, graphs, captures, fake_mnist):
    """draw() with the formulation's network as CUDA graphs gives the eager samples from the same
    generator seed and the same NFE, with one capture per chunk size (every step of a chunk replays
    it); the eager network is back afterwards. The conditional model samples with guidance."""
    from zoo.evaluation import draw, graph_sampling
    from zoo.formulations import build

    torch.manual_seed(0)
    model = build(_formulations()[name]).to(graphs).eval()
    net_name = getattr(model, "NETWORK", "net")
    eager = getattr(model, net_name)
    with torch.no_grad():  # U-Nets start with a zero last conv: a constant network would hide stale inputs
        for p in eager.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kw = {"w": 2.0, "labels": torch.arange(6) % 10} if "conditional" in name else {}
    out = {}
    for graph in (False, True):
        gen = torch.Generator(device=graphs).manual_seed(1)
        with graph_sampling(graph):  # the context a `zoo run --cuda-graph` sets
            out[graph] = draw(model, 6, 4, gen, progress=False, **kw)
        assert getattr(model, net_name) is eager
    assert [c.type for c in captures] == [graphs.type] * 2  # chunks of 4 and 2 (the model's device is cuda:0)
    assert out[True].nfe == out[False].nfe and out[True].nfe >= 1
    torch.testing.assert_close(out[True].x, out[False].x, rtol=1e-4, atol=1e-4)
    assert out[True].x.std() > 0


def test_graphed_net_outputs_survive_the_next_replay_and_keywords_go_by_name(graphs, captures):
    """A GraphedNet's output is the caller's to keep (the next replay overwrites the graph's own output
    buffer, not it), and keyword arguments reach the parameter they name in whatever order they come,
    through one capture."""
    from zoo.common.graphed_net import GraphedNet

    class Net(torch.nn.Module):
        def forward(self, x, t=None, y=None):
            return x * 2 + t * 3 + (0 if y is None else y * 5)

    x1, x2, t, y = (torch.full((3,), v, device=graphs) for v in (1.0, 10.0, 100.0, 1000.0))
    g = GraphedNet(Net(), graphs)
    first = g(x1, t=t, y=y)
    assert first.tolist() == [5302.0] * 3
    assert g(x2, y=y, t=t).tolist() == [5320.0] * 3  # keywords the other way round: the same graph
    assert first.tolist() == [5302.0] * 3 and len(g.graphs) == len(captures) == 1
    assert g(x1, t=t).tolist() == [302.0] * 3 and len(g.graphs) == 2  # y None: another signature


def test_a_cuda_graph_run_samples_with_graphs(monkeypatch, tmp_path):
    """`zoo run NAME --cuda-graph` runs the experiment inside graph_sampling, so every draw() graphs its
    network; without the flag it does not. (An experiment with no TrainConfig: on the CPU the flag's
    own check, train.cuda_graph needs CUDA, would refuse any real one first.)"""
    import dataclasses

    from experiments import registry
    from zoo.evaluation import _GRAPH_SAMPLING
    from zoo.report import Report, Result

    seen = []

    def run(cfg, ctx):
        seen.append(_GRAPH_SAMPLING.get())
        return Result({}, Report(title="probe", claim="-"))

    @dataclasses.dataclass(frozen=True)
    class Probe:
        n: int = 1

    exp = registry.Experiment("probe", "records the sampling context", dict.fromkeys(registry.PRESETS, Probe()), run)
    monkeypatch.setitem(registry.REGISTRY, "probe", exp)
    for flag in (True, False):
        registry.run_experiment("probe", out_dir=tmp_path / str(flag), cuda_graph=flag)
    assert seen == [True, False] and _GRAPH_SAMPLING.get() is False


def test_a_loss_that_waits_for_the_host_is_one_clear_error(graphs, tmp_path):
    """A loss() that reads a value on the host cannot be captured: one line naming the run, the cause
    and the way out; the capture is ended and its stream restored, so the same process then trains
    again, eagerly and as a graph. (Last in this file: on CUDA it is the one test that fails a capture.)"""

    class Syncing(GaussianDiffusion):
        def loss(self, batch):
            out = super().loss(batch)
            if out["loss"].item() > 1e9:  # a host sync
                raise AssertionError
            return out

    torch.manual_seed(0)
    tr = Trainer(Syncing(Config(data="mnist-grey", channels=(8, 16), T=50)), (_data(),), _cfg(graphs, True), tag="sync")
    with pytest.raises(ZooError, match="training step of sync cannot be captured .*train.cuda_graph=false") as e:
        tr.fit()
    assert "not permitted when stream is capturing" in str(e.value) and "\n" not in str(e.value)
    for graph in (False, True):
        after = _fit(graphs, graph, max_steps=6)
        assert after.step == 6 and all(torch.isfinite(v).all() for v in after.model.state_dict().values())
