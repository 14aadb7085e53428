"""Gaussian variance-preserving diffusion (SPEC section 1).

- ``schedules``: beta schedules (pure functions), ``rescale_betas_zero_snr``, ``step_grid``
  (leading / trailing / linspace spacing);
- ``process``: ``VPProcess`` (forward process, posterior, exact eps/x0/v/mean conversions, respacing,
  ``split`` / ``reverse_mean`` that hold at alpha_bar_T = 0);
- ``samplers``: ``ddpm``, ``ddim``, ``ode`` (Euler / Heun), ``CountingDenoiser``; keywords ``spacing``
  and ``prediction``;
- ``losses``: ``simple``, ``elbo-eps``, ``mean-matching``, one value per example, and ``vlb``
  (the learned-variance term of the hybrid loss);
- ``likelihood``: the ELBO in nats and bits/dim with its per-term breakdown (8-bit, binary or
  continuous decoder; fixed or learned variances);
- ``learned_variance``: ``LearnedLogVariance`` (Nichol & Dhariwal's interpolation), ``ImportanceSampler``;
- ``ode_likelihood``: the probability-flow ODE likelihood in DDIM's variables, ``ContinuousAlphaBar``;
- ``model``: ``Config``, ``build`` and ``GaussianDiffusion`` for the shared Trainer, guidance.
"""
