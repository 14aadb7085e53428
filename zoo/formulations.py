"""The formulations the CLI can train, sample and evaluate by name: the one name registry.

Each formulation module defines

- ``Config``: a frozen dataclass of the model's settings, with a field ``data`` naming one of
  ``zoo.common.data.DATASETS``;
- ``build(cfg) -> nn.Module``: the model implementing the trainer interface (zoo/common/trainer.py):
  ``loss(batch) -> dict``, ``sample(n, x_T=None, generator=None, **kw)`` in the data view,
  optional ``nll(batch) -> Tensor[B]`` in nats per example and ``elbo_terms(batch) -> dict``,
  and ``NETWORK``, the name of the submodule whose calls count as network evaluations (NFE).

Every checkpoint written through ``zoo.runs.train`` carries ``meta(model)`` =
``{"formulation": name, "config": asdict(cfg)}``, so ``zoo sample`` and ``zoo eval`` rebuild the
model from the file alone.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from zoo import ZooError
from zoo.common.config import config_from_dict
from zoo.common.data import DATASETS, load_dataset, to_unit  # noqa: F401  (re-exported)

FORMULATION_MODULES = {
    "gaussian": "zoo.gaussian.model",
    "binary": "zoo.binary.model",
    "absorbing": "zoo.binary.absorbing_model",
    "ve": "zoo.continuous_time.model",
    "vae": "zoo.vae.model",
}


def module(name: str):
    if name not in FORMULATION_MODULES:
        raise ZooError(f"unknown formulation {name!r}; choose from {', '.join(FORMULATION_MODULES)}")
    try:
        return importlib.import_module(FORMULATION_MODULES[name])
    except ModuleNotFoundError as e:
        raise ZooError(f"formulation {name!r} is not available in this version ({e})") from None


def name_of(model: Any) -> str:
    """The registry name of a formulation instance (by the module that defines its class)."""
    names = {path: name for name, path in FORMULATION_MODULES.items()}
    path = type(model).__module__
    if path not in names:
        raise ZooError(f"{type(model).__name__} is not a registered formulation; "
                       f"formulations: {', '.join(FORMULATION_MODULES)}")
    return names[path]


def build(cfg: Any):
    """The model of a formulation's Config, by the registered module whose ``Config`` it is (the class may
    be defined elsewhere, e.g. zoo.gaussian.config, and re-exported)."""
    for name in FORMULATION_MODULES:
        if module(name).Config is type(cfg):
            return module(name).build(cfg)
    raise ZooError(f"{type(cfg).__name__} is not the Config of a registered formulation; "
                   f"formulations: {', '.join(FORMULATION_MODULES)}")


def meta(model: Any) -> dict[str, Any]:
    """What a checkpoint carries to rebuild `model`: its formulation name and config."""
    return {"formulation": name_of(model), "config": dataclasses.asdict(model.cfg)}


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def rebuild(meta: dict[str, Any]):
    """(formulation name, config, model) from a checkpoint's meta."""
    name = meta.get("formulation")
    if name is None:
        raise ZooError("this checkpoint carries no formulation meta (it was not written by zoo.runs.train)")
    mod = module(name)
    cfg = config_from_dict(mod.Config(), meta.get("config", {}))
    return name, cfg, mod.build(cfg)
