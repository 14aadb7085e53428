"""What the commands of the `zoo` CLI share."""

from __future__ import annotations

import click


def check_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device
