"""The level probe (`../parameterisation-diagnostics/eps_level.py CKPT OUT none`) of the x0 and v networks beside
the four probed eps networks of the same preset: level slope and eps error against t.

    python3 docs/results/paper/parameterisation-x0-v/plot_probe.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
DIAG = HERE.parent / "parameterisation-diagnostics"
RUNS = {  # label -> probe json
    "eps, seed 0, StepLR 20 (digits)": DIAG / "level-padded-unit" / "eps_level.json",
    "eps, seed 0, StepLR 30": DIAG / "level-padded-unit-s30" / "eps_level.json",
    "eps, seed 1, StepLR 20": DIAG / "level-padded-unit-s20-seed1" / "eps_level.json",
    "eps, seed 1, StepLR 30": DIAG / "level-padded-unit-s30-seed1" / "eps_level.json",
    "x0, seed 0, StepLR 30": HERE / "x0" / "level_probe.json",
    "v, seed 0, StepLR 30 (digits)": HERE / "v" / "level_probe.json",
    "v, seed 1, StepLR 30 (digits)": HERE / "v-seed1" / "level_probe.json",
    "v, seed 2, StepLR 30 (digits)": HERE / "v-seed2" / "level_probe.json",
}

fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
for label, path in RUNS.items():
    if not path.exists():
        continue
    probe = json.loads(path.read_text())["probe"]
    ts = sorted(int(t) for t in probe)
    style = dict(marker="o", ms=3, ls="--" if label.startswith("eps") else "-",
                 lw=1 if label.startswith("eps") else 2)
    a.plot(ts, [probe[str(t)]["slope"] for t in ts], label=label, **style)
    b.plot(ts, [probe[str(t)]["mse"] for t in ts], label=label, **style)
a.plot(ts, [probe[str(t)]["ideal_slope"] for t in ts], color="k", lw=3, alpha=0.3, label="ideal (posterior mean)")
a.set(xlabel="step t (T = 200 is noise)", ylabel="level slope of mean(eps_hat)",
      title="Does eps_hat follow the noise's mean level?")
b.set(xlabel="step t", ylabel="mean squared error of eps_hat", yscale="log", title="eps error, every direction")
for ax in (a, b):
    ax.grid(alpha=0.3)
a.legend(fontsize=7)
fig.tight_layout()
fig.savefig(HERE / "level_probe.png", dpi=110)
print(HERE / "level_probe.png")
