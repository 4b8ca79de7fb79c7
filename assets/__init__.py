"""Data files shipped with posterior_diffusion: built-in prior weights, telescope arrays, sample images."""
