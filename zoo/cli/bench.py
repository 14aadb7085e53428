"""`zoo bench`: speed and memory, reported as ratios measured in one run (the zoo.bench package measures).

torch and zoo.bench are imported inside each command, so `zoo --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from zoo.cli.common import check_device

# zoo.bench.UNET_VARIANTS and CUDA_ONLY, spelled out so that `zoo --help` does not import torch
# (tests/test_bench.py).
UNET_VARIANTS = ("eager", "eager-bf16", "channels-last", "compile", "compile-bf16", "compile-graphs", "cuda-graph",
                 "cuda-graph-nchw", "cuda-graph-bf16", "cuda-graph-compile")
CUDA_ONLY = ("cuda-graph", "cuda-graph-nchw", "cuda-graph-bf16", "cuda-graph-compile")


@click.group("bench")
def bench_cmd() -> None:
    """Benchmarks, reported as ratios measured in one run."""


@bench_cmd.command("trainer")
@click.option("--steps", type=click.IntRange(min=5), default=60, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
def bench_trainer(steps: int, batch_size: int, device: str, repeats: int) -> None:
    """Trainer throughput against a bare fwd/bwd/Adam loop on the same small U-Net."""
    from zoo.bench import trainer_overhead

    check_device(device)
    res = trainer_overhead(steps=steps, batch_size=batch_size, device=device, repeats=repeats)
    layout = " (channels_last, as the Trainer on CUDA; data resident)" if device == "cuda" else ""
    click.echo(f"bare loop : {res['bare_steps_per_s']:.2f} steps/s{layout}")
    click.echo(f"Trainer   : {res['trainer_steps_per_s']:.2f} steps/s")
    click.echo(f"ratio     : {res['ratio']:.3f} (Trainer / bare, best of {repeats}; target >= 0.98)")
    if "graph_ratio" in res:
        click.echo(f"Trainer, train.cuda_graph : {res['graph_steps_per_s']:.2f} steps/s, "
                   f"{res['graph_ratio']:.3f} x the bare loop (warm-up and capture included)")
    if "nhwc_vs_nchw" in res:
        click.echo(f"bare loop, NCHW : {res['bare_nchw_steps_per_s']:.2f} steps/s; channels_last is "
                   f"{res['nhwc_vs_nchw']:.3f} x NCHW on this net")


@bench_cmd.command("sampler")
@click.option("--T", "T", type=click.IntRange(min=2), default=1000, show_default=True, help="Steps of the process (DDPM NFE).")
@click.option("--ddim-steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--no-ddpm", is_flag=True, help="Skip the T-step DDPM run (slow on a CPU).")
def bench_sampler(T: int, ddim_steps: int, batch_size: int, device: str, repeats: int, no_ddpm: bool) -> None:
    """Sampler wall time over NFE x one network forward (DDIM and DDPM, same U-Net and batch)."""
    from zoo.bench import sampler_overhead, sampler_step_ops

    check_device(device)
    if ddim_steps > T:
        raise click.BadParameter(f"--ddim-steps {ddim_steps} exceeds --T {T}")
    res = sampler_overhead(T=T, ddim_steps=ddim_steps, batch_size=batch_size, device=device, repeats=repeats,
                           ddpm=not no_ddpm)
    click.echo(f"one forward : {res['forward_s'] * 1e3:.2f} ms (batch {batch_size})")
    click.echo(f"DDIM-{ddim_steps}     : {res[f'ddim{ddim_steps}_s']:.3f} s, ratio {res['ddim_ratio']:.3f} (wall / NFE forwards)")
    if not no_ddpm:
        click.echo(f"DDPM-{T}   : {res[f'ddpm{T}_s']:.3f} s, ratio {res['ddpm_ratio']:.3f} (wall / NFE forwards)")
    ops = sampler_step_ops()
    click.echo(f"ops per step beyond the network (kernel launches on a GPU): DDPM {ops['ddpm']:.1f} "
               f"({ops['ddpm_clip']:.1f} clipping x0_hat), DDIM-10 {ops['ddim']:.1f} ({ops['ddim_clip']:.1f})")


def _channels(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(c) for c in value.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"expected comma-separated positive widths like 32,64,128, got {value!r}")
    return widths


def _write_json(path: str | None, rows: list[dict]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rows, indent=1, default=str) + "\n")


def _unet_step_options(steps: int, steps_help: str):
    """The options of the benchmarks that time the paper U-Net's training step."""
    options = [click.option("--channels", default="32,64,128", show_default=True, help="U-Net widths per level."),
               click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
               click.option("--steps", type=click.IntRange(min=1), default=steps, show_default=True, help=steps_help),
               click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
               click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True)]

    def deco(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return deco


@bench_cmd.command("unet")
@_unet_step_options(30, "Steps per timed block.")
@click.option("--variants", default=None,
              help=f"Comma-separated speed options to measure, of {', '.join(UNET_VARIANTS)} "
                   f"(default: all; {', '.join(CUDA_ONLY)} on CUDA only).")
@click.option("--no-peer", is_flag=True, help="Skip diffusers' UNet2DModel (measured when diffusers is installed).")
@click.option("--json", "json_path", default=None, help="Also write the rows to this JSON file.")
def bench_unet(channels, batch_size, steps, device, repeats, variants, no_peer, json_path) -> None:
    """Training img/s of the Gaussian U-Net step under each speed option (eager, bf16, channels_last,
    torch.compile, the whole step as a CUDA graph) and of diffusers' UNet2DModel at the same widths, as ratios to eager fp32."""
    from zoo.bench import unet_training
    from zoo.bench.unet import check_variants

    check_device(device)
    if variants is None:
        names = tuple(v for v in UNET_VARIANTS if device == "cuda" or v not in CUDA_ONLY)
    else:
        names = tuple(v.strip() for v in variants.split(",") if v.strip())  # "a, b" as the help lists them
    check_variants(names, device)  # before the table's header
    click.echo(f"{'net':22s} {'variant':18s} {'params':>9s} {'img/s':>9s} {'x eager':>8s} {'warm-up s':>9s} {'peak MiB':>9s}")

    def show(r: dict) -> None:
        click.echo(f"{r['net']:22s} {r['variant']:18s} {r['params']:9d} {r['img_per_s']:9.0f} {r['vs_eager']:8.2f} "
                   f"{r['warmup_s']:9.1f} {r['peak_mib']:9.0f}")

    rows = unet_training(_channels(channels), batch_size, steps, device, repeats, names, peer=not no_peer, on_row=show)
    _write_json(json_path, rows)


@bench_cmd.command("sampling")
@click.option("--channels", default="32,64,128", show_default=True, help="U-Net widths per level.")
@click.option("--T", "T", type=click.IntRange(min=2), default=1000, show_default=True)
@click.option("--ddim-steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--compile-mode", type=click.Choice(["none", "default", "reduce-overhead", "max-autotune"]),
              default="default", show_default=True, help="Also time the samplers with the network compiled.")
@click.option("--no-peer", is_flag=True, help="Skip diffusers' DDIMScheduler / DDPMScheduler.")
@click.option("--json", "json_path", default=None, help="Also write the rows to this JSON file.")
def bench_sampling(channels, T, ddim_steps, batch_size, device, repeats, compile_mode, no_peer, json_path) -> None:
    """DDIM-S and DDPM-T wall time: zoo's samplers (eager and compiled network) and diffusers'
    schedulers driving the same network, each over NFE x one eager forward."""
    from zoo.bench import sampler_variants

    check_device(device)
    if ddim_steps > T:
        raise click.BadParameter(f"--ddim-steps {ddim_steps} exceeds --T {T}")

    def show(r: dict) -> None:
        click.echo(f"{r['impl']:34s} {r['sampler']:20s} {r['seconds']:8.3f} s  ratio {r['ratio']:.3f} "
                   f"(wall / NFE x one forward of {r['forward_s'] * 1e3:.2f} ms, batch {batch_size})")

    rows = sampler_variants(T, ddim_steps, batch_size, _channels(channels), device, repeats,
                            None if compile_mode == "none" else compile_mode, peer=not no_peer, on_row=show)
    _write_json(json_path, rows)


@bench_cmd.command("profile")
@_unet_step_options(10, "Steps profiled (and per timed block).")
@click.option("--trace", "trace_path", default=None, help="Also write a Chrome trace (chrome://tracing, Perfetto).")
@click.option("--json", "json_path", default=None, help="Also write the result to this JSON file.")
@click.option("--cuda-graph", is_flag=True,
              help="Profile the whole step replayed as one CUDA graph (the cuda-graph variant of `zoo bench unet`; "
                   "CUDA only): where the GPU's time goes once the host is out of the loop.")
@click.option("--channels-last/--nchw", "channels_last", default=None,
              help="NHWC or NCHW weights (default: NHWC with --cuda-graph, as the Trainer on CUDA; NCHW otherwise).")
@click.option("--bf16", is_flag=True, help="The forward under bf16 autocast (cuda-graph-bf16 with --cuda-graph).")
def bench_profile(channels, batch_size, steps, device, repeats, trace_path, json_path, cuda_graph, channels_last,
                  bf16) -> None:
    """Where a training step's time goes: achieved FLOP/s against the machine's matmul rate, host time
    per operator category, the top operators and, on CUDA, kernels per step, GPU busy fraction and the
    kernels that take the most GPU time."""
    from zoo.bench import profile_step
    from zoo.common.config import UsageError

    check_device(device)
    if cuda_graph and device != "cuda":
        raise UsageError("--cuda-graph needs --device cuda")
    if trace_path:
        Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
    r = profile_step(_channels(channels), batch_size, steps, device, repeats, trace_path, cuda_graph=cuda_graph,
                     channels_last=channels_last, bf16=bf16)
    options = [o for o, on in (("NHWC", r["channels_last"]), ("bf16 autocast", bf16),
                               ("whole step as one CUDA graph", cuda_graph)) if on]
    click.echo(f"U-Net {r['channels']} ({r['params']} params), batch {batch_size}, {device}"
               f"{''.join(', ' + o for o in options)}: {r['step_ms']:.1f} ms "
               f"per step, {r['img_per_s']:.0f} img/s")
    click.echo(f"compute   : {r['gflop_per_step']:.2f} GFLOP per step (forward + backward) -> "
               f"{r['achieved_gflops']:.1f} GFLOP/s = {r['of_peak']:.1%} of this machine's fp32 matmul "
               f"({r['matmul_gflops']:.0f} GFLOP/s)")
    if "gpu_busy" in r:
        click.echo(f"GPU       : busy {r['gpu_busy']:.1%} of the wall, {r['kernels_per_step']:.0f} kernels per step "
                   f"(low busy = launch-bound: the host, not the GPU, sets the pace)")
    adam = r["adam_step_ms"]
    click.echo(f"optimiser : Adam step {adam['per-tensor']:.2f} ms per tensor, {adam['foreach']:.2f} ms foreach "
               f"({adam['per-tensor'] / adam['foreach']:.1f}x), {adam['fused']:.2f} ms fused "
               f"({adam['per-tensor'] / adam['fused']:.1f}x); the Trainer runs foreach on the CPU (bit-identical "
               f"to per tensor), fused on CUDA")
    if r["host_phases"]:  # (a graph replay has none)
        click.echo("phases    : " + ", ".join(f"{k} {v:.0%}" for k, v in r["host_phases"].items()) + " of the host time")
    click.echo(f"host      : {r['aten_calls_per_step']:.0f} aten calls per step; self time by category: "
               + ", ".join(f"{k} {v:.0%}" for k, v in r["host_shares"].items()))
    click.echo(f"{'top operators (self time)':44s} {'calls/step':>10s} {'ms/step':>8s}")
    for o in r["top_ops"]:
        click.echo(f"{o['op'][:44]:44s} {o['calls_per_step']:10.1f} {o['self_ms_per_step']:8.2f}")
    if r.get("kernel_shares"):
        click.echo("GPU time  : " + ", ".join(f"{k} {v:.0%}" for k, v in r["kernel_shares"].items())
                   + " (by kernel name)")
    if r.get("top_kernels"):
        click.echo(f"{'top GPU kernels (device time)':64s} {'calls/step':>10s} {'ms/step':>8s}")
        for k in r["top_kernels"]:
            click.echo(f"{k['kernel'][:64]:64s} {k['calls_per_step']:10.1f} {k['ms_per_step']:8.3f}")
    _write_json(json_path, [r])


@bench_cmd.command("threads")
@click.option("--steps", type=click.IntRange(min=5), default=20, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=10), default=240.0, show_default=True,
              help="Seconds a single measurement may take.")
@click.option("--json", "json_path", default=None, help="Also write the rows to this JSON file.")
def bench_threads(steps: int, timeout: float, json_path) -> None:
    """CPU thread settings, alone and beside a competing training job (measure on an otherwise idle machine)."""
    from zoo.bench import thread_policies

    def show(r: dict) -> None:
        rate = f"{r['steps_per_s']:.2f} steps/s" if r["steps_per_s"] else f"over {r['timeout_s']:.0f} s"
        click.echo(f"{r['situation']:24s} {r['setting']:36s} {rate}")

    rows = thread_policies(steps, timeout, on_row=show)
    click.echo(f"zoo's policy (zoo/common/threads.py): {rows[0]['policy_threads']} thread(s) alone, "
               f"{rows[-1]['policy_threads']} beside one busy job")
    _write_json(json_path, rows)


@bench_cmd.command("allocator")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rounds per setting, the two settings alternating; the best round of each.")
@click.option("--timeout", type=click.FloatRange(min=10), default=300.0, show_default=True,
              help="Seconds a single measurement may take.")
@click.option("--json", "json_path", default=None, help="Also write the rows to this JSON file.")
def bench_allocator(repeats: int, timeout: float, json_path) -> None:
    """The host memory policy (zoo/common/allocator.py) against glibc's defaults, each in a fresh process:
    the demo's U-Net forward (batch 256, 1024) and training step (batch 32); measure on an idle machine."""
    from zoo.bench.allocator import allocator_policies

    click.echo(f"{'workload':18s} {'glibc defaults':>28s} {'zoo policy (keep)':>28s} {'speed-up':>9s}")

    def cell(r: dict | None) -> str:
        if r is None:
            return f"{'failed or over the timeout':>28s}"
        return f"{r['images_per_s']:7.0f} img/s {r['minor_faults_per_call']:8.0f} flt".rjust(28)

    def show(row: dict) -> None:
        speed = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
        click.echo(f"{row['workload'] + ' batch ' + str(row['batch_size']):18s} {cell(row['system'])} "
                   f"{cell(row['keep'])} {speed:>9s}")

    rows = allocator_policies(repeats=repeats, timeout=timeout, on_row=show)
    peaks = [(r["system"]["peak_rss_mb"], r["keep"]["peak_rss_mb"]) for r in rows if r["system"] and r["keep"]]
    click.echo("flt: minor page faults per call; peak resident MB (defaults / policy): "
               + ", ".join(f"{a:.0f} / {b:.0f}" for a, b in peaks))
    _write_json(json_path, rows)
