"""synthpass: a seeded procedural street-scene generator written in the real data sets' layouts."""
from unlock_jax.data.synthpass import annotate
from unlock_jax.data.synthpass.generator import DATA_VERSION
from unlock_jax.data.synthpass.generator import categories
from unlock_jax.data.synthpass.generator import check_trained_on
from unlock_jax.data.synthpass.generator import generate
from unlock_jax.data.synthpass.generator import identity
from unlock_jax.data.synthpass.generator import image_sizes
from unlock_jax.data.synthpass.generator import render_scene

__all__ = ["DATA_VERSION", "annotate", "categories", "check_trained_on", "generate",
           "identity", "image_sizes", "render_scene"]
