"""The prepared GPU check's machinery, on the CPU: tools/gpu_check.py --device cpu --smoke-only.

The full dry run (all eleven smoke presets, each in its own process) repeats what the
per-experiment tests already run, so the suite takes two quick experiments and a failing one;
`python tools/gpu_check.py --device cpu --smoke-only` is the whole dry run, by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check(tmp_path, device: str) -> tuple[subprocess.CompletedProcess, str]:
    """tools/gpu_check.py --smoke-only on schedules and toy2d: (the process, the summary's text)."""
    summary = tmp_path / "summary.md"
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--device", device, "--smoke-only",
           "--out", str(tmp_path / "runs"), "--summary", str(summary), "--only", "schedules,toy2d"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, summary.read_text() if summary.exists() else ""


def test_gpu_check_dry_run_passes_on_cpu(fake_mnist, tmp_path):
    proc, text = _gpu_check(tmp_path, "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 experiments pass on `cpu`" in text and text.count("| pass |") == 2
    assert (tmp_path / "runs" / "smoke" / "toy2d" / "report.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to fail on --device cuda")
def test_gpu_check_reports_a_failure(fake_mnist, tmp_path):
    """On a machine without a GPU every CUDA run fails: FAIL rows with their one-line error, exit 1."""
    proc, text = _gpu_check(tmp_path, "cuda")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0/2 experiments pass on `cuda`" in text and text.count("**FAIL** (rc") == 2
    assert "cuda" in text.lower().split("| last line |")[1]  # the error line names the missing device
