"""CPU thread settings, idle and beside a competing job (the policy itself is zoo/common/threads.py)."""

from __future__ import annotations

import time


def _trainer_rate(env: dict, steps: int, timeout: float) -> float | None:
    """Trainer steps/s of `zoo bench trainer` in a fresh process with `env` (None: it timed out)."""
    import os
    import re
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "zoo.cli", "bench", "trainer", "--steps", str(steps), "--repeats", "1"]
    try:
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return None
    found = re.search(r"Trainer\s*:\s*([\d.]+) steps/s", out)
    return float(found.group(1)) if found else None


def thread_policies(steps: int = 20, timeout: float = 240.0, on_row=None) -> list[dict]:
    """`zoo bench trainer` steps/s per thread setting, alone and beside a competing training job (a
    second trainer with torch's default threads, the situation of a test run or a helper's training)."""
    import os
    import subprocess
    import sys

    from zoo.common.threads import choose_threads, usable_cpus

    cpus = usable_cpus()
    settings = [(f"{cpus} threads, spinning (torch's default)", {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "ACTIVE"}),
                (f"{cpus} threads, passive wait", {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"}),
                ("1 thread", {"OMP_NUM_THREADS": "1"})]
    rows = []
    for situation in ("alone", "beside a competing job"):
        competitor = None
        if situation != "alone":
            competitor = subprocess.Popen([sys.executable, "-m", "zoo.cli", "bench", "trainer", "--steps", "100000",
                                           "--repeats", "1"], env={**os.environ, "OMP_NUM_THREADS": str(cpus)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(5)  # let it start training
        try:
            for label, env in settings:
                rate = _trainer_rate(env, steps, timeout)
                picked = choose_threads(cpus, 0.0 if situation == "alone" else 1.0)
                row = {"situation": situation, "setting": label, "steps_per_s": rate, "cpus": cpus,
                       "policy_threads": picked, "timeout_s": timeout}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    return rows
