"""Discrete diffusion on {-1, +1} images: bit-flip (SPEC section 2) and absorbing (SPEC 11)."""
