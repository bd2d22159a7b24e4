"""unlock_jax."""
