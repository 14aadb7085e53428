"""Is the eps network blind to the image's mean level (its DC mode), and is that why its samples saturate?

1. Probe: at several t, regress the per-image mean of eps_hat on the per-image mean of the true eps,
   and measure d mean(eps_hat) / d c when a constant c is added to x_t. The ideal values are those of
   the posterior mean E[mean(eps) | mean(x_t)] (below): ~1 for both where x_t is mostly noise (t above
   ~90 here), small where the image's own level dominates.
2. The sampler's DC mode without that response: with mean(eps_hat) = 0, the image mean follows
   m_{t-1} = m_t / sqrt(alpha_t) + sqrt(beta_t) z / 28 in the seed's DDPM step (variance beta_t), so its
   final std is sqrt(1/alpha_bar_T + sum_t beta_t / alpha_bar_{t-1}) / 28 (computed below; 8.8 pixel
   units for T = 200, beta 1e-4..0.1), against 0.087 for real digits on [-1, 1]: black or white images.
3. Resample from the run's noise with only that one mode replaced: mean(eps_hat) is set to its
   posterior mean given mean(x_t), from a Gaussian fit of the training images' means (a 1-D
   computation, no network). Every other direction of eps_hat is the network's.

    PYTHONPATH=. python docs/results/paper/parameterisation-diagnostics/eps_level.py EPS_CKPT OUT_DIR [NOISE_SEED]

NOISE_SEED (default 1) seeds the sampling noise: the run's own is its seed + 1; `none` runs the probe
only (parts 1 and 2, no sampling).
"""

import json
import sys
from pathlib import Path

import torch

from experiments.plotting import grid_figure
from zoo.common.data import load_dataset, to_unit
from zoo.evaluation import draw, quality
from zoo.workflows import load_model

ckpt, out = sys.argv[1], Path(sys.argv[2])
noise_seed = None if sys.argv[3:] == ["none"] else int(sys.argv[3]) if len(sys.argv) > 3 else 1
out.mkdir(parents=True, exist_ok=True)
_, cfg, model = load_model(ckpt)
model.eval()
ab = model.process.alpha_bars  # float64, ab[t - 1] = alpha_bar_t
betas = model.process.betas
D = 28 * 28
train = load_dataset(cfg.data, "train", limit=10000)[0]
level = train.mean((1, 2, 3)).double()
mu_m, var_m = float(level.mean()), float(level.var())


def level_gain(a: torch.Tensor) -> torch.Tensor:
    """d E[mean(eps) | mean(x_t)] / d mean(x_t) at alpha_bar a: mean(x_t) = sqrt(a) m0 + sqrt(1 - a) m_eps
    with the image level m0 ~ N(mu_m, var_m) and the noise's m_eps ~ N(0, 1/D), independent."""
    return (1 - a).sqrt() / D / (a * var_m + (1 - a) / D)


# 1. the probe
test = load_dataset(cfg.data, "test", limit=500)[0]
g = torch.Generator().manual_seed(0)
probe = {}
for t in (200, 150, 100, 60, 30, 10):
    a = float(ab[t - 1])
    eps = torch.randn(test.shape, generator=g)
    x_t = a ** 0.5 * test + (1 - a) ** 0.5 * eps
    tt = torch.full((test.shape[0],), t, dtype=torch.long)
    with torch.no_grad():
        e, e_shift = model.eps(x_t, tt), model.eps(x_t + 0.1, tt)
    m_true, m_hat = eps.mean((1, 2, 3)), e.mean((1, 2, 3))
    dm = m_true - m_true.mean()
    gain = float(level_gain(torch.tensor(a, dtype=torch.float64)))
    probe[t] = {"alpha_bar": a, "mse": float((e - eps).pow(2).mean()),
                "slope": float(((m_hat - m_hat.mean()) * dm).sum() / dm.pow(2).sum()),
                "ideal_slope": gain * (1 - a) ** 0.5,
                "response": float((e_shift - e).mean() / 0.1), "ideal_response": gain}

# 2. the DC mode's final spread when mean(eps_hat) = 0 (the seed's variance beta_t)
ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
final_std = float((1 / ab[-1] + (betas[1:] / ab_prev[1:]).sum()).sqrt() / 28)


# 3. resample with mean(eps_hat) replaced by E[mean(eps) | mean(x_t)]
class LevelCorrected(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t_frac, y=None):
        e = self.net(x, t_frac, y)
        t = (t_frac.double() * cfg.T).round().long().clamp(1, cfg.T)
        a = ab.to(x.device)[t - 1]
        m_eps = level_gain(a) * (x.double().mean((1, 2, 3)) - a.sqrt() * mu_m)
        return e - e.mean((1, 2, 3), keepdim=True) + m_eps.to(e.dtype)[:, None, None, None]


rows = {}
if noise_seed is not None:
    panels, network = {}, model.net
    for name, net in (("network", network), ("level-corrected", LevelCorrected(network))):
        model.net = net  # the sampler calls model.net: only the mean of eps_hat differs between the two
        res = draw(model, 1000, 500, torch.Generator().manual_seed(noise_seed))  # the run's noise: its seed + 1
        q = quality(res.x, cfg.data, 1000)
        level = res.x.mean((1, 2, 3))  # in data units, as data_level_std
        unit = to_unit(res.x, cfg.data).mean((1, 2, 3))  # blank: nearly all black or all white
        rows[name] = {**q, "level_std": float(level.std()), "blank": float(((unit < 0.025) | (unit > 0.975)).float().mean())}
        panels[f"eps, mean(eps_hat) from the {name}: pixel FID {q['pixel_fid']:.2f}, "
               f"classifier FID {q['classifier_fid']:.2f}"] = to_unit(res.x[:64], cfg.data)
    grid_figure(panels, nrow=8).savefig(out / "eps_level.png", dpi=110, bbox_inches="tight")
result = {"checkpoint_arch": cfg.arch, "data_level_mean": mu_m, "data_level_std": var_m ** 0.5,
          "probe": probe, "dc_mode_final_std_if_blind": final_std, "samples": rows}
(out / "eps_level.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
