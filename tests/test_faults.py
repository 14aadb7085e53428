"""Fault suite (issue 17): every bad input is one line on stderr with the right exit code, no
traceback and no file written; a SIGKILLed run resumes bit-identically; one writer per run
directory; a full disk is one line and keeps the previous checkpoint.

Bad command lines run through ``zoo.cli.main`` in-process (a subprocess only where a second
process is the point: the kill and the lock holder).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_fake_mnist
from zoo.cli import main

TINY = ["--set", "channels=8,16", "--set", "T=20", "--train", "max_steps=3", "--train", "batch_size=8",
        "--limit", "64"]
ROOT = Path(__file__).resolve().parents[1]


def run_main(args: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit code, non-empty stderr lines, stdout) of ``zoo ARGS`` in this process."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.strip()], out


def snapshot(*dirs: Path) -> dict[str, float]:
    """Every file under `dirs` with its mtime (to assert that nothing was written)."""
    return {str(p): p.stat().st_mtime_ns for d in dirs if d.exists() for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fake MNIST cache for the module ($ZOO_DATA), restored afterwards."""
    from zoo.common import data

    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ZOO_DATA")
    os.environ["ZOO_DATA"] = str(path)
    data._store(make_fake_mnist())
    yield path
    if old is None:
        os.environ.pop("ZOO_DATA", None)
    else:
        os.environ["ZOO_DATA"] = old


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """A tiny gaussian run directory with its train.ckpt (the input of sample/eval/resume faults)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context():
        try:
            main(["train", "gaussian", *TINY, "--out", str(out)])
        except SystemExit as e:
            assert e.code in (0, None)
    assert (out / "train.ckpt").exists()
    return out


def bad_checkpoints(tmp: Path, good: Path) -> dict[str, Path]:
    """Damaged checkpoints: garbage bytes, no marker, marker without keys, a foreign config."""
    ckpt = torch.load(good, weights_only=True)
    out = {}
    (tmp / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    out["garbage"] = tmp / "garbage.ckpt"
    torch.save({"model": {}}, tmp / "nomarker.ckpt")
    out["nomarker"] = tmp / "nomarker.ckpt"
    torch.save({"format": ckpt["format"]}, tmp / "nokeys.ckpt")
    out["nokeys"] = tmp / "nokeys.ckpt"
    foreign = dict(ckpt, meta={"formulation": "gaussian", "config": {**ckpt["meta"]["config"], "nosuch": 1}})
    torch.save(foreign, tmp / "foreign.ckpt")
    out["foreign"] = tmp / "foreign.ckpt"
    other = dict(ckpt, meta={"formulation": "nosuch", "config": {}})
    torch.save(other, tmp / "otherform.ckpt")
    out["otherform"] = tmp / "otherform.ckpt"
    wrong = dict(ckpt, model="weights")
    torch.save(wrong, tmp / "wrongtype.ckpt")
    out["wrongtype"] = tmp / "wrongtype.ckpt"
    return out


# --------------------------------------------------------------------------- the table
# (command line with OUT for the output dir and CKPT for the trained checkpoint, exit code, pattern)

TRAIN = ["train", "gaussian", *TINY, "--out", "OUT"]
SAMPLE = ["sample", "CKPT", "-n", "4", "--out", "OUT/s.png"]
CASES = [
    # gaussian model config (--set)
    (TRAIN + ["--set", "T=0"], 2, "T must be"),
    (TRAIN + ["--set", "T=-5"], 2, "T must be"),
    (TRAIN + ["--set", "T=abc"], 2, "expected int"),
    (TRAIN + ["--set", "schedule=bogus"], 2, "choose from"),
    (TRAIN + ["--set", "channels="], 2, "channels must be"),
    (TRAIN + ["--set", "channels=0,8"], 2, "channels must be"),
    (TRAIN + ["--set", "beta_T=nan"], 2, "beta_T must be"),
    (TRAIN + ["--set", "beta_T=2"], 2, "beta_T must be"),
    (TRAIN + ["--set", "beta_1=0"], 2, "beta_1 must be"),
    (TRAIN + ["--set", "beta_1=inf"], 2, "beta_1 must be"),
    (TRAIN + ["--set", "label_dropout=2"], 2, "label_dropout"),
    (TRAIN + ["--set", "label_dropout=nan"], 2, "label_dropout"),
    (TRAIN + ["--set", "eta=nan"], 2, "eta must be"),
    (TRAIN + ["--set", "steps=0"], 2, "steps must be"),
    (TRAIN + ["--set", "steps=50"], 2, "steps must be"),
    (TRAIN + ["--set", "param=bogus"], 2, "choose from"),
    (TRAIN + ["--set", "sampler=bogus"], 2, "choose from"),
    (TRAIN + ["--set", "zero_terminal_snr=true"], 2, "zero_terminal_snr"),
    (TRAIN + ["--set", "zero_terminal_snr=maybe"], 2, "true or false"),
    (TRAIN + ["--set", "cosine_s=-1"], 2, "cosine_s"),
    (TRAIN + ["--set", "vlb_weight=-1"], 2, "vlb_weight"),
    (TRAIN + ["--set", "num_classes=-1"], 2, "num_classes"),
    (TRAIN + ["--set", "hidden=0"], 2, "hidden"),
    (TRAIN + ["--set", "rho_lr=-1"], 2, "rho_lr"),
    (TRAIN + ["--set", "data=bogus"], 2, "choose from"),
    (TRAIN + ["--set", "nosuch=1"], 2, "no such option"),
    (TRAIN + ["--set", "T"], 2, "key=value"),
    # train config (--train)
    (TRAIN + ["--train", "batch_size=0"], 2, "batch_size"),
    (TRAIN + ["--train", "batch_size=-8"], 2, "batch_size"),
    (TRAIN + ["--train", "log_every=0"], 2, "log_every"),
    (TRAIN + ["--train", "lr=nan"], 2, "train.lr"),
    (TRAIN + ["--train", "lr=0"], 2, "train.lr"),
    (TRAIN + ["--train", "lr=-1"], 2, "train.lr"),
    (TRAIN + ["--train", "optimizer=bogus"], 2, "choose from"),
    (TRAIN + ["--train", "epochs=0"], 2, "epochs"),
    (TRAIN + ["--train", "epochs=-1"], 2, "epochs"),
    (TRAIN + ["--train", "grad_clip=-1"], 2, "grad_clip"),
    (TRAIN + ["--train", "grad_clip=nan"], 2, "grad_clip"),
    (TRAIN + ["--train", "ema_decay=2"], 2, "ema_decay"),
    (TRAIN + ["--train", "ema_decay=-0.5"], 2, "ema_decay"),
    (TRAIN + ["--train", "ema_decay=1"], 2, "ema_decay"),
    (TRAIN + ["--train", "weight_decay=-1"], 2, "weight_decay"),
    (TRAIN + ["--train", "lr_schedule=bogus"], 2, "choose from"),
    (TRAIN + ["--train", "warmup_steps=-1"], 2, "warmup_steps"),
    (TRAIN + ["--train", "max_steps=0"], 2, "max_steps"),
    (TRAIN + ["--train", "steps=0"], 2, "steps"),
    (TRAIN + ["--train", "gamma=0"], 2, "gamma"),
    (TRAIN + ["--train", "val_every=-1"], 2, "val_every"),
    (TRAIN + ["--train", "ckpt_every=-1"], 2, "ckpt_every"),
    (TRAIN + ["--train", "nosuch=1"], 2, "no such option"),
    # command-line options
    (["train", "gaussian", *TINY, "--out", ""], 2, "empty"),
    (["train", "gaussian", *TINY, "--out", "/proc/x"], 2, "cannot write"),
    (TRAIN + ["--device", "bogus"], 2, "bogus"),
    (TRAIN + ["--seed", "-1"], 2, "seed"),
    (TRAIN + ["--limit", "0"], 2, "limit"),
    (["train", "nosuch", "--out", "OUT"], 2, "unknown formulation"),
    (["nosuch-command"], 2, "No such command"),
    # other formulations
    (["train", "binary", "--set", "T=0", "--out", "OUT"], 2, "T must be"),
    (["train", "binary", "--set", "delta=0.9", "--out", "OUT"], 2, "delta"),
    (["train", "binary", "--set", "data=mnist-grey", "--out", "OUT"], 2, "binary data"),
    (["train", "binary", "--set", "parameterisation=bogus", "--out", "OUT"], 2, "choose from"),
    (["train", "absorbing", "--set", "power=0", "--out", "OUT"], 2, "power"),
    (["train", "absorbing", "--set", "steps=500", "--out", "OUT"], 2, "steps"),
    (["train", "absorbing", "--set", "loss=bogus", "--out", "OUT"], 2, "choose from"),
    (["train", "ve", "--set", "dt=0.3", "--out", "OUT"], 2, "whole number"),
    (["train", "ve", "--set", "sigma_q=-1", "--out", "OUT"], 2, "sigma_q"),
    (["train", "ve", "--set", "data=bogus", "--out", "OUT"], 2, "choose from"),
    (["train", "vae", "--set", "latent_dim=0", "--out", "OUT"], 2, "latent_dim"),
    (["train", "vae", "--set", "likelihood=bogus", "--out", "OUT"], 2, "choose from"),
    (["train", "vae", "--set", "data=mnist-grey", "--out", "OUT"], 2, "choose from"),
    (["train", "vae", "--set", "gaussian_sigma=nan", "--set", "likelihood=gaussian",
      "--set", "data=mnist-unit", "--out", "OUT"], 2, "gaussian_sigma"),
    # experiments
    (["run", "toy2d", "--preset", "smoke", "--set", "epochs=-1", "--out", "OUT"], 2, "epochs"),
    (["run", "toy2d", "--preset", "smoke", "--set", "nosuch=1", "--out", "OUT"], 2, "no such option"),
    (["run", "toy2d", "--preset", "bogus", "--out", "OUT"], 2, "bogus"),
    (["run", "nosuch", "--out", "OUT"], 2, "unknown experiment"),
    (["run", "toy2d", "--preset", "smoke", "--out", ""], 2, "empty"),
    # sampling keywords and options
    (SAMPLE + ["--kw", "sampler=bogus"], 2, "choose from"),
    (SAMPLE + ["--kw", "nosuch=1"], 2, "not a sampler keyword"),
    (SAMPLE + ["--kw", "eta=nan"], 2, "finite"),
    (SAMPLE + ["--kw", "steps=0"], 2, "steps must be"),
    (SAMPLE + ["--kw", "steps=abc"], 2, "steps must be"),
    (SAMPLE + ["--kw", "spacing=bogus"], 2, "choose from"),
    (SAMPLE + ["--kw", "w=inf"], 2, "finite"),
    (SAMPLE + ["--kw", "generator=1"], 2, "not a sampler keyword"),
    (SAMPLE + ["--kw", "eta"], 2, "key=value"),
    (["sample", "CKPT", "-n", "1000000000", "--out", "OUT/s.png"], 2, "-n"),
    (["sample", "CKPT", "-n", "0", "--out", "OUT/s.png"], 2, "-n"),
    (["sample", "CKPT", "-n", "4", "--out", ""], 2, "empty"),
    (["sample", "CKPT", "-n", "4", "--out", "/proc/x/s.png"], 2, "cannot write"),
    (["sample", "OUT/none.ckpt", "--out", "OUT/s.png"], 1, "does not exist"),
    (["sample", "BAD:garbage", "--out", "OUT/s.png"], 1, "not a readable zoo checkpoint"),
    (["sample", "BAD:nomarker", "--out", "OUT/s.png"], 1, "marker"),
    (["sample", "BAD:nokeys", "--out", "OUT/s.png"], 1, "missing model_class, meta, model"),
    (["sample", "BAD:foreign", "--out", "OUT/s.png"], 1, "cannot build"),
    (["sample", "BAD:otherform", "--out", "OUT/s.png"], 1, "unknown formulation"),
    (["sample", "BAD:wrongtype", "--out", "OUT/s.png"], 1, "damaged"),
    (["eval", "CKPT", "--n-samples", "5", "--out", "OUT/m.json"], 2, "n-samples"),
    (["eval", "CKPT", "--kw", "bogus=1", "--out", "OUT/m.json"], 2, "not a sampler keyword"),
    (["eval", "CKPT", "--out", ""], 2, "empty"),
    # resuming a checkpoint of another model, or an incomplete one
    (["train", "gaussian", *TINY[:2], "--set", "T=30", *TINY[4:], "--resume", "--out", "RUN"], 1, "T 20 -> 30"),
    (["train", "binary", "--set", "channels=8,16", "--limit", "64", "--resume", "--out", "RUN"], 1, "'gaussian'"),
    (["data", "import", "/nonexistent"], 2, "does not exist"),
]


def _resolve(args, tmp_path: Path, trained: Path, bad: dict[str, Path]) -> list[str]:
    out = []
    for a in args:
        if a.startswith("BAD:"):
            a = str(bad[a[4:]])
        a = a.replace("OUT", str(tmp_path / "out")).replace("CKPT", str(trained / "train.ckpt"))
        out.append(a.replace("RUN", str(trained)) if a == "RUN" else a)
    return out


@pytest.mark.parametrize("args,code,pattern", CASES, ids=[" ".join(c[0][-3:]) for c in CASES])
def test_bad_input_is_one_line(args, code, pattern, capsys, tmp_path, trained):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_checkpoints(bad_dir, trained / "train.ckpt") if any(a.startswith("BAD:") for a in args) else {}
    before = snapshot(trained, bad_dir)
    got, lines, _ = run_main(_resolve(args, tmp_path, trained, bad), capsys)
    assert got == code, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and lines[0].startswith("zoo: ")
    assert pattern in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "a file was written for a bad command"
    assert snapshot(trained, bad_dir) == before
    assert not list(Path.cwd().glob("runs/train-*/config.json.tmp"))


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60


# --------------------------------------------------------------------------- data faults


@pytest.mark.parametrize("arrays,pattern", [
    ({"train_x": np.zeros((5, 783), np.uint8), "train_y": np.zeros(5, np.int64)}, "malformed"),
    ({"train_x": np.zeros((5, 784), np.float32), "train_y": np.zeros(5, np.int64)}, "malformed"),
    ({"train_x": np.zeros((5, 784), np.uint8), "train_y": np.zeros(4, np.int64)}, "malformed"),
    ({"train_x": np.zeros((0, 784), np.uint8), "train_y": np.zeros(0, np.int64)}, "malformed"),
    ({"train_x": np.zeros((5, 784), np.uint8), "train_y": np.full(5, 12, np.int64)}, "malformed"),
    ({}, "unreadable"),
])
def test_malformed_cache_is_one_line_naming_the_fix(arrays, pattern, capsys, zoo_data, tmp_path):
    zoo_data.mkdir(parents=True)
    full = {f"{s}_{a}": v for s in ("valid", "test") for a, v in
            (("x", np.zeros((5, 784), np.uint8)), ("y", np.zeros(5, np.int64)))}
    np.savez(zoo_data / "mnist.npz", **full, **arrays)
    for args in (["data", "info"], ["train", "gaussian", *TINY, "--out", str(tmp_path / "out")]):
        code, lines, _ = run_main(args, capsys)
        assert code == 1 and len(lines) == 1, lines
        assert pattern in lines[0] and "zoo data fetch --force" in lines[0]
        assert not (tmp_path / "out").exists()


def test_read_only_cache_is_one_line(capsys, zoo_data, tmp_path):
    from zoo.common import data

    zoo_data.mkdir(parents=True)
    zoo_data.chmod(0o555)
    try:
        if os.access(zoo_data, os.W_OK) and os.geteuid() == 0:  # root writes anyway: a file in the way
            zoo_data.chmod(0o755)
            os.environ["ZOO_DATA"] = str(zoo_data / "file")
            (zoo_data / "file").write_text("x")
        with pytest.raises(data.DataError, match="cannot write the MNIST cache"):
            data._store(make_fake_mnist(5, 5, 5))
    finally:
        zoo_data.chmod(0o755)


# --------------------------------------------------------------------------- kill, resume, lock, disk

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from zoo.common import trainer
    saves = 0
    real_save = trainer.Trainer.save
    def save(self, *a, **k):
        global saves
        path = real_save(self, *a, **k)
        saves += 1
        if saves == int(os.environ["KILL_AFTER_SAVES"]):
            open(os.path.join(os.path.dirname(path), ".train.ckpt.orphan.tmp"), "w").write("half")
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    trainer.Trainer.save = save
    from zoo.cli import main
    main(sys.argv[1:])
""")


def _states(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {"model": ckpt["model"], "ema": ckpt["ema"], "opt": ckpt["optimizer"]["state"], "step": ckpt["step"]}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


def test_sigkill_then_resume_is_bit_identical(cache, tmp_path, capsys):
    args = ["train", "gaussian", *TINY[:6], "--train", "max_steps=6", "--train", "batch_size=8", "--limit", "64",
            "--train", "ckpt_every=2", "--train", "ema_decay=0.9", "--train", "log_every=1"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "KILL_AFTER_SAVES": "2", "PYTHONPATH": str(ROOT), "ZOO_DATA": str(cache)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args, "--out", str(killed)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _states(killed / "train.ckpt")["step"] == 4
    assert (killed / ".train.ckpt.orphan.tmp").exists()
    assert run_main([*args, "--out", killed, "--resume"], capsys)[0] == 0
    assert run_main([*args, "--out", whole], capsys)[0] == 0
    assert _same(_states(killed / "train.ckpt"), _states(whole / "train.ckpt"))
    assert not list(killed.glob(".*.tmp"))  # the orphan was removed
    steps = [line for line in (killed / "log.jsonl").read_text().splitlines() if '"kind": "step"' in line]
    assert steps == [line for line in (whole / "log.jsonl").read_text().splitlines() if '"kind": "step"' in line]


def test_resume_with_a_new_lr_applies_it(cache, tmp_path, capsys):
    import json

    base = ["train", "gaussian", *TINY[:6], "--train", "batch_size=8", "--limit", "64", "--train", "log_every=1",
            "--out", tmp_path]
    assert run_main([*base, "--train", "max_steps=2"], capsys)[0] == 0
    assert run_main([*base, "--train", "max_steps=4", "--train", "lr=1e-5", "--resume"], capsys)[0] == 0
    ckpt = torch.load(tmp_path / "train.ckpt", weights_only=True)
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [1e-5]
    assert ckpt["scheduler"]["base_lrs"] == [1e-5]
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"kind": "resume", "step": 2, "lr_from": 1e-3, "lr_to": 1e-5}.items() <= \
        next(r for r in logs if r["kind"] == "resume").items()
    assert [r["lr"] for r in logs if r["kind"] == "step" and r["step"] > 2] == [1e-5, 1e-5]


@pytest.mark.parametrize("command", [["train", "gaussian", *TINY], ["run", "schedules", "--preset", "smoke"]])
def test_a_second_writer_is_refused_naming_the_holder(cache, tmp_path, capsys, command):
    """`zoo train` and `zoo run` each hold OUT/.lock for their run: a second writer there gets one line
    naming the holder and writes nothing."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (str(os.getpid()) + "\\n").encode())
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, lines, _ = run_main([*command, "--out", out], capsys)
        assert code == 1 and len(lines) == 1, lines
        assert f"pid {holder.pid}" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert run_main([*command, "--out", out], capsys)[0] == 0  # the lock died with it


def test_under_torchrun_only_rank_0_takes_the_run_lock(tmp_path, monkeypatch):
    from zoo.common.trainer import RunDirBusy, RunLock

    with RunLock(tmp_path):
        with pytest.raises(RunDirBusy):
            RunLock(tmp_path).acquire()  # a second writer, in this process too
        monkeypatch.setenv("RANK", "1")
        with RunLock(tmp_path) as other:  # rank 1 of the job whose rank 0 holds the lock
            assert other.fd is None


def test_full_disk_is_one_line_and_keeps_the_checkpoint(cache, trained, tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = (trained / "train.ckpt").stat().st_size
    budget = 3 * size + 64 * 1024
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={budget}", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()})")
    try:
        run = mnt / "run"
        args = ["train", "gaussian", *TINY[:6], "--train", "batch_size=8", "--limit", "64", "--out", run]
        assert run_main([*args, "--train", "max_steps=1"], capsys)[0] == 0
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(free - size // 2, 0))
        code, lines, _ = run_main([*args, "--train", "max_steps=3", "--resume"], capsys)
        assert code == 1 and len(lines) == 1, lines
        assert "no space left" in lines[0] and "previous checkpoint is kept" in lines[0]
        assert torch.load(run / "train.ckpt", weights_only=True)["step"] == 1
        assert not list(run.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_ctrl_c_is_exit_130(monkeypatch, capsys, cache, tmp_path):
    import zoo.workflows

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.workflows, "train", interrupted)
    code, lines, _ = run_main(["train", "gaussian", "--out", tmp_path / "x"], capsys)
    assert code == 130 and lines == ["zoo: interrupted"]
