"""Continuous-time variance-exploding diffusion (SPEC section 3): `ve` (process, samplers), `model` (formulation)."""
