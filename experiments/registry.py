"""The experiment registry and the run directory every experiment writes (SPEC section 9).

An experiment is a function ``run(cfg, ctx) -> zoo.report.Result`` registered with one frozen
config tree per preset (``smoke`` seconds, ``quick`` minutes on 2 CPU cores, ``paper`` the seed's
settings): typically ``model`` (a formulation Config), ``train`` (TrainConfig), ``eval``
(EvalConfig) and the experiment's own fields. ``--set train.lr=1e-3`` overrides a leaf
(zoo.common.config). The run directory holds ``config.json`` (exactly that tree, with the run's
preset, seed and device), ``metrics.json`` (with the verdict), ``log.jsonl`` (written by the
Trainer), PNG figures and ``report.md`` (zoo.report).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo import __version__
from zoo.common.checkpoint import RunLock, remove_stale_temps
from zoo.common.config import UsageError, apply_overrides, config_from_dict  # noqa: F401  (re-exported)
from zoo.common.trainer import TrainConfig, Trainer
from zoo.common.utils import seed_everything, write_json
from zoo.evaluation import graph_sampling
from zoo.report import Result, render
from zoo.runs import remove_checkpoints, train

PRESETS = ("smoke", "quick", "paper")


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    presets: dict[str, Any]
    run: Callable[[Any, "RunContext"], Result]
    order: int = 100


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, summary: str, presets: dict[str, Any], order: int = 100):
    """Decorator registering ``run(cfg, ctx) -> Result`` under `name`."""
    missing = set(PRESETS) - set(presets)
    if missing:
        raise ValueError(f"experiment {name!r} lacks presets {sorted(missing)}")

    def deco(fn):
        REGISTRY[name] = Experiment(name, summary, presets, fn, order)
        return fn

    return deco


def get(name: str) -> Experiment:
    if name not in REGISTRY:
        raise UsageError(f"unknown experiment {name!r}; `zoo list` shows: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# --------------------------------------------------------------------------- the run directory


@dataclass
class RunContext:
    """What an experiment gets besides its config: where to write, device, seed, helpers."""

    name: str
    preset: str
    out_dir: Path
    device: str = "cpu"
    seed: int = 0
    figures: list[str] = field(default_factory=list)
    resume: bool = False  # each model continues from OUT_DIR/TAG.ckpt where one exists

    def fit(self, model: nn.Module, data: tuple[torch.Tensor, ...], train_cfg: TrainConfig, tag: str,
            val: tuple[torch.Tensor, ...] | None = None, guarded: bool = False, seed_offset: int = 0,
            transform: Callable | None = None) -> Trainer:
        """`zoo.runs.train` into this run directory (run_experiment set train.device and train.seed
        to the run's; `seed_offset` shifts the seed, e.g. one per data subset; `transform` the
        Trainer's batch transform, e.g. the dynamic binarisation of ``zoo.common.data.training_set``)."""
        cfg = dataclasses.replace(train_cfg, seed=train_cfg.seed + seed_offset)
        return train(model, data, cfg, self.out_dir, tag, meta={"experiment": self.name}, val=val, guarded=guarded,
                     transform=transform, resume=self.resume)

    def remove_checkpoints(self) -> None:
        remove_checkpoints(self.out_dir)

    def savefig(self, fig, name: str) -> str:
        """Save a matplotlib figure as NAME.png in the run directory and close it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(path.name)
        return path.name


def _bind_run(cfg: Any, device: str, seed: int, cuda_graph: bool | None = None) -> Any:
    """The config tree with every TrainConfig on the run's device and seed (and, unless `cuda_graph` is
    None, its training step captured as a CUDA graph or not: how a run executes, like its device)."""
    if isinstance(cfg, TrainConfig):
        graph = {} if cuda_graph is None else {"cuda_graph": cuda_graph}
        return dataclasses.replace(cfg, device=device, seed=seed, **graph)
    if not dataclasses.is_dataclass(cfg):
        return cfg
    changes = {f.name: _bind_run(getattr(cfg, f.name), device, seed, cuda_graph) for f in dataclasses.fields(cfg)
               if dataclasses.is_dataclass(getattr(cfg, f.name))}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def run_experiment(name: str, preset: str = "quick", out_dir: str | Path | None = None,
                   device: str = "cpu", seed: int = 0, overrides: typing.Sequence[str] = (),
                   config: dict[str, Any] | None = None, resume: bool = False,
                   cuda_graph: bool = False) -> dict[str, Any]:
    """Resolve the config, prepare the run directory, run the experiment; returns its metrics.

    `resume`: continue an interrupted run in `out_dir`, each model from its TAG.ckpt where one exists
    (a finished model is not trained again); its config.json must hold the same config and seed.
    `cuda_graph`: train.cuda_graph for every model (CUDA only; zoo/common/trainer.py), and every
    ``draw`` with the model's network as CUDA graphs (zoo/common/graphed_net.py)."""
    exp = get(name)
    if preset not in exp.presets:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = exp.presets[preset]
    if config is not None:
        cfg = config_from_dict(cfg, config)
    # Bound before the overrides as well, so a field checked against the device (train.cuda_graph) sees
    # the run's device; bound after them, so an override cannot move one model off it (a --set
    # train.cuda_graph=true is kept: the second binding leaves that flag alone).
    cfg = _bind_run(apply_overrides(_bind_run(cfg, device, seed, cuda_graph), overrides), device, seed)
    if out_dir is not None and not str(out_dir).strip():
        raise UsageError("--out '' is empty; give a directory, e.g. --out runs/mine")
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    if resume:
        _check_resumable(out, name, cfg, seed)
    try:  # only after the config validated: nothing is written for a bad command
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    with RunLock(out):  # one writer per run directory, as for `zoo train`: a second one is refused
        remove_stale_temps(out)
        log = out / "log.jsonl"
        if log.exists() and not resume:
            log.unlink()  # a fresh run owns its log
        ctx = RunContext(name=name, preset=preset, out_dir=out, device=device, seed=seed, resume=resume)
        info = {
            "experiment": name, "preset": preset, "seed": seed, "device": device,
            "overrides": list(overrides), "config": dataclasses.asdict(cfg),
            "command": " ".join(shlex.quote(a) for a in ["zoo", *sys.argv[1:]]) if sys.argv else "",
            "zoo_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"resumed": True} if resume else {}),
        }
        write_json(out / "config.json", info)
        seed_everything(seed)
        t0 = time.perf_counter()
        with graph_sampling(cuda_graph):  # every draw() with the network as CUDA graphs, where asked
            result = exp.run(cfg, ctx)
        metrics = {"experiment": name, "preset": preset, "seconds": round(time.perf_counter() - t0, 2),
                   **result.metrics, "verdict": result.report.verdict}
        write_json(out / "metrics.json", metrics)
        (out / "report.md").write_text(render(result.report, info))
    return metrics


def _check_resumable(out: Path, name: str, cfg: Any, seed: int) -> None:
    """A run continues only with the experiment, config and seed it started with."""
    saved_path = out / "config.json"
    if not saved_path.exists():
        raise UsageError(f"--resume: {saved_path} does not exist; there is no run to continue in {out}")
    saved = load_json(saved_path)
    ours = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    theirs = json.loads(json.dumps(saved.get("config"), default=str))
    changed = _first_difference(theirs, ours)
    if saved.get("experiment") != name or saved.get("seed") != seed or changed:
        what = "experiment" if saved.get("experiment") != name else "seed" if saved.get("seed") != seed else changed
        raise UsageError(f"--resume: {saved_path} was written by a different run ({what} differs); rerun it with "
                         f"`--config {saved_path} --resume`, or give another --out")


# How a step executes, not what it computes: a run started with --cuda-graph resumes without it and back.
EXECUTION_ONLY = ("cuda_graph",)


def _first_difference(saved: Any, ours: Any, path: str = "") -> str | None:
    """The first setting the saved config holds with another value (None: none). A field the saved
    config lacks was added to the code after that run: it takes its default and does not count."""
    if isinstance(saved, dict) and isinstance(ours, dict):
        keys = [k for k in saved if k not in EXECUTION_ONLY]
        return next((d for k in keys if (d := _first_difference(saved[k], ours.get(k), f"{path}.{k}" if path else k))),
                    None)
    return None if saved == ours else (path or "config")


def load_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
