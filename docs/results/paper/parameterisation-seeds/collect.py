"""The eps rows of several `parameterisation` paper-preset runs as one markdown table.

Each argument is a run folder (its config.json and metrics.json), optionally followed by `:LEVEL`, the
folder of that run's final checkpoint probed by ../parameterisation-diagnostics/eps_level.py
(eps_level.json: the network's level slope, and the spread of the per-image mean level over 1000 samples
from the run's own noise).

    python3 docs/results/paper/parameterisation-seeds/collect.py RUN[:LEVEL] ...
"""

import json
import sys
from pathlib import Path


def row(arg: str) -> str:
    run, _, level = arg.partition(":")
    cfg = json.loads((Path(run) / "config.json").read_text())
    m = json.loads((Path(run) / "metrics.json").read_text())
    r = m["results"]["eps"]
    cells = [str(cfg["config"]["train"]["step_size"]), str(cfg["seed"]), f"{r['final_train_loss']:.3f}",
             f"{r['pixel_fid']:.1f}", f"{r['classifier_fid']:.1f}"]
    if level:
        lv = json.loads((Path(level) / "eps_level.json").read_text())
        probe, net, lc = lv["probe"], lv["samples"]["network"], lv["samples"]["level-corrected"]
        cells += [f"{net['level_std']:.3f} (real {lv['data_level_std']:.3f})", f"{probe['200']['slope']:.2f} / {probe['100']['slope']:.2f}",
                  f"{lc['pixel_fid']:.1f} / {lc['classifier_fid']:.1f}"]
    else:
        cells += ["", "", ""]
    return "| " + " | ".join(cells + [f"`{run}`"]) + " |"


print("| StepLR step | seed | final train loss | pixel FID | classifier FID | std of the samples' mean level | level slope t = 200 / 100 "
      "| pixel / classifier FID, level corrected | run |")
print("|---|---|---|---|---|---|---|---|---|")
for a in sys.argv[1:]:
    print(row(a))
