"""The host memory policy (zoo/common/allocator.py): freed tensor memory stays mapped for reuse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoo.common import allocator
from zoo.common.config import ConfigError

GLIBC = allocator._glibc() is not None


def test_user_choice_is_respected():
    assert allocator.user_choice({}) is None and allocator.user_choice({"ZOO_MALLOC": "keep"}) is None
    assert allocator.user_choice({"ZOO_MALLOC": "system"}) == "ZOO_MALLOC=system"
    assert allocator.user_choice({"MALLOC_TOP_PAD_": "0"}) == "MALLOC_TOP_PAD_ is set"
    assert allocator.user_choice({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is not None
    assert allocator.user_choice({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "MALLOC_CHECK": "1"}) is None
    with pytest.raises(ConfigError, match="ZOO_MALLOC must be one of keep, system"):
        allocator.user_choice({"ZOO_MALLOC": "jemalloc"})


@pytest.mark.skipif(not GLIBC, reason="the policy sets glibc's mallopt")
def test_the_policy_stops_the_page_faults_of_reallocation(monkeypatch):
    """A 64 MiB tensor (16384 pages of 4 KiB) is above glibc's largest default mmap threshold, so by
    default every allocation maps fresh pages and faults on each one it writes; under the policy
    the freed block is reused from the heap and faults on none. One fresh process measures both:
    glibc's defaults first, then the policy. (The warm-up: torch's 64-byte aligned allocation asks
    for a little more than the block just freed, so the heap grows for the first few rounds, until
    freed blocks have merged; measured, at most 9 rounds.)"""
    code = ("import json, resource, torch\n"
            "def faults(warm_up):\n"
            "    for _ in range(warm_up): torch.ones(1 << 24)\n"
            "    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    for _ in range(8): torch.ones(1 << 24)\n"
            "    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 8\n"
            "system = faults(1)\n"
            "from zoo.common.allocator import apply_policy; applied = apply_policy()\n"
            "print(json.dumps({'system': system, 'applied': applied, 'keep': faults(16)}))")
    env = {**allocator.without_malloc_variables(), "ZOO_MALLOC": "keep"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    pages = (1 << 24) * 4 // 4096
    assert r["applied"] == allocator.POLICY
    assert r["system"] > pages / 2  # at least half the pages fault (all of them, without huge pages)
    assert r["keep"] < pages / 100
    # ZOO_MALLOC=system: nothing is set
    monkeypatch.setattr(allocator._State, "applied", None)
    monkeypatch.setenv("ZOO_MALLOC", "system")
    assert allocator.apply_policy() == {} and allocator.apply_policy() == {}


def test_the_cli_applies_the_policy_once_and_reports_a_bad_mode(monkeypatch, capsys):
    from zoo.cli import main

    calls = []
    monkeypatch.setattr(allocator, "apply_policy", lambda environ=None: calls.append(1) or {})
    main(["list"])
    assert calls == [1]
    monkeypatch.undo()
    monkeypatch.setattr(allocator._State, "applied", None)
    monkeypatch.setenv("ZOO_MALLOC", "bogus")
    with pytest.raises(SystemExit) as exit_:
        main(["list"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("zoo: error: ZOO_MALLOC must be one of keep, system")


@pytest.mark.skipif(not GLIBC, reason="the policy sets glibc's mallopt")
def test_bench_allocator_compares_the_two_settings_in_fresh_processes():
    """`zoo bench allocator`'s measurement: the demo U-Net's forward at batch 512, whose largest
    activations (39 MB) are above glibc's default mmap threshold, faults on thousands of pages per
    call with glibc's defaults and on a small fraction of those under the policy, at about the same
    peak memory."""
    from zoo.bench.allocator import allocator_policies

    (row,) = allocator_policies(cases=(("forward", 512),), calls=2, repeats=1)
    system, keep = row["system"], row["keep"]
    assert system["applied"] == {} and keep["applied"] == allocator.POLICY
    # after the warm-up: ~80 000 against 0 alone; 156 596 against 4 704 once, in the full suite
    assert system["minor_faults_per_call"] > 5000 and keep["minor_faults_per_call"] < system["minor_faults_per_call"] / 10
    # while the heap settles it may grow by an activation or two: 485-628 MB against 505-530 measured
    assert keep["peak_rss_mb"] < 1.5 * system["peak_rss_mb"]
    assert row["speedup"] == pytest.approx(keep["images_per_s"] / system["images_per_s"])
