"""Networks shared by every formulation. They never import a process.

Every network is called as ``net(x, t, y=None)``: ``x`` the noisy input, ``t`` a float tensor (B,)
holding the time scaled to [0, 1] (the formulation divides its step index by T), ``y`` optional
integer class labels (B,) where the value ``num_classes`` is the null class of classifier-free
guidance. The output has the shape of ``x``.

- ``UNet``: a time-conditioned residual U-Net for 28x28 with configurable channel widths.
- ``ScoreNet``: the seed network of ``001_...`` (four stride-2 conv levels, Gaussian-Fourier
  time features added as a channel bias before each GroupNorm), used by the width sweep and the
  parameterisation experiment.
- ``MLP``: for 2-D data, ``t`` concatenated to the input (seed ``002_...``) or embedded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal features of ``t * scale`` (Ho et al. use the step index 0..1000)."""

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = (t.float() * self.scale)[:, None] * freqs[None]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=1)


class GaussianFourierProjection(nn.Module):
    """Fixed random Fourier features of t (Tancik et al.; the seed's time embedding)."""

    def __init__(self, dim: int, scale: float = 30.0):
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = t.float()[:, None] * self.W[None] * 2 * math.pi  # (B, dim/2)
        return torch.cat([proj.sin(), proj.cos()], dim=1)


def time_embedding(kind: str, dim: int) -> nn.Module:
    kinds = {"sinusoidal": SinusoidalEmbedding, "fourier": GaussianFourierProjection}
    if kind not in kinds:
        raise ValueError(f"unknown time embedding {kind!r}; choose from {', '.join(kinds)}")
    return kinds[kind](dim)


# --------------------------------------------------------------------------- U-Net


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1
    embed: str = "sinusoidal"  # or "fourier"
    embed_dim: int = 128
    num_classes: int = 0  # > 0 adds a class embedding with a null class at index num_classes
    in_channels: int = 1
    out_channels: int = 1
    groups: int = 8
    dropout: float = 0.0


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the time (and class) embedding is added between the convs."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]  # (B, C, 1, 1)
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + self.skip(x)


class UNet(nn.Module):
    """A residual U-Net for 28x28 inputs: len(channels) levels, 2x down/up-sampling between them."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        ch, emb_dim = cfg.channels, cfg.embed_dim * 2
        self.time_embed = nn.Sequential(
            time_embedding(cfg.embed, cfg.embed_dim), nn.Linear(cfg.embed_dim, emb_dim), nn.SiLU(),
            nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        block = lambda a, b: ResBlock(a, b, emb_dim, cfg.groups, cfg.dropout)  # noqa: E731
        self.down = nn.ModuleList()
        c_prev, skips = ch[0], [ch[0]]
        for i, c in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                self.down.append(block(c_prev, c))
                c_prev = c
                skips.append(c)
            if i < len(ch) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([block(c_prev, c_prev), block(c_prev, c_prev)])
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(block(c_prev + skips.pop(), c))
                c_prev = c
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(nn.GroupNorm(min(cfg.groups, ch[0]), ch[0]), nn.SiLU(),
                                 nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(t)  # (B, E)
        if self.class_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.cfg.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(y)
        # Pad 28 -> 32 so that every level halves exactly, crop back at the end.
        size = x.shape[-1]
        pad = (-size) % (2 ** (len(self.cfg.channels) - 1))
        h = F.pad(x, (0, pad, 0, pad)) if pad else x
        h = self.stem(h)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            if isinstance(layer, (ResBlock, nn.Conv2d)):
                hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        h = self.out(h)
        return h[..., :size, :size] if pad else h


# --------------------------------------------------------------------------- seed ScoreNet


class ScoreNet(nn.Module):
    """The seed U-Net of ``001_...``, layer for layer (28 -> 26 -> 12 -> 5 -> 2 and back).

    Time enters as Gaussian-Fourier features -> Linear -> swish, added as a per-channel bias
    before each GroupNorm. ``num_classes`` adds an optional class embedding to that vector.

    ``padding=0`` is the seed's mean network (valid convolutions); ``padding=1`` its eps network
    (``001_...`` Coding II, 28 -> 28 -> 14 -> 7 -> 4 and back). Every layer is conv -> GroupNorm, so
    no path carries the input's mean level through unnormalised. As an eps network it learned that
    level only when padded on [0, 1] pixels, where the zero padding equals the background
    (docs/results/paper/README.md).
    """

    def __init__(self, channels=(32, 64, 128, 256), embed_dim: int = 256, group_num: int = 4,
                 num_classes: int = 0, in_channels: int = 1, out_channels: int = 1, padding: int = 0):
        super().__init__()
        c, p = list(channels), padding
        self.num_classes = num_classes
        self.embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None
        gn = lambda n: nn.GroupNorm(group_num, n)  # noqa: E731
        dense = lambda n: nn.Linear(embed_dim, n)  # noqa: E731
        self.conv = nn.ModuleList([
            nn.Conv2d(in_channels, c[0], 3, stride=1, padding=p, bias=False),
            nn.Conv2d(c[0], c[1], 3, stride=2, padding=p, bias=False),
            nn.Conv2d(c[1], c[2], 3, stride=2, padding=p, bias=False),
            nn.Conv2d(c[2], c[3], 3, stride=2, padding=p, bias=False)])
        self.tconv = nn.ModuleList([
            nn.ConvTranspose2d(c[3], c[2], 3, stride=2, padding=p, bias=False),
            nn.ConvTranspose2d(2 * c[2], c[1], 3, stride=2, padding=p, bias=False, output_padding=1),
            nn.ConvTranspose2d(2 * c[1], c[0], 3, stride=2, padding=p, bias=False, output_padding=1)])
        self.final = nn.ConvTranspose2d(2 * c[0], out_channels, 3, stride=1, padding=p)
        self.dense = nn.ModuleList([dense(n) for n in (c[0], c[1], c[2], c[3], c[2], c[1], c[0])])
        self.norm = nn.ModuleList([gn(n) for n in (c[0], c[1], c[2], c[3], c[2], c[1], c[0])])

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        embed = self.embed(t)
        if self.class_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            embed = embed + self.class_embed(y)
        embed = F.silu(embed)  # the seed's swish
        act = lambda h, i: F.silu(self.norm[i](h + self.dense[i](embed)[:, :, None, None]))  # noqa: E731
        # Encoder.
        hs, h = [], x
        for i, conv in enumerate(self.conv):
            h = act(conv(h), i)
            hs.append(h)
        # Decoder, fusing the encoder features of the same resolution.
        h = act(self.tconv[0](hs[3]), 4)
        h = act(self.tconv[1](torch.cat([h, hs[2]], dim=1)), 5)
        h = act(self.tconv[2](torch.cat([h, hs[1]], dim=1)), 6)
        return self.final(torch.cat([h, hs[0]], dim=1))


# --------------------------------------------------------------------------- 2-D MLP


class MLP(nn.Module):
    """MLP for 2-D data: ``t`` concatenated to the input (seed 002) or a sinusoidal embedding.

    ``out_dim`` (default ``dim``) widens the output, e.g. to ``2 dim`` for a learned variance.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time: str = "concat",
                 embed_dim: int = 32, act: str = "relu", num_classes: int = 0, out_dim: int | None = None):
        super().__init__()
        if time not in ("concat", "embed"):
            raise ValueError(f"unknown time input {time!r}; choose from concat, embed")
        acts = {"relu": nn.ReLU, "silu": nn.SiLU}
        self.time = time
        self.embed = SinusoidalEmbedding(embed_dim) if time == "embed" else None
        self.num_classes = num_classes
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None
        t_dim = embed_dim if time == "embed" else 1
        widths = [dim + t_dim + (embed_dim if num_classes else 0)] + [hidden] * layers
        mods = []
        for a, b in zip(widths[:-1], widths[1:]):
            mods += [nn.Linear(a, b), acts[act]()]
        mods.append(nn.Linear(hidden, dim if out_dim is None else out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t_feat = self.embed(t) if self.embed is not None else t.float()[:, None]
        parts = [x, t_feat.to(x.dtype)]
        if self.class_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            parts.append(self.class_embed(y))
        return self.net(torch.cat(parts, dim=1))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


ARCHITECTURES = {"unet": UNet, "scorenet": ScoreNet, "scorenet-padded": partial(ScoreNet, padding=1), "mlp": MLP}


def build_net(arch: str, **kw) -> nn.Module:
    """Build a network by name: ``unet`` (kw -> UNetConfig), ``scorenet`` (the seed's mean network),
    ``scorenet-padded`` (the seed's eps network) or ``mlp``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if arch == "unet":
        kw = {k: tuple(v) if k == "channels" else v for k, v in kw.items()}
        return UNet(UNetConfig(**kw))
    return ARCHITECTURES[arch](**kw)


# =========================================================================== VAE (issue 7) ====
# The VAE baseline's encoder and decoder (SPEC section 4). Unlike the denoisers above they take
# no time: ``VAEEncoder(x) -> (mu, logvar)`` each (B, latent_dim), ``VAEDecoder(z) -> (B, C, 28, 28)``
# (Bernoulli logits or Gaussian means). ``arch="mlp"`` is Burda et al.'s one-stochastic-layer
# network (784-200-200-latent, tanh); ``arch="conv"`` two stride-2 convs each way around an MLP.


class VAEEncoder(nn.Module):
    """x (B, C, 28, 28) -> (mu, logvar) of the Gaussian q(z | x), each (B, latent_dim)."""

    def __init__(self, arch: str = "conv", latent_dim: int = 32, hidden: int = 256,
                 channels: tuple[int, ...] = (32, 64), in_channels: int = 1):
        super().__init__()
        _check_vae_arch(arch)
        if arch == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 784, hidden), nn.Tanh(),
                                      nn.Linear(hidden, hidden), nn.Tanh())
        else:
            c0, c1 = channels
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, c0, 4, stride=2, padding=1), nn.SiLU(),  # (B, c0, 14, 14)
                nn.Conv2d(c0, c1, 4, stride=2, padding=1), nn.SiLU(),  # (B, c1, 7, 7)
                nn.Flatten(), nn.Linear(c1 * 49, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)  # (B, latent) each
        return mu, logvar


class VAEDecoder(nn.Module):
    """z (B, latent_dim) -> one value per pixel (B, out_channels, 28, 28)."""

    def __init__(self, arch: str = "conv", latent_dim: int = 32, hidden: int = 256,
                 channels: tuple[int, ...] = (32, 64), out_channels: int = 1):
        super().__init__()
        _check_vae_arch(arch)
        self.out_channels = out_channels
        if arch == "mlp":
            self.body = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                      nn.Linear(hidden, out_channels * 784))
        else:
            c0, c1 = channels
            self.body = nn.Sequential(
                nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, c1 * 49), nn.SiLU(),
                nn.Unflatten(1, (c1, 7, 7)),  # (B, c1, 7, 7)
                nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1), nn.SiLU(),  # (B, c0, 14, 14)
                nn.ConvTranspose2d(c0, out_channels, 4, stride=2, padding=1))  # (B, C, 28, 28)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(len(z), self.out_channels, 28, 28)  # (B, C, 28, 28)


VAE_ARCHITECTURES = ("conv", "mlp")


def _check_vae_arch(arch: str) -> None:
    if arch not in VAE_ARCHITECTURES:
        raise ValueError(f"unknown VAE architecture {arch!r}; choose from {', '.join(VAE_ARCHITECTURES)}")

# ======================================================================= end of VAE (issue 7) ====
