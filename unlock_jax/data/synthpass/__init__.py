"""synthpass: a seeded procedural street-scene generator written in the real data sets' layouts."""
from unlock_jax.data.synthpass import annotate
from unlock_jax.data.synthpass.generator import categories
from unlock_jax.data.synthpass.generator import generate
from unlock_jax.data.synthpass.generator import image_sizes
from unlock_jax.data.synthpass.generator import render_scene

__all__ = ["annotate", "categories", "generate", "image_sizes", "render_scene"]
