"""The CPU thread policy of the `zoo` command (issue 13, part 4), applied before torch is imported.

torch's CPU kernels run on an OpenMP pool of one thread per core whose idle threads spin
(busy-wait) between parallel regions. Alone on a machine that is fastest; beside another job on
the same few cores the spinning threads and the other job's threads take turns on every core and
a run slows 5-100x (`zoo bench threads` measures it). The policy:

- ``OMP_NUM_THREADS`` = the cores that other work leaves free right now, at least one (the busy
  share of all cores over 0.2 s from /proc/stat; the 1-minute load average where there is none);
- ``OMP_WAIT_POLICY=PASSIVE`` always, so that idle threads sleep instead of spinning: it cost nothing
  alone and kept a run at 1.84 instead of 1.10 steps/s once another job shared the cores
  (`zoo bench threads`, 2-core CPU, docs/benchmarks.md);
- a variable the user has set is never changed.
"""

from __future__ import annotations

import os
import sys
import time


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(interval: float = 0.2) -> float:
    """How many cores other work keeps busy now: the busy share over `interval` s x the core count
    (Linux); elsewhere the 1-minute load average."""
    try:
        b0, t0 = _cpu_times()
        time.sleep(interval)
        b1, t1 = _cpu_times()
        return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def choose_threads(cpus: int, load: float) -> int:
    """Intra-op threads for `cpus` cores under a run-queue `load`: the free cores, at least one."""
    return max(1, min(cpus, cpus - int(load + 0.5)))


def apply_policy(environ=None, cpus: int | None = None, load: float | None = None) -> dict[str, str]:
    """Set OMP_NUM_THREADS and OMP_WAIT_POLICY in `environ`, each unless already set; returns
    what was set. Has an effect on torch only before torch is first imported (the CLI's entry point)."""
    environ = os.environ if environ is None else environ
    chosen = {}
    if "OMP_NUM_THREADS" not in environ:
        cpus = usable_cpus() if cpus is None else cpus
        chosen["OMP_NUM_THREADS"] = str(choose_threads(cpus, busy_cores() if load is None else load))
    if "OMP_WAIT_POLICY" not in environ:
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    environ.update(chosen)
    return chosen


def apply_policy_if_torch_not_loaded() -> dict[str, str]:
    """The entry point's call: a no-op once torch is imported (its pool is then fixed)."""
    return {} if "torch" in sys.modules else apply_policy()
