"""The full-budget eps model (docs/results/paper/parameterisation-grey/) sampled again from the same noise,
with x0_hat clamped to [-1, 1] (and eps re-derived) at every DDPM step instead of unclamped as the seed
samples. Run from the repository root with the run's final eps checkpoint:

    PYTHONPATH=. python docs/results/paper/parameterisation-diagnostics/eps_clamped.py EPS_CKPT OUT_DIR
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from experiments.plotting import grid_figure
from zoo.common.data import to_unit
from zoo.evaluation import draw, quality
from zoo.gaussian.model import GaussianDiffusion
from zoo.workflows import load_model

ckpt, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
_, cfg, unclamped = load_model(ckpt)
rows, panels = {}, {}
for clip in (False, True):
    model = GaussianDiffusion(replace(cfg, clip_x0=clip))
    model.load_state_dict(unclamped.state_dict())
    model.eval()
    res = draw(model, 1000, 500, torch.Generator().manual_seed(1))  # the run's noise (seed 0 + 1)
    rows["clamped" if clip else "unclamped"] = q = quality(res.x, cfg.data, 1000)
    panels[f"eps, x0_hat {'clamped' if clip else 'unclamped'}: pixel FID {q['pixel_fid']:.2f}, "
           f"classifier FID {q['classifier_fid']:.2f}"] = to_unit(res.x[:64], cfg.data)
grid_figure(panels, nrow=8).savefig(out / "eps_clamped.png", dpi=110, bbox_inches="tight")
(out / "eps_clamped.json").write_text(json.dumps(rows, indent=1) + "\n")
print(json.dumps(rows, indent=1))
