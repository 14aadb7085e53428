"""The host memory policy of the `zoo` command: keep freed tensor memory for reuse (glibc malloc).

torch allocates each CPU tensor with the C library's malloc and frees it when the tensor dies. With
glibc's defaults a block above the dynamic mmap threshold (128 KiB, growing to at most 32 MiB) is
its own mmap, and free memory at the top of the heap is returned to the kernel once it exceeds the
trim threshold. A U-Net forward allocates and frees activations of 1-80 MB dozens of times, so every
call maps fresh pages and faults on each 4 KiB of them: at batch 1024 of the demo's (8, 16) U-Net,
~340 000 minor page faults per forward and more system than user time; on a virtual machine, where
a fault also costs the host, the forward ran 2-3x slower than with the pages kept
(`zoo bench allocator`, docs/benchmarks.md). The policy, set with ``mallopt`` once at start-up:

- ``M_MMAP_THRESHOLD`` = 1 GiB: blocks up to 1 GiB come from the heap, so a freed activation's pages
  are reused by the next one (this also turns off glibc's dynamic threshold);
- ``M_TRIM_THRESHOLD`` = -1: the heap is never trimmed, so its pages stay mapped;
- ``M_TOP_PAD`` = 64 MiB: the heap grows in large steps.

Freed memory is reused, not returned (CUDA's caching allocator does the same for GPU memory): the
resident size stays at its high-water mark instead of shrinking between steps. That mark can be
higher than glibc's: for the first few calls torch's 64-byte aligned allocations ask for a little
more than a block just freed, so the heap grows by an activation or two before freed blocks merge
(up to a third more peak memory measured for one U-Net; -3% to +5% over whole experiments).

Only glibc is touched (elsewhere nothing happens), and nothing is changed where the user chose:
``ZOO_MALLOC=system`` keeps the C library's defaults, as does any ``MALLOC_*_`` variable or a
``glibc.malloc`` tunable in ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import os

from zoo.common.config import ConfigError

POLICY = {"M_MMAP_THRESHOLD": 1 << 30, "M_TRIM_THRESHOLD": -1, "M_TOP_PAD": 64 << 20}
_PARAM = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3}  # mallopt's numbers, glibc's <malloc.h>
MODES = ("keep", "system")  # ZOO_MALLOC: keep (the policy, the default) | system (the C library's defaults)


class _State:
    applied: dict[str, int] | None = None


def _glibc():
    """The process's C library where it is glibc (it has ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


def _is_malloc_variable(name: str) -> bool:
    """glibc's own malloc variables: MALLOC_TOP_PAD_, MALLOC_MMAP_THRESHOLD_, ..."""
    return name.startswith("MALLOC_") and name.endswith("_")


def without_malloc_variables(environ=None) -> dict[str, str]:
    """A copy of the environment without glibc's malloc variables (for a child that must decide by
    ZOO_MALLOC alone)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not _is_malloc_variable(k)}


def user_choice(environ=None) -> str | None:
    """Why the policy must not apply (the user chose the allocator's settings), or None."""
    environ = os.environ if environ is None else environ
    mode = environ.get("ZOO_MALLOC", "keep")
    if mode not in MODES:
        raise ConfigError(f"ZOO_MALLOC must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "system":
        return "ZOO_MALLOC=system"
    chosen = sorted(k for k in environ if _is_malloc_variable(k))
    if chosen:
        return f"{chosen[0]} is set"
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    return None


def apply_policy(environ=None) -> dict[str, int]:
    """Set the policy's mallopt values once per process; returns what was set ({} where nothing was:
    not glibc, or the user's choice). Idempotent."""
    if _State.applied is not None:
        return _State.applied
    libc = None if user_choice(environ) else _glibc()
    applied = {}
    if libc is not None:
        for name, value in POLICY.items():
            if libc.mallopt(ctypes.c_int(_PARAM[name]), ctypes.c_int(value)) == 1:
                applied[name] = value
    _State.applied = applied
    return applied
