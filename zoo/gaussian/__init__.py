"""Gaussian variance-preserving diffusion (SPEC section 1).

- ``schedules``: beta schedules (pure functions);
- ``process``: ``VPProcess`` (forward process, posterior, exact eps/x0/v/mean conversions, respacing);
- ``samplers``: ``ddpm``, ``ddim``, ``ode`` (Euler / Heun), ``CountingDenoiser``;
- ``losses``: ``simple``, ``elbo-eps``, ``mean-matching``, one value per example;
- ``likelihood``: the ELBO in nats and bits/dim with its per-term breakdown;
- ``model``: ``Config``, ``build`` and ``GaussianDiffusion`` for the shared Trainer, guidance.
"""
