"""A model's variables from ``model.init``: concrete, or as shapes only.

Below both the train state (``train/steps.py``) and the checkpoint reader
(``checkpoint.py``), which restores into these shapes without importing a
trainer.
"""
import jax
import jax.numpy as jnp


def init_variables(model, rng, image_shape: tuple[int, ...]) -> dict:
  """``model.init`` on zeros (every rng stream seeded); params don't depend on batch."""
  p_rng, d_rng = jax.random.split(rng)
  return model.init({"params": p_rng, "dropout": d_rng, "sampling": d_rng},
                    jnp.zeros(image_shape, jnp.float32), train=False)


def param_shapes(model, image_shape: tuple[int, ...]):
  """Abstract parameter tree (no compute), e.g. to build the optimiser."""
  return jax.eval_shape(lambda r: init_variables(model, r, image_shape)["params"],
                        jax.random.key(0))
