"""A network's inference forward as CUDA graphs, for samplers: the same network called T times.

``GraphedNet`` captures `net`'s forward once per input signature and replays it; ``graphed_network``
puts one in place of a formulation's network (``model.NETWORK``) for the length of a ``with`` block.
``zoo run NAME --cuda-graph`` samples every model this way (``zoo.evaluation.draw``), beside
train.cuda_graph's graphed training step. The capture is the Trainer's (``GRAPHS`` in
zoo/common/trainer.py), which the tests replace by a CPU emulation.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from zoo.common import trainer
from zoo.common.config import UsageError


def warm_and_capture(fn: Callable[[], Any], device: torch.device, warmup: int,
                     reset: Callable[[], None] = lambda: None) -> tuple[Callable[[], None], Any]:
    """(replay, fn's outputs): `warmup` eager calls of fn on a side stream (cuDNN's algorithm search,
    allocations, as torch.cuda.graph requires), then fn captured; `reset()` before each."""
    with trainer.GRAPHS.side_stream(device):
        for _ in range(warmup):
            reset()
            fn()
    reset()
    return trainer.GRAPHS.capture(fn, device)


def _signature(value: Any) -> Any:
    return (tuple(value.shape), value.dtype, value.device) if torch.is_tensor(value) else value


class GraphedNet(nn.Module):
    """Inference only: `net`'s forward captured once per input signature (the structure of its
    arguments, keyword names included; the shapes, dtypes and devices of its tensors; the values of the
    rest, None included) after one eager warm-up call, and replayed on static copies of the inputs.
    Outputs (a tensor, or a tuple or dict of them) are cloned, so a caller may keep them across calls.
    A new batch size is a new capture: a sampler's last, smaller chunk costs one more."""

    def __init__(self, net: nn.Module, device: torch.device):
        super().__init__()
        if not trainer.GRAPHS.supports(device):
            raise UsageError(f"a CUDA graph needs a CUDA device; this network is on {device}")
        self.net, self.device = net, device
        self.graphs: dict = {}

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        inputs = (args, dict(sorted(kwargs.items())))  # keywords in one order, whatever the caller's
        leaves, spec = tree_flatten(inputs)
        key = (repr(spec), tuple(_signature(a) for a in leaves))
        if key not in self.graphs:
            static = [a.clone() if torch.is_tensor(a) else a for a in leaves]
            call_args, call_kwargs = tree_unflatten(static, spec)
            replay, out = warm_and_capture(lambda: self.net(*call_args, **call_kwargs), self.device, warmup=1)
            self.graphs[key] = (static, replay, out)
        static, replay, out = self.graphs[key]
        for s, a in zip(static, leaves):
            if torch.is_tensor(a):
                s.copy_(a)
        replay()
        return tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, out)


@contextlib.contextmanager
def graphed_network(model: nn.Module, device: torch.device) -> Iterator[GraphedNet]:
    """Within the block, `model`'s network (``model.NETWORK``, default "net") is a GraphedNet of itself;
    afterwards the eager network is back and the graphs are freed."""
    name = getattr(model, "NETWORK", "net")
    eager = getattr(model, name)
    graphed = GraphedNet(eager, device)
    setattr(model, name, graphed)
    try:
        yield graphed
    finally:
        setattr(model, name, eager)
        graphed.graphs.clear()
