"""`width-sweep` smoke preset on fake MNIST: what the sweep is about (parameter counts by width, the
smallest equal to a count by hand, the stability rule applied to the reported curves) and a rerun
from the written config.json that reproduces metrics.json (wall-clock fields aside) exactly."""

from __future__ import annotations

import json
import math

from experiments import run_experiment
from experiments.width_sweep import PRESETS

# Fields measured by the wall clock, and the ones decided by it: everything else must rerun exactly.
CLOCK = {"seconds", "seconds_per_epoch", "seconds_per_1000_images", "cost_grows_with_width", "verdict"}


def _scorenet_params(c: tuple[int, int, int, int], embed: int = 256) -> int:
    """The seed ScoreNet's trainable parameters, counted layer by layer (zoo.common.nets.ScoreNet)."""
    c0, c1, c2, c3 = c
    time_embedding = embed * embed + embed  # Linear(E, E); the Fourier features are a fixed buffer
    encoder = 9 * (1 * c0 + c0 * c1 + c1 * c2 + c2 * c3)  # four 3x3 convolutions, no bias
    decoder = 9 * (c3 * c2 + 2 * c2 * c1 + 2 * c1 * c0)  # three 3x3 transposed convolutions, no bias
    final = 9 * 2 * c0 * 1 + 1  # 3x3 transposed convolution to one channel, with bias
    widths = (c0, c1, c2, c3, c2, c1, c0)
    dense = sum(embed * n + n for n in widths)  # the time embedding into each block
    norms = sum(2 * n for n in widths)  # GroupNorm weight and bias
    return time_embedding + encoder + decoder + final + dense + norms


def _drop_clock(tree):
    if isinstance(tree, dict):
        return {k: _drop_clock(v) for k, v in tree.items() if k not in CLOCK}
    return tree


def test_width_sweep_smoke(fake_mnist, tmp_path):
    cfg = PRESETS["smoke"]
    m = run_experiment("width-sweep", preset="smoke", out_dir=tmp_path / "a")
    for f in ("config.json", "metrics.json", "log.jsonl", "report.md", "losses.png"):
        assert (tmp_path / "a" / f).exists(), f
    assert not list((tmp_path / "a").glob("*.ckpt"))
    params = {n: m["widths"][n]["params"] for n in ("small", "medium", "large")}
    assert cfg.small == (4, 8, 8, 16) and params["small"] == _scorenet_params(cfg.small) == 85301
    assert params["medium"] == _scorenet_params(cfg.medium) and params["large"] == _scorenet_params(cfg.large)
    assert params["small"] < params["medium"] < params["large"]  # wider is bigger

    # The stability rule, applied to the reported validation curves.
    small = m["widths"]["small"]["val_quantiles"]
    for name in ("medium", "large"):
        r = m["widths"][name]
        assert r["diverged"] is None and len(m["curves"][name]["val"]) == cfg.train.epochs
        q = r["val_quantiles"]
        assert q["min"] <= q["q25"] <= q["median"] <= q["q75"] <= q["max"]
        assert m["unstable"][name] == (q["median"] > 2 * small["median"] or q["variance"] > 10 * small["variance"])
    # rho0, rho1 are learned (their own learning rate): they left their initial value 1.
    assert all(abs(m["widths"][n]["rho0"] - 1) > 1e-4 and abs(m["widths"][n]["rho1"] - 1) > 1e-4 for n in params)
    assert math.isfinite(m["copy_x_t_val_loss"]) and m["copy_x_t_val_loss"] > 0

    # `zoo run width-sweep --config config.json` reproduces the run.
    info = json.loads((tmp_path / "a" / "config.json").read_text())
    again = run_experiment("width-sweep", preset=info["preset"], seed=info["seed"], out_dir=tmp_path / "b",
                           config=info["config"])
    assert json.loads((tmp_path / "b" / "config.json").read_text())["config"] == info["config"]
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert _drop_clock(json.loads((tmp_path / "b" / "metrics.json").read_text())) == _drop_clock(first)
    assert _drop_clock(again) == _drop_clock(m)
