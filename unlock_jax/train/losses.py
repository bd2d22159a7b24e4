"""Semantic cross-entropy as mmseg computes it for the decode head."""
import jax
import jax.numpy as jnp

from unlock_jax.data import labels
from unlock_jax.models import layers


def semantic_ce(logits: jax.Array, target: jax.Array, *,
                normalize: str = "all_pixels",
                weight: jax.Array | None = None) -> jax.Array:
  """Pixel-wise softmax CE with ignore index 255.

  Args:
    logits: [B,h,w,C] at any stride; upsampled to the label size first.
    target: [B,H,W] int, 255 = ignore.
    normalize: ``"all_pixels"`` divides by B·H·W as mmseg's CrossEntropyLoss
      with ``avg_non_ignore=False`` (the reference); ``"valid_pixels"`` by the
      number of non-ignored pixels.
    weight: optional [B,H,W] or [B,1,1] per-pixel weight (pseudo-label weight).
  """
  logits = layers.resize_bilinear(logits.astype(jnp.float32), target.shape[1:])
  valid = target != labels.IGNORE
  safe = jnp.where(valid, target, 0).astype(jnp.int32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  w = valid.astype(jnp.float32)
  if weight is not None:
    w = w * weight
  total = jnp.sum(nll * w)
  if normalize == "all_pixels":
    return total / target.size
  if normalize == "valid_pixels":
    return total / jnp.maximum(jnp.sum(valid), 1)
  raise ValueError(f"normalize must be 'all_pixels' or 'valid_pixels', got {normalize!r}")
