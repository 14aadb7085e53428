"""The shipped MNIST classifier behind classifier FID and agreement (SPEC section 10).

A small CNN whose penultimate layer (``FEATURE_DIM`` = 128 units, after ReLU) gives the features
of classifier FID. One net serves grey and binarised models: it is trained on a mix of grey
images (``unit`` view, k/255 in [0, 1]), threshold-binarised images ({0, 1}, pixel > 0.5) and
stochastically binarised images ({0, 1}, pixel on with probability k/255), all after a light
random affine jitter (shifts of up to 2 pixels, small rotations and scalings).

Its weights ship in ``zoo/assets/classifier.pt`` (a dict of tensors, loaded with
``weights_only=True``) beside ``zoo/assets/classifier.json``, which records the file's SHA-256,
the command that trained it, the seed and the measured test accuracies. ``load_classifier``
refuses a file whose SHA-256 does not match. ``zoo classifier train`` rebuilds both files.

Inputs are always images in [0, 1] of shape (B, 1, 28, 28) (or (B, 784)).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo import ZooError
from zoo.common.utils import atomic_write_bytes, write_json

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_PATH = ASSETS / "classifier.pt"
INFO_PATH = ASSETS / "classifier.json"
SLICE_PATH = ASSETS / "mnist_test_slice.pt"  # the first 200 MNIST test images, for a self-check
FORMAT = "zoo-classifier-v1"
FEATURE_DIM = 128


class ClassifierError(ZooError):
    """The shipped classifier is missing, corrupt or does not match its recorded hash."""


# --------------------------------------------------------------------------- the network


class MnistCNN(nn.Module):
    """conv5(32)-pool-conv3(64)-pool-conv3(128)-global-avg-pool -> 128 features -> 10 logits.

    Input pixels in [0, 1] are centred to [-1, 1] inside, so callers pass the ``unit`` view.
    """

    def __init__(self, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Conv2d(64, feature_dim, 3, padding=1), nn.BatchNorm2d(feature_dim), nn.ReLU(),  # (B, F, 7, 7)
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_dim, 10))

    def features(self, x_unit: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, FEATURE_DIM) of images in [0, 1]."""
        x = x_unit.reshape(-1, 1, 28, 28) * 2 - 1  # (B, 1, 28, 28)
        return self.body(x).mean(dim=(2, 3))  # (B, F): global average pool

    def forward(self, x_unit: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10)."""
        return self.head(self.features(x_unit))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class AugmentConfig:
    shift: float = 2.0  # max translation in pixels
    rotate: float = 10.0  # max rotation in degrees
    scale: float = 0.1  # scale in [1 - scale, 1 + scale]
    p_threshold: float = 0.25  # share of images binarised at 0.5
    p_stochastic: float = 0.25  # share of images binarised with Bernoulli(pixel) coins


def jitter(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Random affine jitter (shift, rotation, scale) of images (B, 1, 28, 28) in [0, 1]."""
    b = len(x)
    angle = (torch.rand(b) * 2 - 1) * math.radians(cfg.rotate)
    scale = 1 + (torch.rand(b) * 2 - 1) * cfg.scale
    shift = (torch.rand(b, 2) * 2 - 1) * cfg.shift * 2 / 28  # pixels -> normalised coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mix_binarised(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Binarise a random share of images: at threshold 0.5 or with Bernoulli(pixel) coins."""
    u = torch.rand(len(x), 1, 1, 1, device=x.device)  # which view each image gets
    threshold = (x > 0.5).to(x.dtype)
    stochastic = (torch.rand_like(x) < x).to(x.dtype)
    x = torch.where(u < cfg.p_threshold, threshold, x)
    return torch.where((u >= cfg.p_threshold) & (u < cfg.p_threshold + cfg.p_stochastic), stochastic, x)


class ClassifierTask(nn.Module):
    """The classifier in the trainer interface: ``loss((x_unit, y))`` is the cross-entropy of
    jittered, partly binarised images (augmentation only in training mode)."""

    def __init__(self, net: MnistCNN, augment: AugmentConfig = AugmentConfig()):
        super().__init__()
        self.net, self.augment = net, augment

    def loss(self, batch):
        x, y = batch
        if self.training:
            x = mix_binarised(jitter(x, self.augment), self.augment)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "error": (logits.argmax(1) != y).float().mean()}


@torch.no_grad()
def accuracy(net: nn.Module, x_unit: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of images (in [0, 1]) whose argmax equals the label."""
    net.eval()
    hits = sum(int((net(x_unit[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x_unit), batch_size))
    return hits / len(x_unit)


def train_classifier(epochs: int = 6, seed: int = 0, batch_size: int = 128, lr: float = 3e-3,
                     warmup_steps: int = 100, out_dir: str | Path = ASSETS, command: str = "zoo classifier train",
                     limit: int | None = None, progress: bool | None = None) -> dict:
    """Train the classifier on MNIST train (50k, ``unit`` view) with the shared Trainer, measure
    its accuracy on the grey and the threshold-binarised test images, and write
    ``classifier.pt`` and ``classifier.json`` into `out_dir`. Returns the JSON record."""
    from zoo.common.data import load_mnist
    from zoo.common.trainer import TrainConfig, Trainer

    x, y = load_mnist("train", view="unit", limit=limit)
    x_test, y_test = load_mnist("test", view="unit")
    torch.manual_seed(seed)
    task = ClassifierTask(MnistCNN())
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=1e-4,
                      lr_schedule="cosine", warmup_steps=warmup_steps, grad_clip=None, seed=seed, val_every=0,
                      log_every=100, progress=progress)
    trainer = Trainer(task, (x, y), cfg, out_dir=None, tag="classifier")
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    net = task.net.eval()
    acc_grey = accuracy(net, x_test, y_test)
    acc_binary = accuracy(net, (x_test > 0.5).float(), y_test)
    state = {"format": FORMAT, "feature_dim": FEATURE_DIM,
             "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()}}
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "classifier.pt", lambda f: f.write(raw))
    info = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "command": command,
        "seed": seed,
        "epochs": epochs,
        "train_data": f"MNIST train ({len(x)} images, unit view) with affine jitter and binarised mix",
        "augment": asdict(task.augment),
        "train_config": asdict(cfg),
        "train_seconds": round(seconds, 1),
        "feature_dim": FEATURE_DIM,
        "test_accuracy_grey": acc_grey,
        "test_accuracy_binarised": acc_binary,
        "torch": torch.__version__,
    }
    write_json(out_dir / "classifier.json", info)
    return info


# --------------------------------------------------------------------------- loading


def classifier_hash(info_path: str | Path = INFO_PATH) -> str:
    """The SHA-256 recorded for the shipped weights."""
    try:
        return json.loads(Path(info_path).read_text())["sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise ClassifierError(f"classifier record {info_path} is missing or unreadable ({e}); "
                              f"reinstall zoo or run `zoo classifier train`") from None


def load_classifier(weights_path: str | Path = WEIGHTS_PATH, info_path: str | Path = INFO_PATH) -> MnistCNN:
    """The shipped classifier in eval mode, after checking the file's SHA-256 against the record."""
    weights_path = Path(weights_path)
    expected = classifier_hash(info_path)
    try:
        raw = weights_path.read_bytes()
    except OSError as e:
        raise ClassifierError(f"classifier weights {weights_path} are missing ({e.strerror}); "
                              f"reinstall zoo or run `zoo classifier train`") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected:
        raise ClassifierError(f"classifier weights {weights_path} have SHA-256 {digest[:12]}..., expected "
                              f"{expected[:12]}... (corrupt or modified); reinstall zoo or run `zoo classifier train`")
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ClassifierError(f"{weights_path} is not a zoo classifier (no '{FORMAT}' marker)")
    net = MnistCNN(int(state["feature_dim"]))
    try:
        net.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ClassifierError(f"{weights_path} does not fit this version's classifier ({first}); "
                              f"run `zoo classifier train`") from None
    return net.eval()


@functools.lru_cache(maxsize=2)
def _cached(weights_path: str, info_path: str, mtime: float) -> MnistCNN:
    return load_classifier(weights_path, info_path)


def shipped_classifier() -> MnistCNN:
    """The shipped classifier, loaded once per process (reloaded if the file changes)."""
    try:
        mtime = WEIGHTS_PATH.stat().st_mtime
    except OSError:
        mtime = -1.0
    return _cached(str(WEIGHTS_PATH), str(INFO_PATH), mtime)


def test_slice() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 MNIST test images in [0, 1] (200, 1, 28, 28) and their labels, shipped so the
    classifier can be checked on real digits on a machine without the MNIST cache."""
    state = torch.load(SLICE_PATH, map_location="cpu", weights_only=True)
    return state["images"].float() / 255, state["labels"].long()
