"""The same Trainer under torchrun: two CPU processes (gloo) stay in sync and learn."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    from torch import nn
    from zoo.common.trainer import TrainConfig, Trainer

    class Regress(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        def loss(self, batch):
            x, y = batch
            return {"loss": ((self.net(x).squeeze(1) - y) ** 2).mean()}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.3
    torch.manual_seed(0)  # same initial weights on every rank
    tr = Trainer(Regress(), (x, y), TrainConfig(epochs=15, batch_size=16, lr=1e-2, progress=False, seed=0),
                 out_dir=sys.argv[1])
    tr.fit()
    rank = int(os.environ["RANK"])
    torch.save(tr.model.state_dict(), f"{sys.argv[1]}/rank{rank}.pt")
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump({"world": tr.world, "steps": tr.step, "spe": tr.steps_per_epoch}, f)
''')


def test_two_process_gloo_training(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world"] == 2 for i in info)
    assert info[0]["spe"] == 256 // 2 // 16  # each rank sees half of every epoch
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # gradients were all-reduced: identical replicas
    epochs = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines() if '"epoch"' in s]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert epochs[-1]["train_loss"] < 0.05 * epochs[0]["train_loss"]
