"""The eps network's level slope (t = 200) and high-noise error over training, one line per run.

Reads LEVEL_DIR/RUN/epNN/eps_level.json, written by
`../parameterisation-diagnostics/eps_level.py CKPT LEVEL_DIR/RUN/epNN none` (the probe alone) for the
checkpoint kept after epoch NN; writes level_history.png and level_history.json beside this script.
The seed-0 runs' final networks (probed in ../parameterisation-diagnostics/) are drawn as single points.

    python3 docs/results/paper/parameterisation-seeds/level_history.py LEVEL_DIR
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root, here = Path(sys.argv[1]), Path(__file__).parent
history = {}
for run in sorted(p for p in root.iterdir() if p.is_dir()):
    points = []
    for ep in run.glob("ep[0-9]*/eps_level.json"):
        probe = json.loads(ep.read_text())["probe"]
        points.append((int(ep.parent.name[2:]), probe["200"]["slope"], probe["100"]["slope"], probe["200"]["mse"]))
    if points:
        history[run.name] = sorted(points)

fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for name, pts in history.items():
    ep, s200, s100, mse = zip(*pts)
    line, = axes[0].plot(ep, s200, marker="o", ms=3, label=f"{name}, t = 200")
    axes[0].plot(ep, s100, ls="--", color=line.get_color(), lw=0.8)
    axes[1].plot(ep, mse, marker="o", ms=3, color=line.get_color(), label=name)
diagnostics = here.parent / "parameterisation-diagnostics"
for folder, step, marker in (("level-padded-unit", 20, "*"), ("level-padded-unit-s30", 30, "X")):
    slope = json.loads((diagnostics / folder / "eps_level.json").read_text())["probe"]["200"]["slope"]
    axes[0].plot([60], [slope], marker=marker, ms=10, ls="", color="k", label=f"seed 0, StepLR {step}, final")
axes[0].axhline(1.0, color="k", lw=0.6)
axes[0].set(xlabel="epoch", ylabel="level slope at t = 200 (ideal 1)",
            title="eps_hat against x_t's mean level (dashed: t = 100)")
axes[1].set(xlabel="epoch", ylabel="MSE of eps_hat at t = 200", yscale="log", title="High-noise error")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
fig.savefig(here / "level_history.png", dpi=110, bbox_inches="tight")
(here / "level_history.json").write_text(json.dumps(history, indent=1) + "\n")
for name, pts in history.items():
    print(name, " ".join(f"{e}:{s:.2f}" for e, s, _, _ in pts))
