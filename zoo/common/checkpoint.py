"""Checkpoint files and run directories: the format, a schema-checked loader, and the run lock.

A checkpoint is one ``torch.save`` dict marked ``format: zoo-checkpoint-v1``, written atomically
(temp file + rename) by ``Trainer.save``. ``load_checkpoint`` reads it with ``weights_only=True``
and checks its schema, so a truncated, foreign or incomplete file is a one-line CheckpointError,
never a traceback. ``RunLock`` keeps one writer per run directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import torch

from zoo import ZooError

CHECKPOINT_FORMAT = "zoo-checkpoint-v1"
# Keys every checkpoint holds (load_checkpoint), and those resume needs on top.
CHECKPOINT_KEYS = ("model_class", "meta", "model")
RESUME_KEYS = ("optimizer", "scheduler", "step", "rng")


class CheckpointError(ZooError):
    """A checkpoint that is missing, truncated, foreign or for another model."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a zoo checkpoint with ``weights_only=True``; anything else is a one-line CheckpointError.

    The schema is checked before use: CHECKPOINT_KEYS and `required` must be present (the
    message names the missing ones), ``model`` and ``meta`` must be dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists() else
                              f"checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with foreign globals, plain garbage ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path} is not a readable zoo checkpoint (truncated or foreign: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a zoo checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    missing = [k for k in (*CHECKPOINT_KEYS, *required) if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)} (not written by this zoo, "
                              f"or damaged)")
    for key in ("model", "meta"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path} is damaged: {key!r} is a {type(ckpt[key]).__name__}, not a dict")
    return ckpt


def _plain(value: Any) -> Any:
    """Lists and tuples alike (config.json stores tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_same_model(path: str | Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """CheckpointError unless checkpoint meta `saved` holds the formulation and model config of `current`."""
    if "formulation" in saved and "formulation" in current and saved["formulation"] != current["formulation"]:
        raise CheckpointError(f"{path} holds a {saved['formulation']!r} model, not {current['formulation']!r}; "
                              f"use another --out or remove the checkpoint")
    a, b = _plain(saved.get("config")), _plain(current.get("config"))
    if isinstance(a, dict) and isinstance(b, dict) and a != b:
        diff = [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise CheckpointError(f"{path} was trained with another model config ({'; '.join(diff)}); "
                              f"resume with the same --set values or use another --out")


def remove_stale_temps(out_dir: str | Path) -> list[Path]:
    """Delete the temp files (``.NAME.ckpt.*.tmp``) a killed checkpoint write left in `out_dir`.

    Call it only while holding the RunLock: another writer's temp file is not stale.
    """
    stale = sorted(Path(out_dir).glob(".*.ckpt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunDirBusy(ZooError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive ``fcntl.flock`` on OUT/.lock for the life of a run (one writer per run directory).

    The file holds the owner's pid; a second writer gets a one-line RunDirBusy naming it. The
    kernel drops the lock when the process dies (SIGKILL included), so a stale file never blocks.
    Under torchrun only rank 0 takes it, for the whole job: the other ranks share its directory.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if int(os.environ.get("RANK", "0")) > 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(f"{self.path.parent} is in use by another zoo process (pid {holder}); "
                             f"wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
