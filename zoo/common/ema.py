"""The exponential moving average of a model's weights (SPEC 8 and 11), and a context that lends them.

The Trainer keeps one EMA and updates it after every optimiser step; samples and likelihoods are
computed with the averaged weights (``Trainer.averaged()`` / ``averaged_model()``).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Update ``n`` (n = 0, 1, ...) moves the shadow towards the weights with the decay

        d_n = min(decay, (1 + n) / (10 + n))      with warm-up (SPEC 11; TensorFlow, flow_matching)
        d_n = decay                               without

    so that early in training the average forgets the random initial weights: with warm-up the
    initial weights keep the share prod_{m<n} d_m = 9! n! / (n + 9)! after n updates (< 1e-3 for
    n >= 100 at any decay), without it decay^n (14% after 2000 updates at 0.999). The update
    count ``n`` is part of the state, so a resumed run continues the same sequence.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """d_n for the next update, n = self.updates."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        floats, targets = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(self.shadow[k])
                targets.append(v)
            else:
                self.shadow[k].copy_(v)
        if floats:
            torch._foreach_lerp_(floats, targets, 1 - d)  # one fused launch for every tensor
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
        self.updates = int(updates)


class SwapWeights:
    """Context manager: `model` in eval mode holding `weights` inside (its own if None), restored after."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor] | None):
        self.model, self.weights, self.saved = model, weights, None

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        if self.weights is not None:
            self.saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.weights)
        return self.model

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.load_state_dict(self.saved)
        self.model.train(self.was_training)
        return False
