"""A tiny AmodalPASS with both R-CNN branches and a batch of random images (predict tests)."""
import jax
import numpy as np

from unlock_jax import sharding as shd
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import variables as variables_lib


def tiny_detector(h: int, w: int, batch: int = 4):
  """``(mesh, model, variables, images float32 [batch,h,w,3])``, random weights (seed 0)."""
  mesh = shd.make_mesh()
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = True
  model = amodalpass.build(cfg)
  variables = jax.jit(lambda r: variables_lib.init_variables(model, r, (1, h, w, 3)))(
      jax.random.key(0))
  images = np.random.default_rng(0).standard_normal((batch, h, w, 3)).astype(np.float32)
  return mesh, model, variables, images
