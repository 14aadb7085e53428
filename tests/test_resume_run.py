"""`zoo run --resume`: an interrupted experiment continues from its checkpoints. A model that had
finished is not trained again, its log history comes back, and the evaluation gives what the
uninterrupted run gave; a run directory of another config or seed is refused before anything runs."""

from __future__ import annotations

import json

import pytest

from experiments import registry
from experiments.registry import RunContext, run_experiment
from zoo.common.config import UsageError


def _interrupted(monkeypatch, out):
    """The parameterisation smoke run, stopped after training (its checkpoints left behind)."""
    with monkeypatch.context() as m:
        m.setattr(RunContext, "remove_checkpoints", lambda self: None)
        first = run_experiment("parameterisation", preset="smoke", out_dir=out)
    assert {p.name for p in out.glob("*.ckpt")} == {"mean.ckpt", "eps.ckpt"}
    return first


def test_resume_skips_finished_models_and_reproduces_the_run(fake_mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = _interrupted(monkeypatch, out)
    trained = []
    real_fit = registry.Trainer.fit

    def counting_fit(self):
        before = self.step
        result = real_fit(self)
        trained.append(self.step - before)
        return result

    monkeypatch.setattr(registry.Trainer, "fit", counting_fit)
    again = run_experiment("parameterisation", preset="smoke", out_dir=out, resume=True)
    assert trained == [0, 0]  # both models had finished: no optimiser step taken
    assert again["train_curves"] == first["train_curves"] and again["train_curves"]["mean"]
    for p in ("mean", "eps"):
        for key in ("pixel_fid", "classifier_fid", "train_seconds", "final_train_loss"):
            assert again["results"][p][key] == first["results"][p][key], (p, key)
    assert again["results"]["mean"]["rho1"] == first["results"]["mean"]["rho1"]
    assert json.loads((out / "config.json").read_text())["resumed"] is True
    assert not list(out.glob("*.ckpt"))  # the finished run cleans up as usual
    # The log holds each model's lines once, not twice.
    steps = [(r["run"], r["step"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if r.get("kind") == "epoch"]
    assert len(steps) == len(set(steps)) == 2 * len(first["train_curves"]["mean"])


def test_resume_refuses_another_run(fake_mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="does not exist"):
        run_experiment("parameterisation", preset="smoke", out_dir=out, resume=True)
    assert not out.exists()  # refused before the directory was made
    _interrupted(monkeypatch, out)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(UsageError, match="seed differs"):
        run_experiment("parameterisation", preset="smoke", out_dir=out, seed=1, resume=True)
    with pytest.raises(UsageError, match="train.lr differs"):
        run_experiment("parameterisation", preset="smoke", out_dir=out, overrides=["train.lr=0.5"], resume=True)
    with pytest.raises(UsageError, match="experiment differs"):
        run_experiment("width-sweep", preset="smoke", out_dir=out, resume=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing written


def test_cli_resume_usage_error(fake_mnist, tmp_path, capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "parameterisation", "--preset", "smoke", "--out", str(tmp_path / "none"), "--resume"])
    assert e.value.code == 2 and "no run to continue" in capsys.readouterr().err


def test_resume_ignores_fields_added_since_the_run():
    from experiments.registry import _first_difference

    saved = {"train": {"lr": 0.01, "epochs": 6}, "params": ["mean", "eps"]}
    assert _first_difference(saved, {"train": {"lr": 0.01, "epochs": 6}, "params": ["mean", "eps"], "digits": 10.0}) is None
    assert _first_difference(saved, {"train": {"lr": 0.02, "epochs": 6}, "params": ["mean", "eps"]}) == "train.lr"
    assert _first_difference(saved, {"train": {"lr": 0.01, "epochs": 6}, "params": ["eps"]}) == "params"


def test_cuda_graph_is_how_a_run_executes_not_what_it_computes():
    """A run started with --cuda-graph resumes without it and back (the Trainer's checkpoints are
    portable between the modes), and a rerun from its config.json takes the command's flag, as it
    takes the command's device; a --set train.cuda_graph=true survives the run's own binding."""
    from experiments.registry import _bind_run, _first_difference
    from experiments.toy2d import Toy2dConfig
    from zoo.common.trainer import TrainConfig

    saved = {"train": {"lr": 0.01, "cuda_graph": True}}
    assert _first_difference(saved, {"train": {"lr": 0.01, "cuda_graph": False}}) is None
    assert _first_difference(saved, {"train": {"lr": 0.02, "cuda_graph": True}}) == "train.lr"
    graphed = Toy2dConfig(train=TrainConfig(device="cuda", cuda_graph=True))
    assert _bind_run(graphed, "cpu", 0, False).train.cuda_graph is False  # its config.json rerun on a CPU
    assert _bind_run(graphed, "cuda", 0).train.cuda_graph is True  # None: left as the config has it
