#!/usr/bin/env python3
"""The prepared GPU check (`make gpu-check`): everything a GPU must show, in one run, one summary.

Run by hand on a machine with one GPU (never by CI or the tests, except its CPU dry run):

1. every experiment's `smoke` preset with `--device DEVICE`, each in its own process;
2. the Trainer and sampler benchmarks (`zoo bench trainer`, `zoo bench sampler`) on DEVICE;
3. the `ddpm-vs-ddim` `paper` preset (its DDPM-1000 classifier FID must be below 3);
4. the tests parametrised by device (the `device` fixture of tests/conftest.py), on DEVICE;

then writes one markdown summary: pass / fail per step, seconds, figures and the key numbers.
Needs no network: the MNIST cache comes with the command (`ZOO_DATA` pointing at it).
`--smoke-only --device cpu` is the dry run the test suite performs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_FID_LIMIT = 3.0  # issue 11: DDPM-1000 classifier FID of the ddpm-vs-ddim paper preset


def run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run a command; (ok, seconds, rc, the last lines of its output)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1),
                              env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        rc, out = proc.returncode, (proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"timed out after {timeout:.0f} s\n" + ((e.stdout or b"").decode(errors="replace")
                                                                if isinstance(e.stdout, bytes) else (e.stdout or ""))
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return {"ok": rc == 0, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": lines[-12:]}


def zoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", *args]


def experiment_names() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from experiments import REGISTRY

    return [e.name for e in sorted(REGISTRY.values(), key=lambda e: e.order)]


def find_fid(metrics: dict, label: str) -> float | None:
    """The classifier FID of the first entry whose key or 'sampler' field starts with `label`."""
    stack = [metrics]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, dict) and "classifier_fid" in v and (str(k).startswith(label)
                                                                      or str(v.get("sampler", "")) == label):
                    return float(v["classifier_fid"])
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default="runs/gpu-check", help="run directories")
    ap.add_argument("--summary", default=None, help="markdown summary (default: OUT/summary.md)")
    ap.add_argument("--smoke-only", action="store_true", help="only the smoke presets (the CPU dry run)")
    ap.add_argument("--only", default=None, help="comma-separated experiment names (default: all)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole check (default 470 on cuda: 8 min on one H100; 1800 on cpu)")
    args = ap.parse_args(argv)
    args.budget = args.budget or (470.0 if args.device == "cuda" else 1800.0)
    per_smoke = 120 if args.device == "cuda" else 400
    out = Path(args.out).resolve()
    summary = Path(args.summary).resolve() if args.summary else out / "summary.md"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731

    env = run([sys.executable, "-c", "import torch; print(torch.__version__, torch.cuda.is_available() and "
               "torch.cuda.get_device_name(0))"], 60)
    data = run(zoo("data", "info"), 60)
    rows, fails = [], 0
    names = experiment_names()
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            ap.error(f"unknown experiments {sorted(unknown)}; choose from {', '.join(names)}")
        names = [n for n in names if n in args.only.split(",")]
    for name in names:
        res = run(zoo("run", name, "--preset", "smoke", "--device", args.device, "--out", str(out / "smoke" / name)),
                  min(per_smoke, left()))
        figs = sorted(p.name for p in (out / "smoke" / name).glob("*.png"))
        rows.append((name, res, figs))
        fails += not res["ok"]
        print(f"smoke {name:18s} {'pass' if res['ok'] else 'FAIL'} {res['seconds']:6.1f} s", flush=True)

    extra = []
    if not args.smoke_only:
        for label, cmd, limit in [
            ("bench trainer", zoo("bench", "trainer", "--device", args.device, "--batch-size", "128"), 90),
            ("bench sampler", zoo("bench", "sampler", "--device", args.device), 90),
        ]:
            res = run(cmd, min(limit, left()))
            extra.append((label, res, ""))
            print(f"{label:24s} {'pass' if res['ok'] else 'FAIL'} {res['seconds']:6.1f} s", flush=True)
        paper = out / "paper" / "ddpm-vs-ddim"
        res = run(zoo("run", "ddpm-vs-ddim", "--preset", "paper", "--device", args.device, "--out", str(paper)),
                  max(left() - 60, 1))
        note = ""
        if res["ok"]:
            fid = find_fid(json.loads((paper / "metrics.json").read_text()), "DDPM")
            res["ok"] = fid is not None and fid < PAPER_FID_LIMIT
            note = f"DDPM-1000 classifier FID {fid:.2f} (must be < {PAPER_FID_LIMIT})" if fid is not None else "no DDPM FID"
        extra.append(("ddpm-vs-ddim paper", res, note))
        print(f"ddpm-vs-ddim paper       {'pass' if res['ok'] else 'FAIL'} {res['seconds']:6.1f} s {note}", flush=True)
        res = run([sys.executable, "-m", "pytest", "-q", "tests", "-p", "no:cacheprovider", "-k", args.device],
                  max(min(120, left()), 1))
        extra.append((f"pytest -k {args.device} (device-parametrised tests)", res, res["tail"][-1] if res["tail"] else ""))
        fails += sum(not r["ok"] for _, r, _ in extra)

    total = time.perf_counter() - start
    lines = [f"# GPU check: {sum(r['ok'] for _, r, _ in rows)}/{len(rows)} experiments pass on `{args.device}`", "",
             f"*`tools/gpu_check.py --device {args.device}{' --smoke-only' if args.smoke_only else ''}`, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, {total:.0f} s in all; torch / device: "
             f"`{' '.join(env['tail'][-1:])}`; python {platform.python_version()}; data: "
             f"`{' '.join(data['tail'][-1:])}`.*", "",
             "| experiment (smoke) | result | seconds | figures | last line |", "|---|---|---|---|---|"]
    for name, res, figs in rows:
        last = (res["tail"][-1] if res["tail"] else "").replace("|", "/")[:120]
        lines.append(f"| {name} | {'pass' if res['ok'] else '**FAIL** (rc ' + str(res['rc']) + ')'} | "
                     f"{res['seconds']} | {len(figs)} | {last if not res['ok'] else ''} |")
    if extra:
        lines += ["", "| step | result | seconds | numbers |", "|---|---|---|---|"]
        for label, res, note in extra:
            body = note or "<br>".join(ln.replace("|", "/") for ln in res["tail"][-4:])
            lines.append(f"| {label} | {'pass' if res['ok'] else '**FAIL** (rc ' + str(res['rc']) + ')'} | "
                         f"{res['seconds']} | {body} |")
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text("\n".join(lines) + "\n")
    print(f"summary: {summary} ({'all pass' if not fails else f'{fails} failed'}, {total:.0f} s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
