"""Gaussian variance-preserving diffusion (SPEC section 1)."""
