"""The VAE baseline: Gaussian encoder, Bernoulli or Gaussian decoder, IWAE NLL (SPEC section 4)."""
