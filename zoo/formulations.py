"""The formulations the CLI can train, sample and evaluate by name.

Each formulation module defines

- ``Config``: a frozen dataclass of the model's settings, with a field ``data`` naming one of
  ``DATASETS`` below;
- ``build(cfg) -> nn.Module``: the model implementing the trainer interface (zoo/common/trainer.py):
  ``loss(batch) -> dict``, ``sample(n, generator=None, **kw)`` in the data view, optional
  ``nll(batch) -> Tensor[B]`` in nats per example.

Checkpoints written by ``zoo train`` carry ``meta = {"formulation": name, "config": asdict(cfg)}``
so ``zoo sample`` and ``zoo eval`` can rebuild the model from the file alone.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch

from zoo import ZooError

FORMULATION_MODULES = {
    "gaussian": "zoo.gaussian.model",
    "binary": "zoo.binary.model",
    "absorbing": "zoo.binary.absorbing_model",
    "ve": "zoo.continuous_time.model",
    "vae": "zoo.vae.model",
}

# name -> (loader kind, view)
DATASETS = {
    "mnist-grey": ("mnist", "grey"),
    "mnist-unit": ("mnist", "unit"),
    "mnist-binary": ("mnist", "binary"),
    "mnist-binary-stochastic": ("mnist", "binary-stochastic"),
    "swiss-roll": ("toy", "swiss_roll"),
    "spiral": ("toy", "spiral"),
}


def module(name: str):
    if name not in FORMULATION_MODULES:
        raise ZooError(f"unknown formulation {name!r}; choose from {', '.join(FORMULATION_MODULES)}")
    try:
        return importlib.import_module(FORMULATION_MODULES[name])
    except ModuleNotFoundError as e:
        raise ZooError(f"formulation {name!r} is not available in this version ({e})") from None


def load_dataset(name: str, split: str = "train", limit: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x, y) of a dataset by name; toys have no labels and draw train/test with different seeds."""
    if name not in DATASETS:
        raise ZooError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    kind, view = DATASETS[name]
    if kind == "mnist":
        from zoo.common.data import load_mnist

        return load_mnist(split, view=view, limit=limit, seed=seed)
    from zoo.common import data

    n = limit or (10000 if split.startswith("train") else 2000)
    split_seed = seed * 2 + (0 if split.startswith("train") else 1)
    return (data.swiss_roll(n, seed=split_seed) if view == "swiss_roll" else data.spiral(n, seed=split_seed),)


def to_unit(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """Map samples from a dataset's view to [0, 1] pixels (for FID and pictures)."""
    view = DATASETS[dataset][1]
    if view in ("grey", "binary", "binary-stochastic"):
        return ((x + 1) / 2).clamp(0, 1)
    return x.clamp(0, 1)


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def rebuild(meta: dict[str, Any]):
    """(formulation name, config, model) from a checkpoint's meta."""
    from experiments.registry import config_from_dict

    name = meta.get("formulation")
    if name is None:
        raise ZooError("this checkpoint was not written by `zoo train` (no formulation in its meta)")
    mod = module(name)
    cfg = config_from_dict(mod.Config(), meta.get("config", {}))
    return name, cfg, mod.build(cfg)
