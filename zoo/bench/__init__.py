"""Benchmarks behind `zoo bench`: ratios measured in one run, never timed tests.

overhead.py (Trainer / bare loop, sampler / NFE forwards), unet.py (the U-Net step's speed options and
sampling, with diffusers' peers), threads.py (CPU thread settings under load), step_profile.py (where a
step's time goes), allocator.py (the host memory policy), timing.py (the shared timer).
"""

from zoo.bench.allocator import allocator_policies
from zoo.bench.overhead import sampler_overhead, sampler_step_ops, trainer_overhead
from zoo.bench.step_profile import KERNEL_CATEGORIES, PROFILE_CATEGORIES, _category, _kernel_shares, profile_step
from zoo.bench.threads import thread_policies
from zoo.bench.unet import COMPILE_MODES, CUDA_ONLY, UNET_VARIANTS, graphed, sampler_variants, unet_training

__all__ = ["COMPILE_MODES", "CUDA_ONLY", "KERNEL_CATEGORIES", "PROFILE_CATEGORIES", "UNET_VARIANTS", "_category",
           "_kernel_shares", "allocator_policies", "graphed", "profile_step", "sampler_overhead", "sampler_step_ops",
           "sampler_variants", "thread_policies", "trainer_overhead", "unet_training"]
