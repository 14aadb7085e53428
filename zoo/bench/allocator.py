"""The host memory policy (zoo/common/allocator.py) against the C library's defaults, each in a fresh
process: the same workloads, run in turn, reported as ratios from one run.

Workloads on the `make demo` Gaussian U-Net, (8, 16) channels, grey MNIST shapes:
- ``forward``: no-grad forwards at a batch (the ELBO evaluates 1024 images per call, the demo's
  sampler 200);
- ``train``: fwd / bwd / Adam steps at a batch (the demo trains at 32).
Each reports images/s, minor page faults per call (getrusage: deterministic, unlike the wall time)
and the process's peak resident memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from zoo.common.allocator import without_malloc_variables

WORKLOADS = ("forward", "train")
DEMO_CHANNELS = (8, 16)


def measure(workload: str, batch_size: int, calls: int, channels=DEMO_CHANNELS, warmup: int = 3) -> dict:
    """Run `workload` in this process: `warmup` calls, then `calls` timed ones on the CPU. (Under the
    policy the heap takes a few calls to settle: torch's aligned allocations ask for slightly more
    than a block just freed until freed blocks have merged.)"""
    import torch

    from zoo.bench.timing import zoo_unet

    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    torch.manual_seed(0)
    model = zoo_unet(channels, torch.device("cpu"))
    x = torch.rand(batch_size, 1, 28, 28) * 2 - 1
    if workload == "forward":
        model.eval()
        t = torch.randint(1, 1001, (batch_size,))

        def call():
            with torch.no_grad():
                model.net(x, t)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def call():
            opt.zero_grad(set_to_none=True)
            model.loss((x,))["loss"].backward()
            opt.step()
    for _ in range(warmup):
        call()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        call()
    seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": batch_size * calls / seconds, "ms_per_call": 1000 * seconds / calls,
            "minor_faults_per_call": (r1.ru_minflt - r0.ru_minflt) / calls,
            "system_ms_per_call": 1000 * (r1.ru_stime - r0.ru_stime) / calls,
            "peak_rss_mb": r1.ru_maxrss / 1024}


def _child(mode: str, workload: str, batch_size: int, calls: int, timeout: float) -> dict | None:
    """`measure` in a fresh process with ZOO_MALLOC=`mode` (None: it timed out or failed)."""
    code = ("import json, sys; from zoo.common.allocator import apply_policy; applied = apply_policy(); "
            "from zoo.bench.allocator import measure; "
            f"r = measure({workload!r}, {batch_size}, {calls}); r['applied'] = applied; print(json.dumps(r))")
    env = {**without_malloc_variables(), "ZOO_MALLOC": mode}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if out.returncode == 0 and lines else None


def allocator_policies(cases=(("forward", 256), ("forward", 1024), ("train", 32)), calls: int = 0,
                       repeats: int = 2, timeout: float = 300.0, on_row=None) -> list[dict]:
    """Each (workload, batch) case under ZOO_MALLOC=system and =keep, alternating for `repeats`
    rounds so that a drift of the machine's speed hits both; the best round of each. `calls` 0: about
    4096 images per forward round, 20 training steps."""
    rows = []
    for workload, batch_size in cases:
        n = calls or (max(3, 4096 // batch_size) if workload == "forward" else 20)
        best: dict[str, dict | None] = {"system": None, "keep": None}
        for _ in range(repeats):
            for mode in best:
                r = _child(mode, workload, batch_size, n, timeout)
                if r is not None and (best[mode] is None or r["images_per_s"] > best[mode]["images_per_s"]):
                    best[mode] = r
        system, keep = best["system"], best["keep"]
        row = {"workload": workload, "batch_size": batch_size, "calls": n, "repeats": repeats,
               "system": system, "keep": keep,
               "speedup": keep["images_per_s"] / system["images_per_s"] if system and keep else None}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
