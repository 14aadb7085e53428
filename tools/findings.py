#!/usr/bin/env python3
"""Refresh README.md's findings table from the committed results (`.venv/bin/python tools/findings.py`, torch needed).

Reads docs/results/NAME/ (quick presets, this 2-core CPU) and docs/results/paper/NAME/ (paper
budgets, on the machine each config.json names): each metrics.json's verdict and each config.json's
budget, and writes the table between the `<!-- findings -->` markers of README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MACHINES = {"cuda": "one H100", "cpu": "2-core CPU"}


def _budgets(train: dict) -> list[str]:
    """'N epochs' or 'N steps', with the batch, of every TrainConfig in a config's `train` tree."""
    if "batch_size" in train:
        n, unit = (train["steps"], "step") if train.get("steps") else (train["epochs"], "epoch")
        size = f"{n} {unit}{'s' if n != 1 else ''}"
        return [f"{size}, batch {train['batch_size']}"]
    return [b for v in train.values() if isinstance(v, dict) for b in _budgets(v)]


def budget(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    parts = sorted(set(_budgets(cfg["config"].get("train", {})))) or ["no training"]
    where = MACHINES.get(cfg.get("device"), cfg.get("device", "?"))
    return f"{' / '.join(parts)} ({where})"


def cell(run: Path) -> str:
    if not (run / "metrics.json").exists():
        return "not run"
    v = json.loads((run / "metrics.json").read_text()).get("verdict") or {}
    rel = run.relative_to(ROOT)
    return f"[**{v.get('reproduced', '?')}**]({rel}/report.md), {budget(run)}"


def table() -> str:
    sys.path.insert(0, str(ROOT))
    from experiments import REGISTRY

    lines = ["| experiment | quick preset | paper budget | criterion, as written in the experiment |",
             "|---|---|---|---|"]
    for exp in sorted(REGISTRY.values(), key=lambda e: e.order):
        quick, paper = RESULTS / exp.name, RESULTS / "paper" / exp.name
        # The criterion as the experiment writes it now: quick results are the ones rerun at each change.
        source = quick if (quick / "metrics.json").exists() else paper
        crit = (json.loads((source / "metrics.json").read_text()).get("verdict") or {}).get("criterion", "") \
            if (source / "metrics.json").exists() else ""
        same = exp.presets["paper"] == exp.presets["quick"] and not (paper / "metrics.json").exists()
        paper_cell = "the quick preset is the paper budget" if same else cell(paper)
        lines.append(f"| {exp.name} | {cell(quick)} | {paper_cell} | {crit.replace('|', '/')} |")
    return "\n".join(lines)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- findings -->\n", "<!-- /findings -->"
    if start not in text or end not in text:
        print("README.md lacks the <!-- findings --> markers", file=sys.stderr)
        return 1
    head, rest = text.split(start, 1)
    readme.write_text(head + start + table() + "\n" + end + rest.split(end, 1)[1])
    print("README.md findings table refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
