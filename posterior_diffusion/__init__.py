"""posterior_diffusion: sample p(x | y) for imaging inverse problems with diffusion priors."""
