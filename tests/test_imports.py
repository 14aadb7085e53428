"""Dependencies point inward (STYLE 11): experiments -> zoo formulations -> zoo/common.

Parsed with `ast`, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

ZOO = Path(__file__).resolve().parents[1] / "zoo"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(sub: str = ""):
    return sorted((ZOO / sub).rglob("*.py"))


def test_only_the_cli_imports_experiments():
    offenders = [str(p.relative_to(ZOO.parent)) for p in _modules() if p.relative_to(ZOO).parts[0] != "cli"
                 if any(n == "experiments" or n.startswith("experiments.") for n in _imports(p))]
    assert offenders == []


def test_common_imports_nothing_above_it():
    for path in _modules("common"):
        above = {n for n in _imports(path) if n.startswith("zoo.") and not n.startswith("zoo.common")}
        assert above == set(), path


def test_formulations_import_only_common_and_their_own_package():
    for pkg in ("gaussian", "binary", "continuous_time", "vae"):
        for path in _modules(pkg):
            other = {n for n in _imports(path) if n.startswith("zoo.")
                     and not n.startswith(("zoo.common", f"zoo.{pkg}"))}
            assert other == set(), path


def test_the_parser_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from experiments.registry import REGISTRY\n")
    assert "experiments.registry" in _imports(f)


def test_trainer_re_exports_its_parts():
    """SPEC 8 names zoo/common/trainer.py; code outside the package imports the moved names from there."""
    import zoo.common.checkpoint as checkpoint
    import zoo.common.ema as ema
    import zoo.common.train_config as train_config
    import zoo.common.trainer as trainer

    homes = {name: mod for mod in (checkpoint, ema, train_config) for name in dir(mod) if name in trainer.__all__}
    assert set(homes) | {"NonFiniteLoss", "Trainer"} == set(trainer.__all__)
    assert all(getattr(trainer, name) is getattr(mod, name) for name, mod in homes.items())


def test_every_formulation_config_builds_its_model_by_registry():
    """zoo.formulations.build finds a Config's formulation by class, wherever the class is defined."""
    from zoo.formulations import FORMULATION_MODULES, build, module, name_of

    for name in FORMULATION_MODULES:
        assert name_of(build(module(name).Config())) == name
