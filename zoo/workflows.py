"""`zoo train`, `zoo sample` and `zoo eval`: work outside the named experiments.

``train`` builds a formulation from its Config (``--set``) and trains it through ``zoo.runs.train``
(``--train`` sets TrainConfig fields); every checkpoint carries the formulation name and config,
so ``sample`` and ``eval`` rebuild the model from the file alone, whoever wrote it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo import ZooError
from zoo.common.checkpoint import (RESUME_KEYS, CheckpointError, RunLock, check_same_model, load_checkpoint,
                                   remove_stale_temps)
from zoo.common.config import UsageError, apply_overrides, parse_kwargs, split_pair  # noqa: F401  (re-exported)
from zoo.common.data import is_image, load_dataset, to_unit, training_set
from zoo.common.plotting import save_picture
from zoo.common.train_config import TrainConfig
from zoo.common.utils import module_device, resolve_device, write_json
from zoo.evaluation import EvalConfig, evaluate as evaluate_model
from zoo.formulations import FORMULATION_MODULES, module, rebuild
from zoo.runs import train as train_model


MAX_SAMPLES = 100_000  # -n / --n-samples above this is a usage error (memory, not a use case)
# Sampler keywords the command line cannot give (tensors, callables, the seeded generator).
NOT_FROM_CLI = ("n", "generator", "callback", "x_T", "x_1", "labels", "out", "self")


def _out_dir(out_dir: str | Path | None, default: str) -> Path:
    """The run directory `out_dir` (a usage error when empty), not created yet."""
    if out_dir is not None and not str(out_dir).strip():
        raise UsageError("--out '' is empty; give a directory, e.g. --out runs/mine")
    return Path(out_dir or default)


def _make_dir(path: Path, option: str = "--out") -> None:
    """mkdir -p `path`; an impossible place is a one-line usage error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=path)
        probe.close()
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write there ({e.strerror or e})") from None


def train(name: str, sets: Sequence[str] = (), trains: Sequence[str] = (), out_dir: str | Path | None = None,
          device: str = "cpu", seed: int = 0, limit: int | None = None, resume: bool = False) -> dict[str, Any]:
    """Train formulation `name`; returns a summary (also written to OUT/summary.json).

    Everything is validated (configs, data, the checkpoint to resume) before anything is written;
    the run directory is locked for the run (RunLock) and stale checkpoint temp files removed.
    With `resume`, an ``lr`` among `trains` replaces the checkpoint's learning rate.
    """
    if name not in FORMULATION_MODULES:
        raise UsageError(f"unknown formulation {name!r}; choose from {', '.join(FORMULATION_MODULES)}")
    mod = module(name)
    cfg = apply_overrides(mod.Config(), sets)
    tcfg = apply_overrides(TrainConfig(device=device, seed=seed), trains)
    out = _out_dir(out_dir, f"runs/train-{name}")
    train_data, transform = training_set(cfg.data, limit=limit, seed=seed)  # transform: dynamic binarisation
    val_limit = min(limit, 2000) if limit else 2000
    val_data = load_dataset(cfg.data, "valid" if is_image(cfg.data) else "test", limit=val_limit, seed=seed)
    torch.manual_seed(seed)
    model = mod.build(cfg)
    meta = {"formulation": name, "config": dataclasses.asdict(cfg)}
    ckpt_path = out / "train.ckpt"
    if resume and ckpt_path.exists():  # refuse a foreign or different checkpoint before writing anything
        check_same_model(ckpt_path, load_checkpoint(ckpt_path, required=RESUME_KEYS)["meta"], meta)
    _make_dir(out)
    with RunLock(out):
        remove_stale_temps(out)
        write_json(out / "config.json", {**meta, "train_config": dataclasses.asdict(tcfg), "limit": limit})
        new_lr = any(split_pair(p, "--train")[0] == "lr" for p in trains)
        trainer = train_model(model, train_data, tcfg, out, "train", val=val_data, resume=resume, resume_lr=new_lr,
                              transform=transform)
        last = [r for r in trainer.history if r["kind"] == "epoch"]
        summary = {"formulation": name, "steps": trainer.step, "checkpoint": str(trainer.ckpt_path),
                   "train_seconds": trainer.train_seconds, "last_epoch": last[-1] if last else None}
        write_json(out / "summary.json", summary)
    return summary


def load_model(ckpt_path: str | Path, device: str = "cpu", ema: bool = True):
    """(name, config, model in eval mode) from any zoo checkpoint, EMA weights if present."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(ckpt_path, map_location=dev)
    try:
        name, cfg, model = rebuild(ckpt["meta"])
    except (UsageError, ValueError) as e:  # a foreign or stale config: the file's fault, not the command's
        raise CheckpointError(f"{ckpt_path} holds a config this zoo cannot build ({e})") from None
    weights = ckpt["ema"] if ema and isinstance(ckpt.get("ema"), dict) else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ZooError(f"{ckpt_path} does not match its own config ({str(e).splitlines()[0]})") from None
    return name, cfg, model.to(dev).eval()


@torch.no_grad()
def sample(ckpt_path: str | Path, n: int = 64, out: str | Path | None = None, device: str = "cpu",
           seed: int = 0, kwargs: dict[str, Any] | None = None) -> Path:
    """Draw n samples; writes OUT (.png picture) and OUT with suffix .pt (the tensor)."""
    check_n(n, "-n")
    if out is not None and not str(out).strip():
        raise UsageError("--out '' is empty; give a PNG path, e.g. --out samples.png")
    name, cfg, model = load_model(ckpt_path, device)
    kwargs = check_sampler_kwargs(model, cfg, kwargs or {})
    out = Path(out or Path(ckpt_path).with_name("samples.png"))
    _make_dir(out.parent, "--out")
    gen = torch.Generator(device=resolve_device(device)).manual_seed(seed)
    x = model.sample(n, generator=gen, **kwargs).cpu()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ZooError(f"the samples of {ckpt_path} hold NaN or inf (a diverged model?); nothing written")
    torch.save(x, out.with_suffix(".pt"))
    image = is_image(cfg.data)
    save_picture(to_unit(x, cfg.data) if image else x, out, image)
    return out


@torch.no_grad()
def evaluate(ckpt_path: str | Path, n_samples: int = 1000, n_test: int = 1000, device: str = "cpu",
             seed: int = 0, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`zoo.evaluation.evaluate` of a checkpoint: likelihood where defined, sample quality, NFE, time."""
    check_n(n_samples, "--n-samples")
    name, cfg, model = load_model(ckpt_path, device)
    kwargs = check_sampler_kwargs(model, cfg, kwargs or {})
    eval_cfg = EvalConfig(n_samples=n_samples, n_test=n_test, sample_chunk=eval_chunk(n_samples, model))
    res = evaluate_model(model, cfg.data, eval_cfg, seed=seed, sample_kw=kwargs,
                         num_classes=getattr(cfg, "num_classes", 0))
    return {"formulation": name, "checkpoint": str(ckpt_path), **res}


def eval_chunk(n: int, model: Any) -> int:
    """Samples per model.sample call of `zoo eval`: on the CPU about a tenth of n (at least 50), so the
    progress bar shows the time left after the first tenth (a chunk of 50 keeps a U-Net's CPU throughput);
    on a GPU, where a larger batch is faster, EvalConfig's default."""
    default = EvalConfig.sample_chunk
    if module_device(model).type != "cpu":
        return min(n, default)
    return min(n, default, max(50, math.ceil(n / 10)))


def check_n(n: int, option: str) -> None:
    """A sample count in 1..MAX_SAMPLES (usage error otherwise)."""
    if not 1 <= n <= MAX_SAMPLES:
        raise UsageError(f"{option} {n}: choose a number of samples in 1..{MAX_SAMPLES}")


def check_sampler_kwargs(model: Any, cfg: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`--kw` keywords checked before sampling: known to the model's sample(), finite, and in range.

    Keywords that are also fields of the formulation's Config (sampler, steps, eta, spacing, dt,
    ...) are checked by the Config itself (``dataclasses.replace`` runs its validation).
    """
    params = inspect.signature(model.sample).parameters
    valid = [k for k, p in params.items() if k not in NOT_FROM_CLI and p.kind is not p.VAR_KEYWORD]
    for key, value in kwargs.items():
        if key not in valid:
            raise UsageError(f"--kw {key}: not a sampler keyword of this model; valid: {', '.join(valid) or 'none'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--kw {key}={value}: must be a finite number")
        default = params[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UsageError(f"--kw {key}={value}: expected true or false")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"--kw {key}={value}: expected a number")
    fields = {f.name for f in dataclasses.fields(cfg)}
    as_config = {k: v for k, v in kwargs.items() if k in fields and v is not None}
    if as_config:
        try:
            dataclasses.replace(cfg, **as_config)
        except (ValueError, TypeError) as e:
            raise UsageError(f"--kw: {e}") from None
    return kwargs
