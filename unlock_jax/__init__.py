"""unlock_jax: UNLOCK (ICCV 2025) source-free occlusion-aware seamless segmentation in JAX/Flax.

``unlock_jax.load(path)`` gives a model to ``predict`` images with (``api.py``);
importing the package imports nothing heavy (JAX loads on the first ``load``).
"""
__version__ = "0.1.0"


def load(path, config=None, **kwargs):
  """A model from a folder of weights, ready to ``predict`` (see ``unlock_jax/api.py``)."""
  from unlock_jax import api  # pylint: disable=g-import-not-at-top
  return api.load(path, config, **kwargs)
