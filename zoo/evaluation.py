"""One evaluation path for every formulation: likelihood, sample quality, NFE and seconds.

- ``likelihood``: ``model.nll(batch)`` in nats per example over test data (bits/dim for images),
  and ``model.elbo_terms(batch)`` where the formulation defines it;
- ``draw``: chunked, timed sampling through ``model.sample(n, x_T=..., generator=..., **kw)``,
  with the number of network evaluations per sample counted by ``NFECounter``, a forward hook on
  the formulation's network (``model.NETWORK``) that counts the rows it processes, so a guided
  step (conditional and null evaluation as one batch of 2N) counts 2;
- ``quality``: ``zoo.common.metrics.sample_metrics`` (FIDs) and agreement for images, the sliced
  Wasserstein distance to held-out points for 2-D data;
- ``real_floor``: what real training images score on the same metrics (``metrics.floor_and_ceiling``);
- ``evaluate``: all of it under one ``EvalConfig``, used by ``zoo eval`` and the experiments;
- ``Progress``: NFECounter with the bar sampling and likelihoods show on a terminal, in network
  evaluations (one image through the network), with a total and a time left from the first chunk on;
- ``test_set`` / ``bounds`` / ``likelihoods``: every likelihood a formulation defines on a dataset
  (ELBO, probability-flow ODE, IWAE ...) on the same recorded test images, for the zoo table.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.common.config import check
from zoo.common.data import is_binary, is_image, load_dataset, protocol, to_unit
from zoo.common.graphed_net import graphed_network
from zoo.common.metrics import agreement, floor_and_ceiling, nats_to_bpd, sample_metrics, sliced_wasserstein
from zoo.common.utils import module_device


@dataclass(frozen=True)
class EvalConfig:
    n_samples: int = 1000  # generated samples for FID / sliced Wasserstein and the sampling time
    sample_chunk: int = 500  # samples per model.sample call
    fid: bool = True  # sample-quality metrics on the samples
    n_ref: int = 1000  # reference test images of the pixel FID
    n_test: int | None = 1000  # test examples for the likelihood (None: the whole test set, 0: none)
    nll_chunk: int = 250  # test examples per nll call
    elbo_terms: bool = False  # also the ELBO and its parts, where the formulation defines them

    def __post_init__(self):
        check(self.n_samples >= 1, f"eval.n_samples must be >= 1, got {self.n_samples}")
        check(self.sample_chunk >= 1, f"eval.sample_chunk must be >= 1, got {self.sample_chunk}")
        check(self.n_ref >= 2, f"eval.n_ref must be >= 2, got {self.n_ref}")
        check(self.n_test is None or self.n_test >= 0, f"eval.n_test must be None or >= 0, got {self.n_test}")
        check(self.nll_chunk >= 1, f"eval.nll_chunk must be >= 1, got {self.nll_chunk}")


class NFECounter:
    """Counts the rows a formulation's network processes (a forward hook): NFE per sample = rows / n."""

    def __init__(self, model: nn.Module):
        self.net = getattr(model, getattr(model, "NETWORK", "net"))
        self.rows = 0

    def _hook(self, module, inputs, output) -> None:
        self.rows += inputs[0].shape[0]

    def __enter__(self) -> "NFECounter":
        self.handle = self.net.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> bool:
        self.handle.remove()
        return False

    def per_sample(self, n: int) -> float:
        nfe = self.rows / n
        return int(nfe) if nfe == int(nfe) else nfe


class Progress(NFECounter):
    """NFECounter with a tqdm bar on stderr of the images the network processes, for a loop over `n`
    items (samples, test examples) in chunks. Its total, n x the evaluations per item of the chunks
    so far, is set after each chunk, so the time left shows from the first chunk on (a sampler's NFE
    or a bound's evaluations per example are not known before). Shown when `show` is True, or when
    None and stderr is a terminal (the Trainer's rule)."""

    def __init__(self, model: nn.Module, desc: str, n: int, show: bool | None = None):
        super().__init__(model)
        self.n, self.items = n, 0
        show = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(desc=desc, unit=" evals", unit_scale=True, disable=not show, leave=False, dynamic_ncols=True)

    def _hook(self, module, inputs, output) -> None:
        super()._hook(module, inputs, output)
        self.bar.update(inputs[0].shape[0])

    def chunk_done(self, k: int) -> None:
        """`k` more of the n items are done."""
        self.items += k
        self.bar.total = max(round(self.rows * self.n / self.items), self.rows)
        self.bar.refresh()

    def __exit__(self, *exc) -> bool:
        super().__exit__(*exc)
        self.bar.close()
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Samples:
    """Samples in the data view (on the CPU), network evaluations per sample and wall seconds."""

    x: torch.Tensor
    nfe: float
    seconds: float

    @property
    def seconds_per_1000(self) -> float:
        return self.seconds * 1000 / len(self.x)


_GRAPH_SAMPLING: ContextVar[bool] = ContextVar("zoo_graph_sampling", default=False)


@contextlib.contextmanager
def graph_sampling(enabled: bool = True):
    """Within the block, ``draw`` runs each model's network as CUDA graphs unless told otherwise
    (``zoo run NAME --cuda-graph``: how a run executes, like train.cuda_graph)."""
    token = _GRAPH_SAMPLING.set(enabled)
    try:
        yield
    finally:
        _GRAPH_SAMPLING.reset(token)


@torch.no_grad()
def draw(model: nn.Module, n: int, chunk: int = 500, generator: torch.Generator | None = None,
         x_T: torch.Tensor | None = None, progress: bool | None = None, cuda_graph: bool | None = None,
         **kw) -> Samples:
    """n samples through ``model.sample``, `chunk` at a time (slices of `x_T` where given), timed and
    counted; `progress` the bar's rule (``Progress``). `cuda_graph`: the formulation's network captured
    as CUDA graphs and replayed at every step (``zoo.common.graphed_net``; the capture counts in the
    time); None follows ``graph_sampling``."""
    device, outs = module_device(model), []
    graph = _GRAPH_SAMPLING.get() if cuda_graph is None else cuda_graph
    with graphed_network(model, device) if graph else contextlib.nullcontext(), \
            Progress(model, f"sampling {n}", n, progress) as counter:
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            start = None if x_T is None else x_T[i:i + m]
            chunk_kw = {k: (v[i:i + m] if torch.is_tensor(v) and v.shape[:1] == (n,) else v) for k, v in kw.items()}
            outs.append(model.sample(m, x_T=start, generator=generator, **chunk_kw).cpu())
            counter.chunk_done(m)
        _sync(device)
        seconds = time.perf_counter() - t0
    return Samples(torch.cat(outs), counter.per_sample(n), seconds)


def quality(x: torch.Tensor, dataset: str, n_ref: int = 1000, labels: torch.Tensor | None = None,
            reference: torch.Tensor | None = None) -> dict[str, float]:
    """Sample quality of x (data view): FIDs (+ agreement with `labels`) for images, else the sliced
    Wasserstein distance to `reference` points (default: the dataset's test split)."""
    if not is_image(dataset):
        ref = reference if reference is not None else load_dataset(dataset, "test")[0]
        return {"sliced_wasserstein": sliced_wasserstein(x, ref)}
    unit = to_unit(x, dataset)
    out = sample_metrics(unit, binarised=is_binary(dataset), n_ref=n_ref)
    if labels is not None:
        out["agreement"] = agreement(unit, labels)
    return out


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error over examples."""
    x = x.double()
    return x.mean().item(), (x.std().item() / math.sqrt(len(x))) if len(x) > 1 else float("nan")


@torch.no_grad()
def likelihood(model: nn.Module, test: tuple[torch.Tensor, ...], chunk: int = 250,
               generator: torch.Generator | None = None, terms: bool = False,
               progress: bool | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(summary, per-example tensors) of ``nll`` (nats, and bits/dim for images) over `test`, and with
    `terms` the -ELBO (``elbo_terms``: its total and the mean of every part) where defined;
    `progress` the bar's rule (``Progress``)."""
    device, n = module_device(model), len(test[0])
    batches = [tuple(d[i:i + chunk].to(device) for d in test) for i in range(0, n, chunk)]
    per: dict[str, torch.Tensor] = {}
    summary: dict[str, Any] = {"n_test": n}
    if terms and hasattr(model, "elbo_terms"):
        parts = _chunked(model, f"-ELBO of {n} test examples", n, batches,
                         lambda b: model.elbo_terms(b, generator=generator), progress)
        for key in parts[0]:
            per[f"elbo_{key}"] = torch.cat([p[key].cpu() for p in parts])
            summary[f"elbo_{key}"] = per[f"elbo_{key}"].double().mean(0).tolist()
        summary["elbo_nats"], summary["elbo_se"] = mean_se(per["elbo_total"])
    if "elbo_total" in per and getattr(model, "NLL_IS_ELBO", False):
        per["nll"] = per["elbo_total"]
    else:
        per["nll"] = torch.cat([r.cpu() for r in _chunked(model, f"NLL of {n} test examples", n, batches,
                                                         lambda b: model.nll(b, generator=generator), progress)])
    summary["nll_nats"], summary["nll_se"] = mean_se(per["nll"])
    if test[0].ndim == 4:  # images: bits per dimension too
        dims = test[0][0].numel()
        summary["bits_per_dim"], summary["bits_per_dim_se"] = mean_se(nats_to_bpd(per["nll"], dims))
    return summary, per


def _chunked(model: nn.Module, desc: str, n: int, batches: list, fn: Callable, progress: bool | None) -> list:
    """[fn(b) for b in batches] under a ``Progress`` bar over the n examples they hold."""
    out = []
    with Progress(model, desc, n, progress) as bar:
        for b in batches:
            out.append(fn(b))
            bar.chunk_done(len(b[0]))
    return out


def real_floor(dataset: str, n: int, n_ref: int = 1000, ceiling: bool = False, seed: int = 0) -> dict[str, Any]:
    """What n real training images score (classifier / pixel FID, total variation): the floor a
    model can reach at the same sample count; with `ceiling`, uniform noise's scores too."""
    res = floor_and_ceiling(n, binarised=is_binary(dataset), seed=seed, n_ref=n_ref, ceiling=ceiling)
    out = {k[len("train_"):]: v for k, v in res.items() if k.startswith("train_")}
    if ceiling:
        out["ceiling"] = {k[len("noise_"):]: v for k, v in res.items() if k.startswith("noise_")}
    return out


@torch.no_grad()
def evaluate(model: nn.Module, dataset: str, cfg: EvalConfig = EvalConfig(), seed: int = 0,
             sample_kw: dict[str, Any] | None = None, num_classes: int = 0) -> dict[str, Any]:
    """Likelihood on test data (where the model defines nll), sample quality, NFE and seconds."""
    device = module_device(model)
    result: dict[str, Any] = {}
    if hasattr(model, "nll") and cfg.n_test != 0:
        test = load_dataset(dataset, "test", limit=cfg.n_test, seed=seed)
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        summary, _ = likelihood(model, test, cfg.nll_chunk, gen, terms=cfg.elbo_terms)
        result.update(summary)
    kw = dict(sample_kw or {})
    labels = None
    if num_classes:  # a class-conditional model: ask for every class in turn and check agreement
        labels = kw.setdefault("labels", torch.arange(cfg.n_samples) % num_classes)
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = draw(model, cfg.n_samples, cfg.sample_chunk, gen, **kw)
    result.update(nfe=samples.nfe, sample_seconds_per_1000=samples.seconds_per_1000)
    if cfg.fid:
        result.update(quality(samples.x, dataset, cfg.n_ref, labels=None if labels is None else labels.cpu()))
    return result


# --------------------------------------------------------------------------- every likelihood of a model

Bound = Callable[[tuple[torch.Tensor, ...], torch.Generator], dict[str, torch.Tensor]]


def test_set(dataset: str, n_test: int | None, seed: int = 0) -> tuple[tuple[torch.Tensor], dict[str, Any]]:
    """The first `n_test` test examples of `dataset` (stochastic binarisations: the static draw with
    `seed`) and a record of exactly which: protocol, seed, index range and a SHA-256 of the tensor."""
    x = load_dataset(dataset, "test", limit=n_test, seed=seed)[0]
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]
    return (x,), {"dataset": dataset, "protocol": protocol(dataset) if is_image(dataset) else None, "seed": seed,
                  "indices": [0, len(x)], "sha256": digest}


def bounds(model: nn.Module, dataset: str, ode_steps: int = 64) -> dict[str, Bound]:
    """Every likelihood `model` defines on `dataset`, by kind; each maps (batch, generator) to
    per-example terms in nats with "total":

    - ``elbo``: ``elbo_terms`` (the variational bound);
    - ``ode``: ``ode_terms`` (probability-flow ODE with `ode_steps` steps), on 8-bit grey data only:
      there it is dequantised to a bound on the probability of the 8-bit image, while on {-1, +1}
      data it would be a density of two points, not a probability;
    - ``nll``: ``nll`` where it is neither of those (NLL_IS_ELBO, or the same method as ode_nll),
      e.g. the VAE's IWAE estimate.
    """
    out: dict[str, Bound] = {}
    if hasattr(model, "elbo_terms"):
        out["elbo"] = lambda b, g: model.elbo_terms(b, generator=g)
    if hasattr(model, "ode_terms") and not is_binary(dataset) and is_image(dataset):
        out["ode"] = lambda b, g: model.ode_terms(b, steps=ode_steps, generator=g)
    nll = getattr(type(model), "nll", None)
    if nll is not None and not getattr(model, "NLL_IS_ELBO", False) and nll is not getattr(type(model), "ode_nll", None):
        out["nll"] = lambda b, g: {"total": model.nll(b, generator=g)}
    return out


def likelihoods(model: nn.Module, dataset: str, test: tuple[torch.Tensor, ...], chunk: int = 250, seed: int = 0,
                ode_steps: int = 64, progress: bool | None = None) -> dict[str, dict[str, Any]]:
    """Each of `bounds(model, dataset)` over `test`: mean nats and standard error, bits/dim for images
    (nats / (D ln 2)), the mean of every per-example term, and the seconds it took. Each kind draws
    from its own generator seeded by `seed`; `progress` the bar's rule (``Progress``)."""
    device = module_device(model)
    batches = [tuple(d[i:i + chunk].to(device) for d in test) for i in range(0, len(test[0]), chunk)]
    out = {}
    for kind, fn in bounds(model, dataset, ode_steps).items():
        gen = torch.Generator(device=device).manual_seed(seed)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():  # (the ODE's divergence turns autograd on where it needs it)
            parts = _chunked(model, f"{kind} of {len(test[0])} test examples", len(test[0]), batches,
                             lambda b: {k: v.detach().cpu() for k, v in fn(b, gen).items() if v.ndim == 1}, progress)
        _sync(device)
        terms = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        row: dict[str, Any] = {"n_test": len(test[0]), "seconds": time.perf_counter() - t0}
        row["nats"], row["se"] = mean_se(terms.pop("total"))
        if test[0].ndim == 4:
            dims = test[0][0].numel()
            row["bits_per_dim"], row["bits_per_dim_se"] = row["nats"] / (dims * math.log(2)), row["se"] / (dims * math.log(2))
        row.update({f"mean_{k}": float(v.double().mean()) for k, v in terms.items()})
        out[kind] = row
    return out
