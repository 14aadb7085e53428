"""The experiment registry and the run directory every experiment writes (SPEC section 9).

An experiment is a function ``run(cfg, ctx) -> metrics`` registered with one frozen config
dataclass instance per preset (``smoke`` seconds, ``quick`` minutes on 2 CPU cores, ``paper``
the seed's settings). ``--set key=value`` overrides a field of the preset's config, parsed by the
field's type. The run directory holds ``config.json``, ``metrics.json``, ``log.jsonl`` (written
by the Trainer), PNG figures and ``report.md``.
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

from zoo import ZooError, __version__
from zoo.common.trainer import TrainConfig
from zoo.common.utils import seed_everything, write_json

PRESETS = ("smoke", "quick", "paper")


class UsageError(ZooError):
    """Bad command-line input (exit code 2)."""


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    presets: dict[str, Any]
    run: Callable[[Any, "RunContext"], dict]
    order: int = 100


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, summary: str, presets: dict[str, Any], order: int = 100):
    """Decorator registering ``run(cfg, ctx) -> metrics`` under `name`."""
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


# --------------------------------------------------------------------------- --set overrides


def _parse(value: str, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(value, inner[0], key)
    if origin is tuple:
        items = [v for v in value.strip("()[] ").split(",") if v.strip()]
        elem = args[0] if args else str
        return tuple(_parse(v.strip(), elem, key) for v in items)
    if tp is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--set {key}={value}: expected true or false")
    if tp in (int, float, str):
        try:
            return tp(value)
        except ValueError:
            raise UsageError(f"--set {key}={value}: expected {tp.__name__}") from None
    raise UsageError(f"--set {key}: cannot parse fields of type {tp}")


def apply_overrides(cfg: Any, pairs: typing.Iterable[str]) -> Any:
    """Return `cfg` with each ``key=value`` applied, parsed by the dataclass field's type."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in hints:
            raise UsageError(f"--set {key}: no such option; valid: {', '.join(sorted(hints))}")
        changes[key] = _parse(value.strip(), hints[key], key)
    return dataclasses.replace(cfg, **changes)


def config_from_dict(cfg: Any, values: dict[str, Any]) -> Any:
    """Rebuild a config from config.json's dict (lists back to tuples)."""
    hints = typing.get_type_hints(type(cfg))
    unknown = set(values) - set(hints)
    if unknown:
        raise UsageError(f"config has unknown keys {sorted(unknown)} for this experiment")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return dataclasses.replace(cfg, **fixed)


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

    def train_config(self, **kw) -> TrainConfig:
        """A TrainConfig on this run's device and seed; kw sets the other fields."""
        return TrainConfig(device=self.device, seed=kw.pop("seed", self.seed), **kw)

    def savefig(self, fig, name: str) -> str:
        """Save a matplotlib figure as NAME.png in the run directory and close it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(path.name)
        return path.name

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.out_dir / "metrics.json", metrics)

    def write_report(self, title: str, claim: str, body: str) -> None:
        """report.md: the seed's claim, then what this run measured (body embeds figures)."""
        cmd = f"zoo run {self.name} --preset {self.preset} --seed {self.seed} --device {self.device}"
        text = (f"# {title}\n\n"
                f"*Experiment `{self.name}`, preset `{self.preset}`, seed {self.seed}, device {self.device}; "
                f"rerun with `{cmd}` (resolved settings in `config.json`).*\n\n"
                f"## The seed's claim\n\n{claim.strip()}\n\n## What this run measured\n\n{body.strip()}\n")
        (self.out_dir / "report.md").write_text(text)


def run_experiment(name: str, preset: str = "quick", out_dir: str | Path | None = None,
                   device: str = "cpu", seed: int = 0, overrides: typing.Sequence[str] = (),
                   config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve the config, prepare the run directory, run the experiment; returns its metrics."""
    exp = get(name)
    if preset not in exp.presets:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = exp.presets[preset]
    if config is not None:
        cfg = config_from_dict(cfg, config)
    cfg = apply_overrides(cfg, overrides)
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    if log.exists():
        log.unlink()  # a fresh run owns its log
    ctx = RunContext(name=name, preset=preset, out_dir=out, device=device, seed=seed)
    write_json(out / "config.json", {
        "experiment": name, "preset": preset, "seed": seed, "device": device,
        "overrides": list(overrides), "config": dataclasses.asdict(cfg),
        "command": " ".join(shlex.quote(a) for a in ["zoo", *sys.argv[1:]]) if sys.argv else "",
        "zoo_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    seed_everything(seed)
    t0 = time.perf_counter()
    metrics = exp.run(cfg, ctx)
    metrics = {"experiment": name, "preset": preset, "seconds": round(time.perf_counter() - t0, 2), **metrics}
    ctx.write_metrics(metrics)
    return metrics


def load_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
