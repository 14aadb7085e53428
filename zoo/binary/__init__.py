"""Binary bit-flip diffusion on {-1, +1} images (SPEC section 2)."""
