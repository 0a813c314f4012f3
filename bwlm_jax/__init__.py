"""bwlm-jax: Balanced Weight Learning Mechanism (Fan et al. 2024) for long-tailed recognition in JAX."""

__version__ = '0.1.0'
