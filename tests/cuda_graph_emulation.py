"""CUDA graph semantics on the CPU, at the level of aten ops, for tests of code that captures graphs
(`GRAPHS` in zoo/common/trainer.py: train.cuda_graph and `zoo bench unet --variants cuda-graph`).

A capture records every aten op the function runs, with the tensors it reads and writes and its
Python scalars frozen, then undoes its writes and its random draws: capturing runs nothing, as on
CUDA. A replay runs the recorded ops again on the same tensors, each result written into the tensor
the op produced at the capture, drawing fresh random numbers from the default generator, as a CUDA
graph advances its generator's offset. A host sync inside a capture raises, as it does on CUDA.
Streams, the graph's memory pool and cuDNN's own limits are CUDA's and are not modelled: the real
graphs are tested by the same tests on a GPU (`pytest -k cuda`).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
HOST_SYNCS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.nonzero.default}


class _Recorder(TorchDispatchMode):
    """Runs and records each aten op; saves every tensor an op writes before its first write."""

    def __init__(self):
        super().__init__()
        self.ops, self.saved = [], {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_SYNCS:
            raise RuntimeError(f"operation not permitted when stream is capturing ({func} waits for the device)")
        values = dict(zip([a.name for a in func._schema.arguments], args), **kwargs)
        for arg in func._schema.arguments:
            if arg.alias_info is not None and arg.alias_info.is_write:
                written = values.get(arg.name)
                for t in written if isinstance(written, (list, tuple)) else [written]:
                    if torch.is_tensor(t) and id(t) not in self.saved:
                        self.saved[id(t)] = (t, t.detach().clone())
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _write_into(recorded, fresh) -> None:
    if isinstance(recorded, (list, tuple)):
        for r, f in zip(recorded, fresh):
            _write_into(r, f)
    elif torch.is_tensor(recorded) and torch.is_tensor(fresh) and recorded.data_ptr() != fresh.data_ptr():
        recorded.copy_(fresh)


class EmulatedGraphs:
    """Stands in for zoo.common.trainer.CudaGraphs on the CPU (see the module docstring)."""

    @staticmethod
    def supports(device: torch.device) -> bool:
        return device.type == "cpu"

    @staticmethod
    def side_stream(device: torch.device):
        return contextlib.nullcontext()

    @staticmethod
    def capture(fn, device: torch.device):
        rng = torch.get_rng_state()
        recorder = _Recorder()
        try:
            with recorder:
                out = fn()
        finally:
            with torch.no_grad():  # a capture runs nothing, failed or not: undo its writes and random draws
                for t, before in recorder.saved.values():
                    t.copy_(before)
            torch.set_rng_state(rng)

        @torch.no_grad()
        def replay():
            for func, args, kwargs, recorded in recorder.ops:
                _write_into(recorded, func(*args, **kwargs))

        return replay, out
