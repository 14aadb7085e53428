"""The one training helper: every experiment and `zoo train` train a formulation through it.

``train(model, data, train_cfg, out_dir, tag)`` builds the shared Trainer (SPEC 8) with the
formulation meta (``zoo.formulations.meta``: its name and config) so that every checkpoint it
writes can be rebuilt by ``zoo sample`` / ``zoo eval``; a step budget (``TrainConfig.steps``) is
turned into epochs by the Trainer itself. Helpers read curves back from the trainer's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.common.trainer import NonFiniteLoss, TrainConfig, Trainer
from zoo.formulations import meta as formulation_meta


def train(model: nn.Module, data: tuple[torch.Tensor, ...], train_cfg: TrainConfig,
          out_dir: str | Path | None = None, tag: str = "train", meta: dict[str, Any] | None = None,
          val: tuple[torch.Tensor, ...] | None = None, guarded: bool = False, resume: bool = False,
          resume_lr: bool = False, transform: Callable | None = None) -> Trainer:
    """Train `model` into OUT_DIR/TAG.ckpt (log lines tagged TAG); returns the Trainer.

    `meta` is added to the formulation meta. With `guarded`, a loss turning NaN/inf ends this
    model's run, not the caller's: ``trainer.error`` holds the message (None when it finished).
    `resume` continues from OUT_DIR/TAG.ckpt if it exists; with `resume_lr` train_cfg.lr replaces
    the checkpoint's learning rate (Trainer.resume's `new_lr`). `transform(batch, epoch, index)` is the
    Trainer's batch transform (``zoo.common.data.training_set`` gives it for the dynamic binarisation).
    """
    trainer = Trainer(model, data, train_cfg, out_dir=out_dir, val_data=val, tag=tag,
                      meta={**formulation_meta(model), **(meta or {})}, transform=transform)
    if resume and trainer.ckpt_path is not None and trainer.ckpt_path.exists():
        trainer.resume(new_lr=resume_lr)
    trainer.error = None
    try:
        trainer.fit()
    except NonFiniteLoss as e:
        if not guarded:
            raise
        trainer.error = str(e)
    return trainer


def epoch_curve(trainer: Trainer, key: str) -> list[float]:
    """The per-epoch values of `key` (e.g. train_loss, val_loss) from a trainer's log."""
    return [r[key] for r in trainer.history if r["kind"] == "epoch" and key in r]


def step_curve(trainer: Trainer, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` from a trainer's per-step log lines."""
    rows = [r for r in trainer.history if r["kind"] == "step" and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def remove_checkpoints(out_dir: str | Path) -> None:
    """Delete the *.ckpt files of a run directory (results are committed without weights)."""
    for path in Path(out_dir).glob("*.ckpt"):
        path.unlink()
