"""The VAE baseline (SPEC section 4) behind the trainer interface (SPEC 8).

Symbols: data ``x`` (B, 1, 28, 28) in the dataset's view, latent ``z`` (B, L), encoder
``q(z | x) = N(mu(x), diag exp(logvar(x)))``, prior ``p(z) = N(0, I)``, decoder ``p(x | z)``:

- ``bernoulli`` on binarised data (``{-1, +1}``; pixel ``(x + 1)/2`` ~ Bernoulli(sigmoid(logit))),
  log-likelihoods in nats per image, directly comparable with the bit-flip diffusion's ELBO;
- ``gaussian`` on grey data (``mnist-unit`` or ``mnist-grey``): N(mean, sigma^2) per pixel with one
  learned (or fixed) sigma. Its values are densities of continuous pixels, not comparable with
  the discrete likelihoods above;
- ``discretised-logistic`` on 8-bit grey data (``mnist-grey``, pixels on the 256 levels
  x_k = 2k/255 - 1): the decoder gives per pixel a location m and a log-scale log s (two output
  channels) and P(x_k | z) = sigma((x_k + 1/255 - m)/s) - sigma((x_k - 1/255 - m)/s), the logistic
  mass of the pixel's bin, the first bin extended to -inf and the last to +inf (PixelCNN++, Salimans
  et al. 2017; Kingma et al. 2016): a probability over the 256 levels, so its nats per image and
  bits/dim = nats/(784 ln 2) compare with the Gaussian diffusion's discretised ELBO on grey MNIST.

- ``loss(batch)``: -ELBO = -log p(x | z) + KL(q(z | x) || N(0, I)), one reparameterised z per image.
- ``nll(batch)``: the IWAE estimate -log (1/k) sum_i p(x, z_i)/q(z_i | x) with k = ``iwae_k``
  importance samples (Burda et al. 2016), batched over k; an upper bound on -log p(x) whose
  expectation decreases to it as k grows.
- ``sample(n)``: decode z ~ N(0, I), then draw the pixels (``mean=True``: the decoder's mean; for the
  discretised logistic its location clamped to [-1, 1], off the 256 levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.common.config import ConfigError, at_least, in_range, one_of, widths
from zoo.common.data import DATASETS, is_binary, is_image
from zoo.common.nets import VAE_ARCHITECTURES, VAEDecoder, VAEEncoder
from zoo.common.utils import module_device, rand, randn

LOG_2PI = math.log(2 * math.pi)
LIKELIHOOD_DATA = {"bernoulli": tuple(name for name in DATASETS if is_image(name) and is_binary(name)),
                   "gaussian": ("mnist-unit", "mnist-grey"), "discretised-logistic": ("mnist-grey",)}
LEVELS = 256  # 8-bit grey data on x_k = 2k/255 - 1, k = 0..255 (zoo.common.data, view grey); bins 2/255 wide
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on the logistic's log-scale: s >= 9e-4, a ninth of a bin


@dataclass(frozen=True)
class Config:
    data: str = "mnist-binary"  # binary views (bernoulli), mnist-unit / mnist-grey (gaussian), mnist-grey (discretised)
    likelihood: str = "bernoulli"  # bernoulli | gaussian | discretised-logistic
    arch: str = "conv"  # conv | mlp (zoo/common/nets.py, VAE section)
    latent_dim: int = 32
    hidden: int = 256
    channels: tuple[int, ...] = (32, 64)
    gaussian_sigma: float | None = None  # gaussian likelihood: None learns one sigma
    iwae_k: int = 5000  # importance samples of nll()
    elbo_samples: int = 1  # draws of z averaged in elbo_terms()
    eval_batch: int = 16384  # decoder inputs per call in the IWAE estimate

    def __post_init__(self):
        validate(self)


def validate(cfg: Config) -> None:
    """Every variant name and range checked once (at construction), with the valid choices."""
    one_of(cfg.likelihood, "likelihood", tuple(LIKELIHOOD_DATA))
    one_of(cfg.data, f"data for the {cfg.likelihood} likelihood", LIKELIHOOD_DATA[cfg.likelihood])
    one_of(cfg.arch, "arch", tuple(VAE_ARCHITECTURES))
    for name in ("latent_dim", "hidden", "iwae_k", "elbo_samples", "eval_batch"):
        at_least(getattr(cfg, name), name, 1)
    widths(cfg.channels, "channels")
    if cfg.gaussian_sigma is not None:
        in_range(cfg.gaussian_sigma, "gaussian_sigma", 0, None, lo_open=True)


# --------------------------------------------------------------------------- equations


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) = 1/2 sum (mu^2 + e^logvar - 1 - logvar), per example (B,)."""
    return 0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double()).sum(-1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag e^logvar), summed over the last dim."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def _per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)  # (B,)


def discretised_logistic_log_prob(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) elementwise, float64, for x on the 256 levels x_k = 2k/255 - 1 under
    Logistic(loc, s = e^log_scale) integrated over the bin [x_k - 1/255, x_k + 1/255], the first bin
    extended to -inf and the last to +inf (PixelCNN++, Salimans et al. 2017, eq. 2).

    With a = (x_k - 1/255 - loc)/s and b = (x_k + 1/255 - loc)/s the mass is sigmoid(b) - sigmoid(a)
    = sigmoid(b) sigmoid(-a) (1 - e^(a - b)), so
        log P = -softplus(-b) - softplus(a) + log(-expm1(a - b)),
    every term exact in float64 wherever loc and s lie (the bin in either tail, or s far below or
    above the bin width): PixelCNN++'s mid-bin density fallback for tiny masses is not needed. The
    edge bins put a = -inf (log P = log sigmoid(b)) or b = +inf (log P = log sigmoid(-a)). The edges
    come from the level index k of x (float32 data are k/255 only to rounding), so that neighbouring
    bins share their edge exactly and the 256 masses sum to 1.
    """
    loc, log_scale = (torch.as_tensor(v, dtype=torch.float64) for v in (loc, log_scale))
    k = level_index(torch.as_tensor(x, dtype=torch.float64))
    inv_s = torch.exp(-log_scale)
    a = ((2 * k - 1) / (LEVELS - 1) - 1 - loc) * inv_s
    b = ((2 * k + 1) / (LEVELS - 1) - 1 - loc) * inv_s
    a = torch.where(k == 0, -math.inf, a)  # the first bin: (-inf, x_0 + 1/255]
    b = torch.where(k == LEVELS - 1, math.inf, b)  # the last bin: [x_255 - 1/255, +inf)
    return -_softplus(-b) - _softplus(a) + torch.log(-torch.expm1(a - b))


def _softplus(v: torch.Tensor) -> torch.Tensor:
    """log(1 + e^v), exact for every v (F.softplus turns linear above 20, 2e-9 off in float64)."""
    return torch.logaddexp(v, torch.zeros_like(v))


def level_index(x: torch.Tensor) -> torch.Tensor:
    """The index k = 0..255 of the bin [x_k - 1/255, x_k + 1/255] that x in [-inf, inf] falls in
    (as a float of x's dtype); the edge bins reach to -inf and +inf."""
    return torch.round((x + 1) * (LEVELS - 1) / 2).clamp(0, LEVELS - 1)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Values in [-inf, inf] to the level of their bin, x_k = 2k/255 - 1."""
    return level_index(x) / (LEVELS - 1) * 2 - 1  # as the grey view computes it: equal to the data's values


class Bernoulli(nn.Module):
    """p(x | z) = prod_j Bernoulli((x_j + 1)/2; sigmoid(logit_j)) on {-1, +1} pixels."""

    datasets = LIKELIHOOD_DATA["bernoulli"]
    out_channels = 1  # decoder outputs per pixel: the logit

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        target = (x.double() + 1) / 2
        return -_per_example(F.binary_cross_entropy_with_logits(out.double(), target, reduction="none"))

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
        q = torch.sigmoid(out.float())
        if mean:
            return 2 * q - 1  # E[x] in the {-1, +1} view
        return torch.where(rand(q.shape, generator, q.device) < q, 1.0, -1.0)


class Gaussian(nn.Module):
    """p(x | z) = prod_j N(x_j; mean_j, sigma^2), one sigma (learned unless fixed)."""

    datasets = LIKELIHOOD_DATA["gaussian"]
    out_channels = 1  # the mean

    def __init__(self, sigma: float | None):
        super().__init__()
        init = torch.tensor(math.log(sigma if sigma is not None else 0.1))
        self.log_sigma = nn.Parameter(init, requires_grad=sigma is None)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ls = self.log_sigma.double()
        return _per_example(-0.5 * ((x.double() - out.double()) * torch.exp(-ls)) ** 2 - ls - 0.5 * LOG_2PI)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
        if mean:
            return out.float()
        eps = randn(out.shape, generator, out.device)
        return out.float() + self.log_sigma.exp().detach() * eps


class DiscretisedLogistic(nn.Module):
    """p(x | z) = prod_j P(x_j; loc_j, s_j), the logistic mass of pixel j's 8-bit bin
    (`discretised_logistic_log_prob`); the decoder's two channels are loc and log s."""

    datasets = LIKELIHOOD_DATA["discretised-logistic"]
    out_channels = 2  # loc, log-scale

    @staticmethod
    def loc_log_scale(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = out.unbind(1)  # (B, 28, 28) each
        return loc[:, None], log_scale[:, None].clamp(min=MIN_LOG_SCALE)  # (B, 1, 28, 28)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return _per_example(discretised_logistic_log_prob(x, *self.loc_log_scale(out)))

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
        loc, log_scale = self.loc_log_scale(out.float())
        if mean:
            return loc.clamp(-1, 1)
        u = rand(loc.shape, generator, loc.device)
        return quantise(loc + log_scale.exp() * torch.logit(u))  # inverse logistic CDF, then its bin


LIKELIHOODS = {"bernoulli": lambda cfg: Bernoulli(), "gaussian": lambda cfg: Gaussian(cfg.gaussian_sigma),
               "discretised-logistic": lambda cfg: DiscretisedLogistic()}


# --------------------------------------------------------------------------- the model


class VAE(nn.Module):
    """Gaussian encoder, Bernoulli, Gaussian or discretised logistic decoder, standard normal prior."""

    NETWORK = "decoder"  # the submodule whose calls are network evaluations (NFE)

    def __init__(self, cfg: Config = Config()):
        super().__init__()
        if cfg.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {cfg.likelihood!r}; choose from {', '.join(LIKELIHOODS)}")
        self.cfg = cfg
        self.likelihood = LIKELIHOODS[cfg.likelihood](cfg)
        if cfg.data not in self.likelihood.datasets:
            raise ConfigError(f"the {cfg.likelihood} likelihood needs data from {', '.join(self.likelihood.datasets)}, "
                             f"got {cfg.data!r}")
        kw = dict(arch=cfg.arch, latent_dim=cfg.latent_dim, hidden=cfg.hidden, channels=tuple(cfg.channels))
        self.encoder = VAEEncoder(**kw)
        self.decoder = VAEDecoder(**kw, out_channels=self.likelihood.out_channels)

    def _prior_z(self, shape, generator, device) -> torch.Tensor:
        return randn(shape, generator, device)

    def one_draw_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One reparameterised z ~ q(z | x): recon = -log p(x | z), kl, neg_elbo = recon + kl (B,) nats."""
        x = x.to(module_device(self))
        mu, logvar = self.encoder(x)  # (B, L) each
        z = mu + torch.exp(0.5 * logvar) * self._prior_z(mu.shape, generator, mu.device)
        recon = -self.likelihood.log_prob(x, self.decoder(z))
        kl = kl_standard_normal(mu, logvar)
        return {"recon": recon, "kl": kl, "neg_elbo": recon + kl}

    def loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """-ELBO (SPEC 4), mean over the batch; logs its two parts."""
        terms = self.one_draw_terms(batch[0])
        return {"loss": terms["neg_elbo"].mean(), "recon": terms["recon"].detach().mean(),
                "kl": terms["kl"].detach().mean(), "elbo_est": terms["neg_elbo"].detach().mean()}

    @torch.no_grad()
    def neg_elbo(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """-ELBO per example (B,), the reconstruction term averaged over `samples` draws of z."""
        return torch.stack([self.one_draw_terms(x, generator)["neg_elbo"] for _ in range(samples)]).mean(0)

    @torch.no_grad()
    def elbo_terms(self, batch: tuple[torch.Tensor, ...],
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """-ELBO and its parts per example (B,) in nats, averaged over cfg.elbo_samples draws of z:
        recon = -E log p(x | z), kl = KL(q(z | x) || N(0, I)), total = recon + kl."""
        draws = [self.one_draw_terms(batch[0], generator) for _ in range(self.cfg.elbo_samples)]
        recon = torch.stack([d["recon"] for d in draws]).mean(0)
        return {"recon": recon, "kl": draws[0]["kl"], "total": recon + draws[0]["kl"]}

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                    max_batch: int | None = None) -> torch.Tensor:
        """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x), z_i ~ q(z | x), i = 1..k: (B, k) float64.
        The decoder sees at most `max_batch` latents per call (chunks over k)."""
        x = x.to(module_device(self))
        B = x.shape[0]
        chunk = max(1, (max_batch or self.cfg.eval_batch) // B)
        mu, logvar = self.encoder(x)  # (B, L)
        out = torch.empty(B, k, dtype=torch.float64, device=x.device)
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = self._prior_z((n, *mu.shape), generator, mu.device)  # (n, B, L)
            z = mu + torch.exp(0.5 * logvar) * eps
            flat = z.reshape(n * B, -1)  # (n * B, L), chunk-major
            x_rep = x.repeat(n, *([1] * (x.ndim - 1)))  # (n * B, ...)
            log_px = self.likelihood.log_prob(x_rep, self.decoder(flat)).view(n, B)
            log_pz = log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))  # (n, B)
            log_qz = log_normal(z, mu, logvar)  # (n, B)
            out[:, start:start + n] = (log_px + log_pz - log_qz).T
        return out

    def iwae_nll(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                 max_batch: int | None = None) -> torch.Tensor:
        """-log (1/k) sum_i w_i per example (B,) in nats (Burda et al. 2016, eq. 8); k = 1 is -ELBO."""
        lw = self.log_weights(x, k, generator, max_batch)
        return -(torch.logsumexp(lw, dim=1) - math.log(k))

    def nll(self, batch: tuple[torch.Tensor, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """IWAE NLL with k = cfg.iwae_k importance samples, nats per example (B,)."""
        return self.iwae_nll(batch[0], self.cfg.iwae_k, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, mean: bool = False,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n images in the data view from z ~ N(0, I) (or the given latents `x_T`, (n, latent_dim));
        `mean=True` gives the decoder's mean instead of a draw."""
        device = module_device(self)
        z = self._prior_z((n, self.cfg.latent_dim), generator, device) if x_T is None else x_T.to(device)
        return self.likelihood.sample(self.decoder(z), generator, mean)


def build(cfg: Config) -> VAE:
    return VAE(cfg)
