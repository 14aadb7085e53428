"""`zoo train`, `zoo sample` and `zoo eval`: work outside the named experiments.

``train`` builds a formulation from its Config (``--set``) and trains it through the shared
Trainer (``--train`` sets TrainConfig fields); its checkpoint carries the formulation name and
config, so ``sample`` and ``eval`` rebuild the model from the file alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo import ZooError
from zoo.common.trainer import TrainConfig, Trainer, load_checkpoint
from zoo.common.utils import resolve_device, write_json
from zoo.formulations import DATASETS, load_dataset, module, rebuild, to_unit


def parse_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs -> kwargs, values read as int, float, bool, None or str."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ZooError(f"{pair!r}: expected key=value")
        k, v = pair.split("=", 1)
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        elif low == "none":
            out[k] = None
        else:
            for cast in (int, float):
                try:
                    out[k] = cast(v)
                    break
                except ValueError:
                    continue
            else:
                out[k] = v
    return out


def train(name: str, sets: Sequence[str] = (), trains: Sequence[str] = (), out_dir: str | Path | None = None,
          device: str = "cpu", seed: int = 0, limit: int | None = None, resume: bool = False) -> dict[str, Any]:
    """Train formulation `name`; returns a summary (also written to OUT/summary.json)."""
    from experiments.registry import apply_overrides

    mod = module(name)
    cfg = apply_overrides(mod.Config(), sets)
    tcfg = apply_overrides(TrainConfig(device=device, seed=seed), trains)
    out = Path(out_dir or f"runs/train-{name}")
    train_data = load_dataset(cfg.data, "train", limit=limit, seed=seed)
    val_limit = min(limit, 2000) if limit else 2000
    val_data = load_dataset(cfg.data, "valid" if DATASETS[cfg.data][0] == "mnist" else "test", limit=val_limit,
                            seed=seed)
    torch.manual_seed(seed)
    model = mod.build(cfg)
    meta = {"formulation": name, "config": dataclasses.asdict(cfg)}
    trainer = Trainer(model, train_data, tcfg, out_dir=out, val_data=val_data, meta=meta)
    if resume and trainer.ckpt_path.exists():
        trainer.resume()
    write_json(out / "config.json", {"formulation": name, "config": meta["config"],
                                     "train_config": dataclasses.asdict(tcfg), "limit": limit})
    trainer.fit()
    last = [r for r in trainer.history if r["kind"] == "epoch"]
    summary = {"formulation": name, "steps": trainer.step, "checkpoint": str(trainer.ckpt_path),
               "train_seconds": trainer.train_seconds, "last_epoch": last[-1] if last else None}
    write_json(out / "summary.json", summary)
    return summary


def load_model(ckpt_path: str | Path, device: str = "cpu", ema: bool = True):
    """(name, config, model in eval mode) from a `zoo train` checkpoint, EMA weights if present."""
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
    _picture(x, cfg.data, out)
    return out


def _picture(x: torch.Tensor, dataset: str, out: Path) -> None:
    from experiments.plotting import image_grid, plt

    if DATASETS[dataset][0] == "mnist":
        grid = image_grid(to_unit(x, dataset), nrow=int(math.ceil(math.sqrt(len(x)))))
        plt.imsave(out, grid, cmap="gray", vmin=0, vmax=1)
    else:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0], x[:, 1], s=3)
        ax.set_aspect("equal")
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)


@torch.no_grad()
def evaluate(ckpt_path: str | Path, n_samples: int = 1000, n_test: int = 1000, device: str = "cpu",
             seed: int = 0, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Likelihood on test data (where the model defines nll) and sample quality (FID for MNIST,
    sliced Wasserstein distance for 2-D data), with the sampling time."""
    from zoo.common.metrics import agreement, nats_to_bpd, sample_metrics, sliced_wasserstein

    name, cfg, model = load_model(ckpt_path, device)
    dev = resolve_device(device)
    result: dict[str, Any] = {"formulation": name, "checkpoint": str(ckpt_path)}
    test = load_dataset(cfg.data, "test", limit=n_test, seed=seed)
    if hasattr(model, "nll"):
        torch.manual_seed(seed)
        nll = torch.cat([model.nll(tuple(d[i:i + 250].to(dev) for d in test)).cpu()
                         for i in range(0, len(test[0]), 250)])
        dims = test[0][0].numel()
        result.update(nll_nats=nll.mean().item(), bits_per_dim=nats_to_bpd(nll.mean().item(), dims),
                      n_test=len(nll))
    gen = torch.Generator(device=dev).manual_seed(seed)
    kwargs = dict(kwargs or {})
    num_classes = getattr(cfg, "num_classes", 0)
    if num_classes:  # a class-conditional model: ask for every class in turn and check agreement
        kwargs.setdefault("labels", torch.arange(n_samples) % num_classes)
    t0 = time.perf_counter()
    x = model.sample(n_samples, generator=gen, **kwargs).cpu()
    result["sample_seconds_per_1000"] = (time.perf_counter() - t0) * 1000 / n_samples
    if DATASETS[cfg.data][0] == "mnist":
        binarised = DATASETS[cfg.data][1].startswith("binary")
        result.update(sample_metrics(to_unit(x, cfg.data), binarised=binarised))
        if num_classes:
            result["agreement"] = agreement(to_unit(x, cfg.data), kwargs["labels"])
    else:
        result["sliced_wasserstein"] = sliced_wasserstein(x, test[0])
    return result

