"""Loss primitives shared by the RPN and the R-CNN heads."""
import jax.numpy as jnp


def sigmoid_bce(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Element-wise, numerically stable BCE-with-logits (PyTorch's formula)."""
  z = logits.astype(jnp.float32)
  return jnp.maximum(z, 0) - z * labels + jnp.log1p(jnp.exp(-jnp.abs(z)))
