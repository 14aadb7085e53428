"""`zoo train`, `zoo sample` and `zoo eval`: work outside the named experiments.

``train`` builds a formulation from its Config (``--set``) and trains it through ``zoo.runs.train``
(``--train`` sets TrainConfig fields); every checkpoint carries the formulation name and config,
so ``sample`` and ``eval`` rebuild the model from the file alone, whoever wrote it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo import ZooError
from zoo.common.config import apply_overrides, parse_kwargs  # noqa: F401  (parse_kwargs re-exported)
from zoo.common.data import is_image, load_dataset, to_unit, training_set
from zoo.common.plotting import save_picture
from zoo.common.trainer import TrainConfig, load_checkpoint
from zoo.common.utils import resolve_device, write_json
from zoo.evaluation import EvalConfig, evaluate as evaluate_model
from zoo.formulations import module, rebuild
from zoo.runs import train as train_model


def train(name: str, sets: Sequence[str] = (), trains: Sequence[str] = (), out_dir: str | Path | None = None,
          device: str = "cpu", seed: int = 0, limit: int | None = None, resume: bool = False) -> dict[str, Any]:
    """Train formulation `name`; returns a summary (also written to OUT/summary.json)."""
    mod = module(name)
    cfg = apply_overrides(mod.Config(), sets)
    tcfg = apply_overrides(TrainConfig(device=device, seed=seed), trains)
    out = Path(out_dir or f"runs/train-{name}")
    train_data, transform = training_set(cfg.data, limit=limit, seed=seed)  # transform: dynamic binarisation
    val_limit = min(limit, 2000) if limit else 2000
    val_data = load_dataset(cfg.data, "valid" if is_image(cfg.data) else "test", limit=val_limit, seed=seed)
    torch.manual_seed(seed)
    model = mod.build(cfg)
    write_json(out / "config.json", {"formulation": name, "config": dataclasses.asdict(cfg),
                                     "train_config": dataclasses.asdict(tcfg), "limit": limit})
    trainer = train_model(model, train_data, tcfg, out, "train", val=val_data, resume=resume, transform=transform)
    last = [r for r in trainer.history if r["kind"] == "epoch"]
    summary = {"formulation": name, "steps": trainer.step, "checkpoint": str(trainer.ckpt_path),
               "train_seconds": trainer.train_seconds, "last_epoch": last[-1] if last else None}
    write_json(out / "summary.json", summary)
    return summary


def load_model(ckpt_path: str | Path, device: str = "cpu", ema: bool = True):
    """(name, config, model in eval mode) from any zoo checkpoint, EMA weights if present."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(ckpt_path, map_location=dev)
    name, cfg, model = rebuild(ckpt.get("meta", {}))
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ZooError(f"{ckpt_path} does not match its own config ({str(e).splitlines()[0]})") from None
    return name, cfg, model.to(dev).eval()


@torch.no_grad()
def sample(ckpt_path: str | Path, n: int = 64, out: str | Path | None = None, device: str = "cpu",
           seed: int = 0, kwargs: dict[str, Any] | None = None) -> Path:
    """Draw n samples; writes OUT (.png picture) and OUT with suffix .pt (the tensor)."""
    name, cfg, model = load_model(ckpt_path, device)
    gen = torch.Generator(device=resolve_device(device)).manual_seed(seed)
    x = model.sample(n, generator=gen, **(kwargs or {})).cpu()
    out = Path(out or Path(ckpt_path).with_name("samples.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x, out.with_suffix(".pt"))
    image = is_image(cfg.data)
    save_picture(to_unit(x, cfg.data) if image else x, out, image)
    return out


@torch.no_grad()
def evaluate(ckpt_path: str | Path, n_samples: int = 1000, n_test: int = 1000, device: str = "cpu",
             seed: int = 0, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`zoo.evaluation.evaluate` of a checkpoint: likelihood where defined, sample quality, NFE, time."""
    name, cfg, model = load_model(ckpt_path, device)
    eval_cfg = EvalConfig(n_samples=n_samples, n_test=n_test, sample_chunk=n_samples)
    res = evaluate_model(model, cfg.data, eval_cfg, seed=seed, sample_kw=kwargs,
                         num_classes=getattr(cfg, "num_classes", 0))
    return {"formulation": name, "checkpoint": str(ckpt_path), **res}
