"""zoo.common.config: dotted --set overrides on nested frozen configs, config.json round trips, range checks."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from zoo.common.config import ConfigError, UsageError, apply_overrides, config_from_dict, parse_kwargs
from zoo.common.trainer import TrainConfig
from zoo.evaluation import EvalConfig
from zoo.gaussian.model import Config as GaussianConfig


@dataclass(frozen=True)
class Tree:
    model: GaussianConfig = GaussianConfig(channels=(8, 16))
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    n_train: int | None = 100


def test_dotted_overrides_are_typed():
    cfg = apply_overrides(Tree(), ["train.lr=1e-3", "model.channels=16,32", "eval.n_samples=100", "n_train=none",
                                   "model.rho_lr=0.5", "train.grad_clip=None", "train.amp=true"])
    assert cfg.train.lr == 1e-3 and cfg.model.channels == (16, 32) and cfg.eval.n_samples == 100
    assert cfg.n_train is None and cfg.model.rho_lr == 0.5 and cfg.train.grad_clip is None and cfg.train.amp is True
    assert Tree().train.lr == TrainConfig().lr  # the preset itself is untouched


def test_bare_keys_where_unambiguous_and_errors_list_choices():
    assert apply_overrides(Tree(), ["lr=0.5"]).train.lr == 0.5
    with pytest.raises(UsageError, match="steps: ambiguous; name one of model.steps, train.steps"):
        apply_overrides(Tree(), ["steps=3"])  # model.steps and train.steps
    with pytest.raises(UsageError, match=r"no such option; valid: .*train\.lr"):
        apply_overrides(Tree(), ["train.nope=1"])
    with pytest.raises(UsageError, match="expected float"):
        apply_overrides(Tree(), ["train.lr=fast"])
    with pytest.raises(UsageError, match="expected key=value"):
        apply_overrides(Tree(), ["train.lr"])


def test_config_json_round_trip():
    cfg = apply_overrides(Tree(), ["model.channels=4,8,16", "train.steps=7"])
    tree = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples become lists in JSON
    back = config_from_dict(Tree(), tree)
    assert back == cfg and isinstance(back.model.channels, tuple)
    with pytest.raises(UsageError, match="unknown keys"):
        config_from_dict(Tree(), {"nope": 1})


@pytest.mark.parametrize("kw, pattern", [
    (dict(batch_size=0), r"train.batch_size must be >= 1, got 0"),
    (dict(lr=float("nan")), r"train.lr must be a finite number > 0"),
    (dict(lr=-1.0), r"train.lr must be a finite number > 0"),
    (dict(ema_decay=1.0), r"train.ema_decay must be in \[0, 1\)"),
    (dict(grad_clip=0.0), r"train.grad_clip must be None or a finite number > 0"),
    (dict(log_every=0), r"train.log_every must be >= 1"),
    (dict(steps=0), r"train.steps must be None or >= 1"),
    (dict(lr_schedule="wavy"), r"choose from constant, step, cosine"),
    (dict(optimizer="lion"), r"choose from adam, adamw, sgd"),
])
def test_train_config_ranges(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**kw)


def test_eval_config_ranges_and_overrides_check_them():
    with pytest.raises(ConfigError, match="eval.n_samples must be >= 1"):
        EvalConfig(n_samples=0)
    with pytest.raises(ConfigError, match="train.batch_size must be >= 1"):
        apply_overrides(Tree(), ["train.batch_size=0"])


def test_step_budget_becomes_epochs():
    cfg = TrainConfig(steps=10, epochs=99)
    assert cfg.epochs_for(4) == 3 and cfg.total_steps(4) == 10  # 3 epochs of 4, stopped at 10
    assert TrainConfig(epochs=2).total_steps(4) == 8 and TrainConfig(epochs=2, max_steps=5).total_steps(4) == 5


def test_parse_kwargs_untyped():
    assert parse_kwargs(["a=1", "b=0.5", "c=ddim", "d=true", "e=none"]) == \
        {"a": 1, "b": 0.5, "c": "ddim", "d": True, "e": None}
