"""Does the seed's own code train its rho-mean network the way zoo does? (seed 001, In [2]-[14])

The seed's ScoreNet with rho0/rho1, its Diffusion, its diffusion_loss_reduced and its Adam groups
(lr 0.01, rho 0.2) and StepLR(30, 0.1), transcribed line for line (only the indentation the PDF
lost is restored), trained on zoo's 50000 [0, 1] training images, batch 100. Its loss is the one
zoo logs as `train_loss` for the mean model, so the two runs' curves compare directly; the
seed printed a validation median of 0.4870 (min 0.4851) for this "small" network over 60 epochs.

    PYTHONPATH=. python docs/results/paper/parameterisation-diagnostics/seed_mean_probe.py EPOCHS OUT_DIR [step|unit] [seed|all]

`step` (default) feeds the integer step to the time embedding as the seed does; `unit` feeds t / T
as zoo does, the one change. `seed` (default) draws the steps as the seed does, randint(1, T) over
0-based indices: transitions from steps 2..T, never step 1; `all` adds step 1 (index 0, alpha_bar_prev
= 1, posterior variance 0, loss weight 1/(2 beta_1) = 5000), as SPEC's t ~ U{1..T} and zoo do. After training it samples 1000 images with the seed's
sample_from_model (In [16]) and scores them with zoo's pixel and classifier FID (`quality`, the
parameterisation experiment's metrics) and the seed's own pixel FID against its first 1000 images;
OUT_DIR gets probe.json, samples.png and the final state_dict.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

from experiments.plotting import grid_figure
from zoo.common.data import load_dataset
from zoo.evaluation import quality
from zoo.common.metrics import fid_from_features


class GaussianFourierProjection(nn.Module):
    def __init__(self, embed_dim, scale=30.):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embed_dim // 2) * scale, requires_grad=False)

    def forward(self, x):
        x = x.unsqueeze(-1).float()
        x_proj = x * self.W * 2 * np.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class Dense(nn.Module):
    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.dense = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.dense(x)[..., None, None]


class ScoreNet(nn.Module):
    def __init__(self, channels=(32, 64, 128, 256), embed_dim=256, group_num=4):
        super().__init__()
        self.embed = nn.Sequential(GaussianFourierProjection(embed_dim=embed_dim), nn.Linear(embed_dim, embed_dim))
        self.rho0 = nn.Parameter(torch.tensor(1.0))
        self.rho1 = nn.Parameter(torch.tensor(1.0))
        self.conv1 = nn.Conv2d(1, channels[0], 3, stride=1, bias=False)
        self.dense1 = Dense(embed_dim, channels[0])
        self.gnorm1 = nn.GroupNorm(group_num, num_channels=channels[0])
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, stride=2, bias=False)
        self.dense2 = Dense(embed_dim, channels[1])
        self.gnorm2 = nn.GroupNorm(group_num, num_channels=channels[1])
        self.conv3 = nn.Conv2d(channels[1], channels[2], 3, stride=2, bias=False)
        self.dense3 = Dense(embed_dim, channels[2])
        self.gnorm3 = nn.GroupNorm(group_num, num_channels=channels[2])
        self.conv4 = nn.Conv2d(channels[2], channels[3], 3, stride=2, bias=False)
        self.dense4 = Dense(embed_dim, channels[3])
        self.gnorm4 = nn.GroupNorm(group_num, num_channels=channels[3])
        self.tconv4 = nn.ConvTranspose2d(channels[3], channels[2], 3, stride=2, bias=False)
        self.dense5 = Dense(embed_dim, channels[2])
        self.tgnorm4 = nn.GroupNorm(group_num, num_channels=channels[2])
        self.tconv3 = nn.ConvTranspose2d(channels[2] + channels[2], channels[1], 3, stride=2, bias=False,
                                         output_padding=1)
        self.dense6 = Dense(embed_dim, channels[1])
        self.tgnorm3 = nn.GroupNorm(group_num, num_channels=channels[1])
        self.tconv2 = nn.ConvTranspose2d(channels[1] + channels[1], channels[0], 3, stride=2, bias=False,
                                         output_padding=1)
        self.dense7 = Dense(embed_dim, channels[0])
        self.tgnorm2 = nn.GroupNorm(group_num, num_channels=channels[0])
        self.tconv1 = nn.ConvTranspose2d(channels[0] + channels[0], 1, 3, stride=1)
        self.act = lambda x: x * torch.sigmoid(x)

    def forward(self, x, t):
        embed = self.act(self.embed(t))
        h1 = self.act(self.gnorm1(self.conv1(x) + self.dense1(embed)))
        h2 = self.act(self.gnorm2(self.conv2(h1) + self.dense2(embed)))
        h3 = self.act(self.gnorm3(self.conv3(h2) + self.dense3(embed)))
        h4 = self.act(self.gnorm4(self.conv4(h3) + self.dense4(embed)))
        h = self.act(self.tgnorm4(self.tconv4(h4) + self.dense5(embed)))
        h = self.act(self.tgnorm3(self.tconv3(torch.cat([h, h3], dim=1)) + self.dense6(embed)))
        h = self.act(self.tgnorm2(self.tconv2(torch.cat([h, h2], dim=1)) + self.dense7(embed)))
        delta = self.tconv1(torch.cat([h, h1], dim=1))
        return self.rho0 * (x - self.rho1 * delta)


class Diffusion(nn.Module):
    def __init__(self, model, n_steps, min_beta, max_beta, time_input, steps):
        super().__init__()
        self.model, self.n_steps, self.time_input, self.steps = model, n_steps, time_input, steps
        self.betas = torch.linspace(min_beta, max_beta, n_steps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # alphas_cumprod[t - 1] with alpha_bar_0 = 1 at index -1 (only `all` draws t = 0)
        self.prev_cumprod = torch.cat([torch.ones(1), self.alphas_cumprod[:-1]])

    def forward_process(self, x0, t):
        B = x0.shape[0]
        alpha_bar_t = self.alphas_cumprod[t].view(B, 1, 1, 1)
        alpha_bar_prev = self.prev_cumprod[t].view(B, 1, 1, 1)  # = the seed's alphas_cumprod[t - 1] for t >= 1
        alpha_t = self.alphas[t].view(B, 1, 1, 1)
        noise = torch.randn_like(x0)
        x_t = alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise
        rho_t = (1 - alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        coef0 = alpha_bar_prev.sqrt() * (1 - alpha_t) / (1 - alpha_bar_t)
        coef1 = alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        mu_tilde = coef0 * x0 + coef1 * x_t
        return mu_tilde + rho_t.sqrt() * torch.randn_like(x0), x_t

    def predict_next(self, xt, t):
        return self.model(xt, t if self.time_input == "step" else t.float() / self.n_steps)


def diffusion_loss_reduced(diffusion, x0):
    b = x0.shape[0]
    t = torch.randint(1 if diffusion.steps == "seed" else 0, diffusion.n_steps, (b,))
    x_prev, x_t = diffusion.forward_process(x0, t)
    mu_pred = diffusion.predict_next(x_t, t)
    one_minus_alpha = (1.0 - diffusion.alphas[t]).view(b, 1, 1, 1)
    return ((x_prev - mu_pred).pow(2).mean(dim=(1, 2, 3)) / (2.0 * one_minus_alpha.view(b))).mean()


@torch.no_grad()
def sample_from_model(diffusion, n_samples):
    x_t = torch.randn(n_samples, 1, 28, 28)
    for t in range(diffusion.n_steps, 0, -1):
        t_tensor = torch.full((n_samples,), t, dtype=torch.long)
        mu_t = diffusion.predict_next(x_t, t_tensor)
        sqrt_var = torch.sqrt(1.0 - diffusion.alphas[t - 1])
        z = torch.randn_like(x_t) if t > 1 else 0.0
        x_t = mu_t + sqrt_var * z
    return x_t


epochs, out = int(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
time_input = sys.argv[3] if len(sys.argv) > 3 else "step"
steps = sys.argv[4] if len(sys.argv) > 4 else "seed"
torch.manual_seed(0)
x = load_dataset("mnist-unit", "train", limit=50000)[0]
model = ScoreNet(channels=[8, 16, 32, 64])
diffusion = Diffusion(model, 200, 1e-4, 0.1, time_input, steps)
opt = optim.Adam([{"params": [p for n, p in model.named_parameters() if n not in ("rho0", "rho1")], "lr": 0.01},
                  {"params": [model.rho0, model.rho1], "lr": 0.2}])
sched = optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
log = {"time_input": time_input, "steps": steps, "epochs": [], "trace": []}
step = 0
for epoch in range(epochs):
    start, total = time.perf_counter(), 0.0
    perm = torch.randperm(len(x))
    for i in range(0, len(x), 100):
        opt.zero_grad()
        loss = diffusion_loss_reduced(diffusion, x[perm[i:i + 100]])
        loss.backward()
        opt.step()
        total += loss.item()
        step += 1
        if step <= 50 or step % 25 == 0:
            log["trace"].append({"step": step, "loss": loss.item(), "rho0": model.rho0.item(),
                                 "rho1": model.rho1.item()})
    sched.step()
    log["epochs"].append({"epoch": epoch, "train_loss": total / (len(x) // 100), "rho0": model.rho0.item(),
                          "rho1": model.rho1.item(), "seconds": time.perf_counter() - start})
    print(log["epochs"][-1], flush=True)
    (out / "probe.json").write_text(json.dumps(log, indent=1))
torch.save(model.state_dict(), out / "model.pth")
model.eval()
torch.manual_seed(1)
start = time.perf_counter()
samples = torch.cat([sample_from_model(diffusion, 500) for _ in range(2)])
log["sample_seconds"] = time.perf_counter() - start
log["quality"] = quality(samples, "mnist-unit", 1000)  # clamps to [0, 1] as every zoo metric does
log["seed_pixel_fid_unclamped"] = fid_from_features(x[:1000].flatten(1), samples.flatten(1))  # In [19]
log["sample_range"] = [samples.min().item(), samples.max().item()]
print(log["quality"], log["seed_pixel_fid_unclamped"], flush=True)
(out / "probe.json").write_text(json.dumps(log, indent=1))
grid_figure({f"seed code, rho-mean, {epochs} epochs: pixel FID {log['quality']['pixel_fid']:.2f}, classifier FID "
             f"{log['quality']['classifier_fid']:.1f}": samples[:64].clamp(0, 1)}, nrow=8).savefig(out / "samples.png")
