"""The Gaussian VP diffusion formulation: parameterisations, losses, guidance (SPEC 1, 8); its Config in config.py.

Time convention: 1-based steps t = 1..T drawn uniformly for training; the network is called as
``net(x_t, t / T, y)`` (zoo/common/nets.py) with ``y = num_classes`` the null class of
classifier-free guidance. Every parameterisation is turned into an eps prediction and a reverse
mean ``mu_theta`` exactly, so every loss, sampler and the ELBO work with each of them:

    eps   the network predicts eps
    x0    the network predicts x0                         (exact conversion, VPProcess.convert)
    v     v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (exact conversion)
    mean  mu = rho0 (x_t - rho1 delta), delta the network output, rho0 = rho1 = 1 at init (seed 001);
          eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t)/beta_t

Samplers and the ELBO are given the model's own prediction kind (``GaussianDiffusion.prediction``:
eps, x0 or v; eps for the mean parameterisation), which with ``zero_terminal_snr`` (SPEC 11,
alpha_bar_T = 0) is what keeps t = T defined: that option requires the x0 or v parameterisation,
and the v loss (zoo.gaussian.losses.v_loss), the only one whose gradient reaches the network at t = T.

``learn_variance`` doubles the network's output channels: the second half, through a tanh, is the
v of Nichol & Dhariwal's learned variance (zoo.gaussian.learned_variance), trained by the hybrid
loss L + vlb_weight L_vlb and used by the ELBO and DDPM sampling when their variance is "learned".
``t_sampling = "importance"`` draws t from the VLB's second moments instead of uniformly.

Likelihoods: ``nll``/``elbo_terms`` (the ELBO; decoder discretised to 8 bits on grey MNIST, to
{-1, +1} on binarised views, a density on toys) and ``ode_nll``/``ode_terms`` (the probability-flow
ODE, zoo.gaussian.ode_likelihood), all in nats per example.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.common.data import DATASETS, example_shape
from zoo.common.nets import build_net
from zoo.common.ode_likelihood import SOLVERS, ODELikelihoodError
from zoo.common.utils import append_dims, module_device, randn, to_device
from zoo.gaussian import losses as L
from zoo.gaussian import ode_likelihood as ode
from zoo.gaussian.config import (ARCHS, PARAMS, T_SAMPLING, V_LOSS_PARAMS, ZERO_SNR_LOSSES,  # noqa: F401  (re-exported)
                                 ZERO_SNR_PARAMS, Config, GaussianConfigError, validate)
from zoo.gaussian.learned_variance import ImportanceSampler, LearnedLogVariance
from zoo.gaussian.likelihood import BIN_WIDTH, elbo_terms
from zoo.gaussian.process import _TO_X0_EPS, PREDICTIONS, VPProcess
from zoo.gaussian.samplers import SAMPLERS
from zoo.gaussian.schedules import SPACINGS, make_betas, rescale_betas_zero_snr


def decoder_for(data: str) -> str:
    """The ELBO's decoder at t = 1 for a dataset's view: 8-bit bins, the two binary levels, or a density."""
    view = DATASETS[data][1]
    return "discretized" if view == "grey" else "binary" if view.startswith("binary") else "gaussian"


def data_shape(data: str) -> tuple[int, ...]:
    """Shape of one example of a dataset's view."""
    return example_shape(data)


def _schedule_kw(cfg: Config) -> dict:
    return {"s": cfg.cosine_s} if cfg.schedule == "cosine" else {"beta_1": cfg.beta_1, "beta_T": cfg.beta_T}


class GaussianDiffusion(nn.Module):
    """A network plus the VP process: loss, sample, nll and param_groups for the shared Trainer."""

    NETWORK = "net"  # the submodule whose calls are network evaluations (NFE)
    NLL_IS_ELBO = True  # nll(batch) is elbo_terms(batch)["total"]

    def __init__(self, cfg: Config):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        betas = make_betas(cfg.schedule, cfg.T, **_schedule_kw(cfg))
        self.process = VPProcess(rescale_betas_zero_snr(betas) if cfg.zero_terminal_snr else betas)
        # The prediction kind handed to samplers and the ELBO (the mean parameterisation goes through eps).
        self.prediction = cfg.param if cfg.param in PREDICTIONS else "eps"
        self.shape = data_shape(cfg.data)
        self.discrete = DATASETS[cfg.data][1] == "grey"  # 8-bit data: discretised decoder, clamped samples
        self.decoder = decoder_for(cfg.data)
        width = 2 if cfg.learn_variance else 1  # mean output, then the variance output v
        kw = {"num_classes": cfg.num_classes}
        if cfg.arch == "mlp":
            kw.update(dim=self.shape[0], hidden=cfg.hidden, layers=cfg.layers, time=cfg.mlp_time,
                      out_dim=width * self.shape[0])
        else:
            kw.update(channels=cfg.channels, out_channels=width * self.shape[0])
        self.net = build_net(cfg.arch, **kw)
        self.log_variance = LearnedLogVariance(self.process)
        self.alpha_bar = ode.ContinuousAlphaBar(self.process)
        if cfg.t_sampling == "importance":
            self.t_sampler = ImportanceSampler(cfg.T)
        if cfg.param == "mean":
            self.rho0 = nn.Parameter(torch.tensor(1.0))
            self.rho1 = nn.Parameter(torch.tensor(1.0))
        self.loss_fn, self.loss_kind = L.LOSSES[cfg.loss], L.PREDICTION[cfg.loss]  # the kind it compares
        self._to_eps = {"eps": self._eps_from_prediction, "x0": self._eps_from_prediction,
                        "v": self._eps_from_prediction, "mean": self._eps_from_delta}[cfg.param]

    # ------------------------------------------------------------------ parameterisations

    def _eps_from_prediction(self, out, x_t, t):
        return self.process.convert(out, x_t, t, self.cfg.param, "eps")

    def _eps_from_delta(self, delta, x_t, t):
        mu = self.rho0 * (x_t - self.rho1 * delta)  # seed 001: mu = rho0 (x_t - rho1 delta)
        return self.process.eps_from_mean(mu, x_t, t)

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean output, v in [-1, 1] or None) of the network at steps t (B,), fractional allowed."""
        out = self.net(x_t, t.float() / self.cfg.T, y)
        if not self.cfg.learn_variance:
            return out, None
        mean_out, v = out.chunk(2, dim=1)  # (B, C, ...) each
        return mean_out, torch.tanh(v)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The eps prediction at original steps t (B,) long, whatever the parameterisation."""
        return self.eps_and_v(x_t, t, y)[0]

    def predict_and_v(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                      prediction: str = "eps"):
        """(prediction of kind 'eps', 'x0' or 'v', variance output v or None) at original steps t (B,) long.

        The network's output is converted exactly from the model's own kind (``self.prediction``).
        """
        out, v = self._forward(x_t, t, y)
        if self.cfg.param == "mean":
            out = self._eps_from_delta(out, x_t, t)
        return self.process.convert(out, x_t, t, self.prediction, prediction), v

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                prediction: str = "eps") -> torch.Tensor:
        """The prediction of kind 'eps', 'x0' or 'v' at original steps t (B,) long, converted exactly."""
        return self.predict_and_v(x_t, t, y, prediction)[0]

    def eps_and_v(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        """(eps prediction, variance output v or None) at original steps t (B,) long."""
        return self.predict_and_v(x_t, t, y, "eps")

    def eps_at(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The unconditional eps prediction at fractional steps t (B,) in [0, T], for the ODE likelihood.

        alpha_bar(t) is `ContinuousAlphaBar`'s interpolation; x0 and v convert exactly through it.
        Computed in the network's dtype, from x_t and t of any float dtype.
        """
        dtype = next(self.net.parameters()).dtype
        x_t = x_t.to(dtype)
        y = self._null(x_t.shape[0], x_t.device) if self.cfg.num_classes else None
        out, _ = self._forward(x_t, t, y)
        if self.cfg.param == "eps":
            return out
        log_ab = self.alpha_bar.log_alpha_bar(t)  # (B,) float64
        a = append_dims((0.5 * log_ab).exp(), x_t.ndim).to(dtype)
        b = append_dims((-torch.expm1(log_ab)).sqrt(), x_t.ndim).to(dtype)
        return _TO_X0_EPS[self.cfg.param](out, x_t, a, b)[1]

    def denoiser(self, labels: torch.Tensor | None = None, w: float = 1.0, clip: bool = False,
                 prediction: str = "eps", with_variance: bool = False):
        """A denoiser for the samplers: unconditional, or classifier-free guided towards `labels`.

        It predicts eps by default, or x0 / v (`prediction`; pass the same to the sampler);
        ``self.prediction`` is the model's own kind, required at t = T with zero terminal SNR.
        guided = (1 - w) pred(x, null) + w pred(x, y) (SPEC 1): w = 0 unconditional, w = 1
        conditional, w > 1 amplified; the same in every kind, as the conversions are affine in the
        prediction. Both evaluations go through the network as one batch. `clip` clamps the implied
        x0_hat to [-1, 1] and returns the matching prediction (improved-diffusion's clip_denoised),
        so that every sampler sees it. ``with_variance`` (learn_variance models): the denoiser
        returns (prediction, v), v the variance output (of the conditional branch when guided).
        """
        if prediction not in PREDICTIONS:
            raise GaussianConfigError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")
        if with_variance and not self.cfg.learn_variance:
            raise GaussianConfigError("with_variance needs a model with learn_variance=True")
        if with_variance:
            pred = lambda x_t, t, y: self.predict_and_v(x_t, t, y, prediction)  # noqa: E731
        else:
            pred = lambda x_t, t, y: self.predict(x_t, t, y, prediction)  # noqa: E731
        if self.cfg.num_classes == 0:
            if labels is not None:
                raise GaussianConfigError("labels were given but this model is unconditional (num_classes = 0)")
            den = lambda x_t, t: pred(x_t, t, None)  # noqa: E731
        elif labels is None:
            den = lambda x_t, t: pred(x_t, t, self._null(x_t.shape[0], x_t.device))  # noqa: E731
        else:
            den = guided(pred, labels, w, self.cfg.num_classes)
        return clipped(den, self.process, prediction) if clip else den

    def _null(self, n: int, device) -> torch.Tensor:
        return torch.full((n,), self.cfg.num_classes, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ trainer interface

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Mean over the batch of the per-example loss; t ~ U{1..T} (or importance-sampled, each
        example weighted by 1/(T p_t)), labels dropped to null at random; with a learned variance the
        hybrid L + vlb_weight L_vlb."""
        batch = to_device(batch, module_device(self))
        x0 = batch[0]
        y = None
        if self.cfg.num_classes:
            y = batch[1] if len(batch) > 1 else self._null(x0.shape[0], x0.device)
            drop = torch.rand(y.shape, device=y.device) < self.cfg.label_dropout
            y = torch.where(drop, torch.full_like(y, self.cfg.num_classes), y)
        if self.cfg.t_sampling == "importance":
            t, weights = self.t_sampler.sample(x0.shape[0])  # (B,), (B,)
            t, weights = t.to(x0.device), weights.to(device=x0.device, dtype=x0.dtype)
        else:
            t, weights = torch.randint(self.cfg.t_min, self.cfg.T + 1, (x0.shape[0],), device=x0.device), None  # (B,)
        eps = torch.randn_like(x0)
        x_t = self.process.q_sample(x0, t, eps)
        pred, v = self.predict_and_v(x_t, t, y, self.loss_kind)
        eps_hat = self.process.convert(pred, x_t, t, self.loss_kind, "eps")  # exact at every t (identity for eps)
        per_example = self.loss_fn(self.process, x0, x_t, t, eps, pred, self.cfg)  # (B,)
        out = {}
        if v is not None:
            vlb = L.vlb(self.process, self.log_variance, x0, x_t, t, eps_hat, v, self.decoder)  # (B,)
            per_example = per_example + self.cfg.vlb_weight * vlb
            out["vlb"] = vlb.mean().detach()
            if weights is not None and torch.is_grad_enabled():  # training steps only, not validation
                self.t_sampler.update(t, vlb)
        if weights is not None:
            per_example = per_example * weights
        out.update(loss=per_example.mean(), mse_eps=((eps_hat - eps) ** 2).flatten(1).mean(1).mean().detach())
        if self.cfg.param == "mean":
            out.update(rho0=self.rho0.detach().clone(), rho1=self.rho1.detach().clone())
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, variance: str | None = None,
               method: str | None = None, w: float | None = None, labels: torch.Tensor | None = None,
               callback=None, spacing: str | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n samples in the data view ((n, 1, 28, 28) in [-1, 1] for MNIST, (n, 2) for toys).

        Starts from the given noise `x_T` (moved to the model's device) or draws it from `generator`.
        Unset options fall back to the config. A conditional model with no `labels` is guided
        towards labels 0, 1, ..., num_classes - 1 in turn. `spacing` (ddim, ode) is the step grid;
        ddpm always takes all T steps. The samplers get the model's own prediction kind.
        """
        cfg, dev = self.cfg, module_device(self)
        sampler = sampler or cfg.sampler
        if sampler not in SAMPLERS:
            raise GaussianConfigError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        spacing = spacing or cfg.spacing
        if spacing not in SPACINGS:
            raise GaussianConfigError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
        if cfg.num_classes and labels is None:
            labels = torch.arange(n, device=dev) % cfg.num_classes
        variance = variance or cfg.variance
        if variance == "learned" and not cfg.learn_variance:
            raise ValueError("variance 'learned' needs learn_variance=True")
        learned = sampler == "ddpm" and variance == "learned"
        # The samplers clip x0_hat themselves (cheaper per step than a clipped() denoiser, the same numbers).
        denoiser = self.denoiser(None if labels is None else labels.to(dev), cfg.w if w is None else w,
                                 prediction=self.prediction, with_variance=learned)
        x_T = randn((n, *self.shape), generator, dev) if x_T is None else x_T.to(dev)
        steps = steps or cfg.steps or 50
        kw = {
            # A learned-variance denoiser returns (prediction, v) and ddpm takes sigma_t from v.
            "ddpm": lambda: dict(variance="beta_tilde" if learned else variance, generator=generator),
            "ddim": lambda: dict(steps=steps, eta=cfg.eta if eta is None else eta, generator=generator,
                                 spacing=spacing),
            "ode": lambda: dict(steps=steps, method=method or cfg.method, spacing=spacing),
        }[sampler]()
        kw.update(prediction=self.prediction, clip=cfg.clip_x0 and self.discrete)
        was_training = self.training
        self.eval()
        x0 = SAMPLERS[sampler](denoiser, self.process, x_T, callback=callback, **kw)
        self.train(was_training)
        if self.decoder == "binary":  # binarised data: the decoder's two levels, split at its bin edge 0
            return torch.where(x0 > 0, 1.0, -1.0).to(x0.dtype)
        return x0.clamp(-1, 1) if self.discrete else x0

    @torch.no_grad()
    def nll(self, batch, variance: str | None = None, generator: torch.Generator | None = None,
            max_batch: int = 1024) -> torch.Tensor:
        """-ELBO in nats per example (B,) (8-bit data: discretised decoder; toys: a Gaussian density)."""
        return self.elbo_terms(batch, variance, generator, max_batch)["total"]

    @torch.no_grad()
    def elbo_terms(self, batch, variance: str | None = None, generator: torch.Generator | None = None,
                   max_batch: int = 1024) -> dict[str, torch.Tensor]:
        """The per-term breakdown of the bound (likelihood.elbo_terms), unconditional.

        ``variance`` beta | beta_tilde | learned (learn_variance models), default ``nll_variance``.
        """
        variance = variance or self.cfg.nll_variance
        if variance == "learned" and not self.cfg.learn_variance:
            raise ValueError("variance 'learned' needs learn_variance=True")
        was_training = self.training
        self.eval()
        out = elbo_terms(self.denoiser(prediction=self.prediction, with_variance=variance == "learned"),
                         self.process, batch[0].to(module_device(self)), variance=variance, decoder=self.decoder,
                         max_batch=max_batch, generator=generator, prediction=self.prediction)
        self.train(was_training)
        return out

    def ode_nll(self, batch, steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
                generator: torch.Generator | None = None, t_min: float = 0.0) -> torch.Tensor:
        """-log p(x) through the probability-flow ODE in nats per example (B,), dequantisation included."""
        return self.ode_terms(batch, steps, solver, hutchinson, generator, t_min)["total"]

    def ode_terms(self, batch, steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
                  generator: torch.Generator | None = None, t_min: float = 0.0) -> dict[str, torch.Tensor]:
        """The ODE likelihood's terms (zoo.gaussian.ode_likelihood.ode_terms), unconditional.

        8-bit data is dequantised (u uniform over its bin, from ``generator``) and "dequant" holds
        -D log w; "total" = "ode" + "dequant" nats, "bits_per_dim" = total/(D log 2). ``t_min``: the
        flow starts at sigma(t_min), 0 (the data) by default; param x0 needs t_min > 0 (eps = (x - x0)/0
        at alpha_bar = 1), and the mean parameterisation has no eps at fractional t.
        """
        if solver not in SOLVERS:
            raise ODELikelihoodError(f"unknown ODE solver {solver!r}; choose from {', '.join(SOLVERS)}")
        if self.cfg.param == "mean":
            raise ODELikelihoodError("ode_nll needs eps at fractional t: choose param eps, x0 or v, not mean")
        if self.cfg.param == "x0" and not t_min > 0:
            raise ODELikelihoodError("param x0 has no eps at t = 0: pass t_min > 0 (e.g. t_min=1)")
        if not 0 <= t_min < self.cfg.T:
            raise ODELikelihoodError(f"t_min must be in [0, {self.cfg.T}), got {t_min}")
        was_training = self.training
        self.eval()
        try:
            return ode.ode_terms(self.eps_at, self.alpha_bar, batch[0].to(module_device(self)),
                                 BIN_WIDTH if self.discrete else None, steps=steps, solver=solver,
                                 hutchinson=hutchinson, generator=generator, t_min=t_min)
        finally:
            self.train(was_training)

    def param_groups(self, lr: float) -> list[dict]:
        """The network at `lr`; rho0, rho1 (mean parameterisation) at `rho_lr`."""
        groups = [{"params": list(self.net.parameters()), "lr": lr}]
        if self.cfg.param == "mean":
            groups.append({"params": [self.rho0, self.rho1], "lr": self.cfg.rho_lr or lr})
        return groups


def _split(out):
    """(prediction, v) of a denoiser's output: a tensor, or (prediction, v) from a learned-variance denoiser."""
    return out if isinstance(out, tuple) else (out, None)


def _join(pred: torch.Tensor, v: torch.Tensor | None):
    return pred if v is None else (pred, v)


def guided(eps_fn, labels: torch.Tensor, w: float, null: int):
    """Classifier-free guidance: denoiser(x_t, t) = (1 - w) eps(x_t, t, null) + w eps(x_t, t, y).

    `eps_fn(x_t, t, y)` may predict x0 or v instead: the weights sum to 1, so guidance commutes
    with the exact (affine) conversions between kinds. A learned variance v, if eps_fn gives one,
    is the conditional branch's.
    """

    y = torch.cat([torch.full_like(labels, null), labels])  # (2B,)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor):
        n = x_t.shape[0]
        e, v = _split(eps_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), y))  # (2B, ...)
        return _join((1 - w) * e[:n] + w * e[n:], None if v is None else v[n:])

    return denoiser


def clipped(denoiser, process: VPProcess, prediction: str = "eps"):
    """The denoiser (of kind `prediction`) whose implied x0_hat is clamped to [-1, 1].

    For eps, x0_hat = (x_t - sqrt(1 - alpha_bar) eps)/sqrt(alpha_bar), undefined at alpha_bar = 0
    (process.split raises ZeroSNRError there); x0 and v are clamped at every t.
    """

    def den(x_t: torch.Tensor, t: torch.Tensor):
        pred, v = _split(denoiser(x_t, t))
        return _join(process.clip_x0(pred, x_t, t, prediction), v)

    return den


def build(cfg: Config) -> GaussianDiffusion:
    return GaussianDiffusion(cfg)
