"""The `zoo` command line: listing, running an experiment, one-line errors with the right exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from zoo.cli import main


def _run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("args, code, pattern", [
    (["run", "no-such-experiment"], 2, "unknown experiment 'no-such-experiment'"),
    (["run", "schedules", "--preset", "huge"], 2, "'huge' is not one of"),
    (["run", "schedules", "--set", "nope=1"], 2, "no such option; valid: T, beta_1"),
    (["run", "schedules", "--set", "T=abc"], 2, "expected int"),
    (["run", "schedules", "--set", "T"], 2, "expected key=value"),
    (["run", "schedules", "--seed", "-3"], 2, "--seed"),
    (["no-such-command"], 2, "No such command"),
    (["train", "no-such-formulation"], 2, "unknown formulation"),
    (["sample", "/does/not/exist.ckpt"], 1, "does not exist"),
])
def test_bad_input_is_one_line_with_exit_code(capsys, tmp_path, args, code, pattern):
    if "run" in args:
        args = args + ["--out", str(tmp_path / "r")]
    rc, _, err = _run(capsys, *args)
    assert rc == code
    assert pattern in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda is valid here")
def test_cuda_without_gpu_is_a_usage_error(capsys, tmp_path):
    rc, _, err = _run(capsys, "run", "schedules", "--device", "cuda", "--out", str(tmp_path))
    assert rc == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_missing_data_is_a_runtime_error(capsys, zoo_data):
    rc, _, err = _run(capsys, "data", "info")
    assert rc == 1 and "zoo data fetch" in err and "Traceback" not in err


def test_foreign_checkpoint_is_one_line(capsys, tmp_path):
    torch.save({"something": torch.ones(2)}, tmp_path / "x.ckpt")
    rc, _, err = _run(capsys, "eval", str(tmp_path / "x.ckpt"))
    assert rc == 1 and "not a zoo checkpoint" in err and len(err.strip().splitlines()) == 1


def test_list_and_help(capsys):
    rc, out, _ = _run(capsys, "list")
    assert rc == 0 and "schedules" in out
    for cmd in (["--help"], ["run", "--help"], ["data", "--help"], ["train", "--help"], ["bench", "trainer", "--help"]):
        rc, out, _ = _run(capsys, *cmd)
        assert rc == 0 and "Usage:" in out


def test_schedules_run_directory(capsys, tmp_path):
    out = tmp_path / "sched"
    rc, stdout, _ = _run(capsys, "run", "schedules", "--preset", "smoke", "--out", str(out), "--set", "T=50")
    assert rc == 0 and "report" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["T"] == 50 and cfg["preset"] == "smoke"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["schedules"]) == {"linear", "quadratic", "sigmoid", "cosine"}
    assert metrics["schedules"]["cosine"]["beta_T"] == pytest.approx(0.999)
    report = (out / "report.md").read_text()
    assert "![" in report and (out / "schedules.png").stat().st_size > 10_000
    # --config reruns from the resolved settings
    rc, _, _ = _run(capsys, "run", "schedules", "--config", str(out / "config.json"), "--out", str(tmp_path / "b"))
    assert rc == 0 and json.loads((tmp_path / "b" / "config.json").read_text())["config"]["T"] == 50


def test_console_entry_point_runs_as_a_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "run", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
