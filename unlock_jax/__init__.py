"""unlock_jax: UNLOCK (ICCV 2025) source-free occlusion-aware seamless segmentation in JAX/Flax."""
__version__ = "0.1.0"
