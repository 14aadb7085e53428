"""The named experiments of SPEC section 5. Each module registers itself on import."""

import importlib
import pkgutil

from experiments.registry import REGISTRY, experiment, get, run_experiment  # noqa: F401

_HELPERS = {"registry", "plotting"}

for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _mod.name not in _HELPERS and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
