"""`zoo bench unet` / `zoo bench sampling` (issue 13): they run, report every variant they were
asked for, and fail with the valid choices otherwise; the speed options train the same model."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_zoo
from zoo.bench import sampler_step_ops
from zoo.bench.overhead import _OpCounter
from zoo.common.trainer import TrainConfig, Trainer
from zoo.gaussian.model import Config, GaussianDiffusion


def test_bench_unet_rows(capsys, tmp_path):
    out = run_zoo(capsys, "bench", "unet", "--channels", "8,16", "--batch-size", "4", "--steps", "2", "--repeats",
                  "1", "--variants", "eager, channels-last", "--no-peer", "--json", str(tmp_path / "u.json"))
    rows = json.loads((tmp_path / "u.json").read_text())
    assert [r["variant"] for r in rows] == ["eager", "channels-last"]
    assert rows[0]["params"] == rows[1]["params"] > 0 and all(r["img_per_s"] > 0 for r in rows)
    assert rows[0]["vs_eager"] == 1.0 and "channels-last" in out


def test_cli_lists_every_variant():
    from zoo import bench
    from zoo.cli import bench as cli_bench

    assert cli_bench.UNET_VARIANTS == bench.UNET_VARIANTS and cli_bench.CUDA_ONLY == bench.CUDA_ONLY


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bench_trainer_compares_like_with_like(device):
    """`zoo bench trainer`: the ratio is the Trainer's rate over the bare loop's; on CUDA the bare loop runs
    the Trainer's layout (channels_last) on resident data, and the NCHW loop beside it says what that
    layout gains or costs."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    from zoo.bench import trainer_overhead

    r = trainer_overhead(steps=5, batch_size=4, device=device, repeats=1)
    assert r["ratio"] == pytest.approx(r["trainer_steps_per_s"] / r["bare_steps_per_s"]) and r["ratio"] > 0
    assert ("nhwc_vs_nchw" in r) == (device == "cuda") == ("graph_ratio" in r)


def test_bench_unet_unknown_variant(capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "unet", "--variants", "eager,turbo"])
    assert e.value.code == 2 and "compile-bf16" in capsys.readouterr().err


def test_cuda_only_variants_on_the_cpu(capsys):
    """The whole-step CUDA graph is CUDA's: asked for on the CPU it is a one-line usage error before any
    measurement, and the CPU's default variant list leaves it out."""
    from zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "unet", "--variants", "eager,cuda-graph", "--channels", "8,16", "--no-peer"])
    err = capsys.readouterr()
    assert e.value.code == 2 and "cuda-graph needs --device cuda" in err.err and err.out == ""
    help_text = " ".join(run_zoo(capsys, "bench", "unet", "--help").split()).replace("- ", "-")  # click's wraps
    assert "cuda-graph, cuda-graph-nchw, cuda-graph-bf16, cuda-graph-compile on CUDA only" in help_text
    if not torch.cuda.is_available():
        from zoo.bench import graphed
        from zoo.common.config import UsageError

        with pytest.raises(UsageError, match="needs --device cuda"):
            graphed(lambda: None, torch.optim.Adam([torch.zeros(1, requires_grad=True)]), torch.device("cpu"))


def test_graphed_step_trains_as_the_eager_step(graphs):
    """`graphed` (the cuda-graph variant): three eager warm-up steps, then replays of the captured
    forward/backward/Adam, give the weights of as many eager steps; a replay that accumulated gradients
    instead of overwriting them, or froze Adam's step count, would not. Real graphs on CUDA, the CPU
    emulation (conftest's `graphs`) on the CPU."""
    device = graphs
    x = torch.linspace(-1, 1, 64, device=device).reshape(16, 4)
    target = torch.sin(3 * x) @ torch.ones(4, 2, device=device)

    def build():
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2)).to(device)
        return net, lambda: ((net(x) - target) ** 2).mean()

    moved = _eager_against_graphed(build, device, lr=0.05)
    assert moved < 1e-5, moved


def _eager_against_graphed(build, device: torch.device, lr: float) -> float:
    """The largest weight difference between 8 eager fwd/bwd/Adam steps and `graphed`'s 3 eager warm-up
    steps + 5 replays, each from `build()` -> (module, loss function) under seed 0."""
    from zoo.bench import graphed

    weights = []
    for use_graph in (False, True):
        torch.manual_seed(0)
        net, loss = build()
        opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True, capturable=True)

        def step():
            loss().backward()
            opt.step()

        if use_graph:
            replay = graphed(step, opt, device, warmup=3)
            for _ in range(5):
                replay()
        else:
            for _ in range(8):
                opt.zero_grad(set_to_none=True)
                step()
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]).cpu())
    return float((weights[0] - weights[1]).abs().max())


def test_every_graph_variant_of_the_bench_runs(graphs):
    """The whole-step graph variants (NHWC, NCHW, NHWC + bf16 autocast) each capture and replay the paper
    step and report a rate; under the CPU emulation a host sync inside the capture (in the autocast
    path, say) would fail here before a GPU window does."""
    from zoo.bench import unet_training

    names = ("cuda-graph", "cuda-graph-nchw", "cuda-graph-bf16")
    rows = unet_training((8, 16), batch_size=2, steps=2, device=graphs.type, repeats=1, variants=names, peer=False)
    assert [r["variant"] for r in rows] == list(names)
    assert all(r["img_per_s"] > 0 and r["warmup_s"] > 0 for r in rows)


def test_graph_compile_variant_trains_on_cuda():
    """cuda-graph-compile: a compiled network inside the captured step (3 eager warm-up steps, then 5
    replays) gives the weights of 8 steps of the same compiled network run eagerly, on a fixed noisy
    batch; a replay that reused stale activations or gradients would not. CUDA only: the CPU emulation
    records aten ops, and Inductor's fused kernels are not aten ops. Its name keeps it out of
    gpu_session.sh's quick gate (`-k "... and not compile"`), which has no time for a compile; the
    session's later `pytest -k cuda` runs it."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    from zoo.bench import unet_training
    from zoo.common.nets import UNet, UNetConfig

    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x_t, eps = (torch.randn(8, 1, 28, 28, generator=gen).to(device) for _ in range(2))
    t = torch.rand(8, generator=gen).to(device)

    def build():
        net = UNet(UNetConfig(channels=(8, 16), embed_dim=16)).to(device).to(memory_format=torch.channels_last)
        with torch.no_grad():  # the last conv starts at zero: a constant network would hide stale inputs
            net.out[-1].weight.normal_(0, 0.1)
        compiled = torch.compile(net)
        return net, lambda: ((compiled(x_t, t) - eps) ** 2).mean()

    moved = _eager_against_graphed(build, device, lr=1e-3)
    assert moved < 1e-5, moved
    rows = unet_training((8, 16), batch_size=8, steps=2, device="cuda", repeats=1, variants=("cuda-graph-compile",),
                         peer=False)
    assert rows[0]["variant"] == "cuda-graph-compile" and rows[0]["img_per_s"] > 0


def test_graphed_net_samples_as_the_eager_net(graphs):
    """`zoo bench sampling`'s "net as a CUDA graph": one graph per input signature, replayed at every
    step, gives the eager samples (DDIM-5 and DDPM-10 from the same x_T and seed), and reuses the graph
    across the two samplers; the bench reports both rows."""
    from zoo.bench import sampler_variants
    from zoo.common.graphed_net import GraphedNet

    device = graphs
    torch.manual_seed(0)
    model = GaussianDiffusion(Config(data="mnist-grey", channels=(8, 16), T=10)).to(device).eval()
    with torch.no_grad():  # the U-Net's last conv starts at zero: a constant network would hide stale inputs
        for p in model.net.parameters():
            p.normal_(0, 0.2)
    x_T = torch.randn(4, 1, 28, 28, device=device)
    eager_net, out = model.net, {}
    for name, net in (("eager", eager_net), ("graph", GraphedNet(eager_net, device))):
        model.net = net
        for sampler, steps in (("ddim", 5), ("ddpm", 10)):
            torch.manual_seed(1)
            out[name, sampler] = model.sample(4, sampler=sampler, steps=steps, x_T=x_T)
        if name == "graph":
            assert len(net.graphs) == 1  # one signature: every step and both samplers replay one graph
    for sampler in ("ddim", "ddpm"):
        torch.testing.assert_close(out["graph", sampler], out["eager", sampler], rtol=1e-5, atol=1e-5)
    t = torch.full((4,), 0.5, device=device)
    assert (eager_net(x_T, t) - eager_net(-x_T, t / 2)).abs().max() > 0.1  # the network's output depends on its inputs
    model.net = eager_net
    rows = sampler_variants(T=10, ddim_steps=5, batch_size=4, channels=(8, 16), device=device.type, repeats=1,
                            compile_mode=None, peer=False, cuda_graph=True)
    assert [r["impl"] for r in rows] == ["zoo", "zoo", "zoo, net as a CUDA graph", "zoo, net as a CUDA graph"]


def test_bench_sampling_rows(capsys, tmp_path):
    run_zoo(capsys, "bench", "sampling", "--channels", "8,16", "--T", "10", "--ddim-steps", "5", "--batch-size", "4",
            "--repeats", "1", "--compile-mode", "none", "--no-peer", "--json", str(tmp_path / "s.json"))
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("DDIM-5", 5), ("DDPM-10", 10)]
    assert all(r["ratio"] > 0 and r["seconds"] > 0 for r in rows)


def test_channels_last_trains_the_same_model():
    """channels_last changes the memory layout only: the same seed gives the same losses and, up to
    float rounding (which Adam's normalisation amplifies where gradients are near zero), weights."""
    results = []
    for cl in (False, True):
        torch.manual_seed(0)
        model = GaussianDiffusion(Config(data="mnist-grey", channels=(8, 16), T=50))
        x = torch.rand(32, 1, 28, 28) * 2 - 1
        trainer = Trainer(model, (x,), TrainConfig(epochs=2, batch_size=8, grad_clip=None, channels_last=cl,
                                                   log_every=1, val_every=0, progress=False))
        w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
        trainer.fit()
        losses = [r["loss"] for r in trainer.history if r["kind"] == "step"]
        results.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()]), w0))
    (loss_a, w_a, w0), (loss_b, w_b, _) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    assert (w_a - w_b).abs().max() < 0.05 * (w_a - w0).abs().max()  # 16 Adam steps moved every weight


def test_thread_policy():
    from zoo.common.threads import apply_policy, choose_threads

    assert [choose_threads(2, load) for load in (0.0, 0.4, 0.6, 1.2, 1.6, 5.0)] == [2, 2, 1, 1, 1, 1]
    assert [choose_threads(8, load) for load in (0.0, 2.0, 7.6)] == [8, 6, 1]
    idle, busy, user = {}, {}, {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_policy(idle, cpus=2, load=0.1) == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"} == idle
    assert apply_policy(busy, cpus=4, load=2.0) == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    assert apply_policy(user, cpus=2, load=3.0) == {} and user == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}


def test_busy_cores_sees_a_busy_core():
    """A spinning child process shows up as about one busy core (of the /proc/stat measurement)."""
    import subprocess
    import sys

    from zoo.common.threads import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert busy_cores(0.5) > 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_cli_sets_threads_before_torch():
    """`zoo` in a fresh process on a loaded 2-core view: the policy's thread count reaches torch."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; import zoo.common.threads as t; t.busy_cores = lambda: 1.7; "
            "os.sched_getaffinity = lambda pid: {0, 1}; sys.argv = ['zoo', 'list']; from zoo.cli import main\n"
            "try: main()\nexcept SystemExit: pass\n"
            "import torch; print('threads', torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "threads 1 PASSIVE" in out


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bench_profile(capsys, tmp_path, device):
    """The profile's shares add up, every phase took host time (on CUDA the GPU's annotation entries once
    hid forward and backward), its FLOPs scale with the batch (every layer is per-image), and the
    trace is a Chrome trace."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    results = []
    for batch in (2, 4):
        out = run_zoo(capsys, "bench", "profile", "--channels", "8,16", "--batch-size", str(batch), "--steps", "2",
                      "--repeats", "1", "--device", device, "--json", str(tmp_path / f"p{batch}.json"),
                      "--trace", str(tmp_path / "t.json"))
        results.append(json.loads((tmp_path / f"p{batch}.json").read_text())[0])
    small, big = results
    assert sum(big["host_shares"].values()) == pytest.approx(1.0) and big["host_shares"]["convolution"] > 0
    assert set(big["host_phases"]) == {"forward", "backward", "optimiser"}
    assert set(big["adam_step_ms"]) == {"fused", "foreach", "per-tensor"} and min(big["adam_step_ms"].values()) > 0
    assert sum(big["host_phases"].values()) == pytest.approx(1.0) and min(big["host_phases"].values()) > 0
    assert big["gflop_per_step"] == pytest.approx(2 * small["gflop_per_step"], rel=1e-9) and small["gflop_per_step"] > 0
    assert 0 < big["of_peak"] and big["top_ops"] and "of this machine's fp32 matmul" in out
    assert "traceEvents" in json.loads((tmp_path / "t.json").read_text())


def test_bench_profile_of_the_graphed_step(graphs, capsys):
    """`zoo bench profile --cuda-graph`: the step captured as the cuda-graph variant runs it and profiled
    as replays (no host phases: a replay has no labelled ranges); on the CPU the flag is a one-line
    usage error before any output."""
    from zoo.bench import profile_step

    r = profile_step((8, 16), batch_size=2, steps=2, device=graphs.type, repeats=1, cuda_graph=True)
    assert r["cuda_graph"] and r["step_ms"] > 0 and r["host_phases"] == {} and r["gflop_per_step"] > 0
    assert r["channels_last"] and not r["bf16"]  # as the cuda-graph variant
    nchw_bf16 = profile_step((8, 16), batch_size=2, steps=2, device=graphs.type, repeats=1, cuda_graph=True,
                             channels_last=False, bf16=True)  # the other two graph variants' levers
    assert not nchw_bf16["channels_last"] and nchw_bf16["bf16"] and nchw_bf16["step_ms"] > 0
    if graphs.type == "cpu":  # the emulated replay reruns the recorded aten ops, the autocast's casts among them
        assert nchw_bf16["aten_calls_per_step"] > r["aten_calls_per_step"]
    if graphs.type == "cuda":  # whether the profiler sees a replay's kernels is what the GPU run reports
        assert "top_kernels" in r and r["kernels_per_step"] >= 0
    else:  # the emulated replay reruns the recorded aten ops
        assert r["aten_calls_per_step"] > 100
        with pytest.raises(SystemExit) as e:
            from zoo.cli import main
            main(["bench", "profile", "--cuda-graph", "--channels", "8,16"])
        err = capsys.readouterr()
        assert e.value.code == 2 and "--cuda-graph needs --device cuda" in err.err and err.out == ""


def test_profile_categories():
    from zoo.bench import _category

    assert [_category(n) for n in ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::addmm",
                                    "aten::native_group_norm_backward", "aten::_foreach_add_", "aten::silu")] == \
        ["convolution", "convolution", "matmul", "normalisation", "optimiser", "elementwise and other"]


def test_kernel_categories():
    """GPU kernels by name, as the profiler reports cuDNN's, cuBLAS's and ATen's: the GroupNorm element-wise
    pass is normalisation, a cast or layout change is a copy, cuDNN's implicit-GEMM convolutions are not
    matmuls; the shares are of the summed device time."""
    from zoo.bench import KERNEL_CATEGORIES, _category, _kernel_shares

    names = {
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>(long, float, float const*, "
        "float*, float*)": "normalisation",
        "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::(anonymous "
        "namespace)::GroupNormKernelImplInternal<float, float>(...)::{lambda(float, float, float)#1}>>": "normalisation",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true>(...)": "copies (layout, dtype)",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
        "::{lambda(float)#1}>": "copies (layout, dtype)",
        "sm90_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x128x32_cudnn": "convolution",
        "sm80_xmma_wgrad_implicit_gemm_indexed_tf32f32_tf32f32_f32_nhwckrsc_nhwc": "convolution",
        "ampere_sgemm_32x32_sliced1x4_nn": "matmul",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>": "optimiser",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
        "at::native::sum_functor<float, float, float>>>>": "reduction",
        "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(at::TensorIteratorBase&)>":
            "elementwise and other",
    }
    assert {n: _category(n, KERNEL_CATEGORIES) for n in names} == names
    shares = _kernel_shares([(n, us) for n, us in zip(names, range(1, len(names) + 1))])  # 55 us in all
    assert shares["normalisation"] == pytest.approx(3 / 55) and sum(shares.values()) == pytest.approx(1.0)


def test_op_counter_counts_kernels_not_views():
    x = torch.randn(4, 3)
    with _OpCounter() as counter:
        (x * 2 + 1).view(-1).unsqueeze(0).t()
    assert counter.n == 2


def test_a_sampler_step_adds_a_handful_of_ops_to_the_network():
    """The samplers pass one int step for the batch, so their coefficients are Python floats: a DDPM step
    is noise, the mean and the update (7 ops; 19 when every coefficient was a gather, cast and subtract,
    38 with clipping). A gather creeping back into the loop costs 3 launches per coefficient."""
    ops = sampler_step_ops()
    assert ops["ddpm"] <= 8 and ops["ddpm_clip"] <= 15, ops
    assert ops["ddim"] <= 14 and ops["ddim_clip"] <= 21, ops  # DDIM-10: its respacing is spread over 10 steps
