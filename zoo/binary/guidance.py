"""Classifier-free guidance for the discrete formulations, bit-flip and absorbing (SPEC 11).

A class-conditional network is called as ``fn(x_t, t, y)`` with integer labels ``y`` (B,), the
value ``num_classes`` being the null class that label dropout trains. Guidance acts on the
per-pixel logits the network outputs, before any sigmoid or posterior is formed:

    l_w = (1 - w) l(x_t, null) + w l(x_t, y)

(the Gaussian convention of SPEC 1: ``w = 0`` unconditional, ``w = 1`` conditional, ``w > 1``
amplified). For an x0-predicting model these are the x0 logits; for bit-flip's ``posterior``
parameterisation, the logits of ``Q_t``.
"""

from __future__ import annotations

from typing import Callable

import torch

from zoo.binary.schedules import ConfigError

ConditionalFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_logits(l_null: torch.Tensor, l_y: torch.Tensor, w: float) -> torch.Tensor:
    """l_w = (1 - w) l(x_t, null) + w l(x_t, y) (SPEC 11, guidance in discrete diffusion)."""
    return (1 - w) * l_null + w * l_y


def guided(fn: ConditionalFn, labels: torch.Tensor, w: float, null: int) -> LogitsFn:
    """The guided logits function (x_t, t) -> l_w; both evaluations go through `fn` as one batch."""

    def logits_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        y = torch.cat([torch.full_like(labels, null), labels])  # (2B,)
        out = fn(torch.cat([x_t, x_t]), torch.cat([t, t]), y)  # (2B, ...)
        return guided_logits(out[:n], out[n:], w)

    return logits_fn


def null_labels(n: int, num_classes: int, device) -> torch.Tensor:
    """n copies of the null class (index num_classes)."""
    return torch.full((n,), num_classes, dtype=torch.long, device=device)


def drop_labels(y: torch.Tensor, p: float, num_classes: int) -> torch.Tensor:
    """Label dropout for classifier-free guidance training: each label becomes null with probability p."""
    drop = torch.rand(y.shape, device=y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def training_labels(batch: tuple[torch.Tensor, ...], num_classes: int, label_dropout: float) -> torch.Tensor | None:
    """The labels a conditional model trains on: the batch's second tensor (null if it has none)
    after label dropout; None for an unconditional model (num_classes = 0)."""
    if not num_classes:
        return None
    x0 = batch[0]
    y = batch[1] if len(batch) > 1 else null_labels(x0.shape[0], num_classes, x0.device)
    return drop_labels(y.to(x0.device), label_dropout, num_classes)


def logits_for(fn: ConditionalFn, num_classes: int, labels: torch.Tensor | None = None, w: float = 1.0) -> LogitsFn:
    """The (x_t, t) -> logits function a sampler or the ELBO uses: unconditional (num_classes = 0),
    the null class (a conditional model without labels), or guided towards `labels` with weight w."""
    if not num_classes:
        if labels is not None:
            raise ConfigError("labels were given but this model is unconditional (num_classes = 0)")
        return lambda x_t, t: fn(x_t, t, None)
    if labels is None:
        return lambda x_t, t: fn(x_t, t, null_labels(x_t.shape[0], num_classes, x_t.device))
    return guided(fn, labels, w, num_classes)
