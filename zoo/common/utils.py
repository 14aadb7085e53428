"""Small helpers shared by every formulation: broadcasting, seeding, atomic files."""

from __future__ import annotations

import itertools
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so `x` (e.g. shape (B,)) broadcasts against an ndim tensor."""
    if x.ndim > ndim:
        raise ValueError(f"input has {x.ndim} dims but target ndim is {ndim}")
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))


# --------------------------------------------------------------------------- devices


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def step_tensor(t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    """Step(s) t as a long tensor of shape (B,) on x's device (a 0-d tensor is broadcast). An int is filled
    on the device: torch.as_tensor(int, device=cuda) copies from the host and waits for the GPU."""
    if isinstance(t, int):
        return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    t = torch.as_tensor(t, device=x.device).long()
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def to_device(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every tensor of a batch on `device` (a no-op for those already there)."""
    return tuple(b.to(device) for b in batch)


def _draw(fn, shape, generator, device, **kw) -> torch.Tensor:
    # Drawn on the generator's device, then moved: a seeded CPU generator gives the same numbers on any device.
    # Host noise for a CUDA tensor goes through pinned memory, so the copy does not wait for the GPU.
    where = generator.device if generator is not None else device
    to_cuda = generator is not None and where.type == "cpu" and device is not None and torch.device(device).type == "cuda"
    return fn(tuple(shape), generator=generator, device=where, pin_memory=to_cuda, **kw).to(device, non_blocking=to_cuda)


def randn(shape, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise of `shape` on `device`, from `generator` wherever that lives."""
    return _draw(torch.randn, shape, generator, device, dtype=dtype)


def rand(shape, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uniform [0, 1) noise of `shape` on `device`, from `generator` wherever that lives."""
    return _draw(torch.rand, shape, generator, device, dtype=dtype)


def randint(low: int, high: int, shape, generator: torch.Generator | None = None,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Integers in [low, high) of `shape` on `device`, from `generator` wherever that lives."""
    return _draw(lambda size, **kw: torch.randint(low, high, size, **kw), shape, generator, device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain tensors / ints, loadable with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
        "python": _listify(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`. The states may come back on another device (a checkpoint loaded with
    map_location="cuda" moves them there): torch takes them as CPU byte tensors only."""
    torch.set_rng_state(state["torch"].cpu())
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _listify(obj):
    return [_listify(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _tuplify(obj):
    return tuple(_tuplify(o) for o in obj) if isinstance(obj, (tuple, list)) else obj


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file_object)` on a temp file beside `path`, then rename it over `path`.

    A crash or an exception leaves no partial file at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' -> torch.device; asking for CUDA without a GPU is a ZooError."""
    from zoo import ZooError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(device)
