"""ClassMix and the mixed targets of UNLOCK's self-training branch (docs/method.md §7.4).

The mixed image takes the pixels of the chosen classes from the pseudo-labelled
(PL) image and everything else from the unlabeled image:

    M_i     = [y_pl_i ∈ chosen_i]
    x_mix_i = M_i·x_pl_i + (1−M_i)·x_u_i
    y_mix_i = M_i·y_pl_i + (1−M_i)·ŷ_teacher_i
    w_mix_i = M_i·1      + (1−M_i)·w_teacher_i

Two quirks of the reference (DACS ``get_class_masks``) are kept on purpose:
the candidate classes are the labels present anywhere in the **batch** (not
in image i), so a chosen class may be absent from image i; and 255 (ignore) is
a class like any other, so ignored PL pixels can be pasted (they stay ignored
in the mixed label).

Static shapes: a label is an integer in [0, 256), so class sets are
``[B,256]`` boolean vectors and the ⌈n/2⌉-subset is "the ⌈n/2⌉ present labels
with the highest random scores", which is a uniformly random subset.
"""
import jax
import jax.numpy as jnp

NUM_LABEL_VALUES = 256   # labels are uint8 values; 255 = ignore


def present_labels(labels: jax.Array) -> jax.Array:
  """bool ``[256]``: which label values occur anywhere in the batch ``[B,H,W]``."""
  flat = jnp.ravel(labels).astype(jnp.int32)
  return jnp.zeros((NUM_LABEL_VALUES,), bool).at[flat].set(True)


def choose_classes(labels: jax.Array, key: jax.Array) -> jax.Array:
  """bool ``[B,256]``: per image, ⌈n/2⌉ of the n batch labels, uniformly, without replacement.

  Each image scores every label value with an independent uniform, pushes the
  absent ones below all present ones, and keeps the ⌈n/2⌉ best: the rank of
  i.i.d. scores is a uniform random order of the present labels.
  """
  present = present_labels(labels)
  n = jnp.sum(present, dtype=jnp.int32)
  k = (n + 1) // 2                            # int((n + n % 2) / 2) in the reference
  scores = jax.random.uniform(key, (labels.shape[0], NUM_LABEL_VALUES))
  scores = jnp.where(present, scores, -1.0)
  rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)   # 0 = highest score
  return present & (rank < k)


def class_masks(labels: jax.Array, key: jax.Array) -> jax.Array:
  """ClassMix masks bool ``[B,H,W]``: ``M_i = isin(labels_i, chosen_i)`` (True → take the PL image)."""
  chosen = choose_classes(labels, key)
  flat = jnp.reshape(labels, (labels.shape[0], -1)).astype(jnp.int32)
  return jnp.take_along_axis(chosen, flat, axis=1).reshape(labels.shape)


def mix(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """``a`` where ``mask`` else ``b``; mask ``[B,H,W]`` broadcast over trailing axes (channels).

  A select rather than the reference's ``M·a + (1−M)·b``: identical for finite
  values and M ∈ {0,1}, and valid for integer labels.
  """
  m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
  return jnp.where(m, a, b)


def ignored_rows(height: int, *, ignore_top: int = 11, ignore_bottom: int = 88,
                 crop_height: int = 400) -> tuple[int, int]:
  """Rows (top, bottom) whose teacher weight is zeroed for a crop of ``height`` rows.

  The reference's 11 / 88 rows are for 400-row crops. Other heights scale them
  proportionally, rounding to nearest with halves up (``floor(r·H/400 + 0.5)``),
  so the same fraction of the image is ignored: 64 rows → (2, 14). A count that
  scales to 0 ignores nothing (the reference's ``w[:, -0:]`` would zero all).
  """
  scale = lambda r: (2 * r * height + crop_height) // (2 * crop_height)   # exact integer rounding
  return scale(ignore_top), scale(ignore_bottom)


def teacher_pseudo_weight(conf: jax.Array, threshold: float = 0.968, *, ignore_top: int = 11,
                          ignore_bottom: int = 88, crop_height: int = 400) -> jax.Array:
  """Teacher pixel weight float32 ``[B,H,W]``: ONE scalar for the whole batch, 0 in the ignored rows.

  The scalar is the fraction of all B·H·W pixels (ignored rows included) whose
  teacher confidence is ≥ ``threshold`` — not a per-image or per-pixel weight
  (sfda L305-310). The top/bottom rows (rectification artefacts in the
  reference's reasoning) get weight 0; see ``ignored_rows`` for other heights.
  """
  q = (jnp.sum(conf >= threshold, dtype=jnp.int32) / conf.size).astype(jnp.float32)
  hgt = conf.shape[1]
  top, bottom = ignored_rows(hgt, ignore_top=ignore_top, ignore_bottom=ignore_bottom,
                             crop_height=crop_height)
  row = jnp.arange(hgt)
  keep = (row >= top) & (row < hgt - bottom)
  return jnp.broadcast_to(jnp.where(keep[:, None], q, 0.0), conf.shape).astype(jnp.float32)


def mixed_targets(mask: jax.Array, pl_labels: jax.Array, teacher_labels: jax.Array,
                  teacher_weight: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mixed labels (PL where ``mask``, teacher's argmax elsewhere) and pixel weights (1 / teacher's)."""
  labels = mix(mask, pl_labels.astype(jnp.int32), teacher_labels.astype(jnp.int32))
  weights = mix(mask, jnp.ones_like(teacher_weight, jnp.float32),
                teacher_weight.astype(jnp.float32))
  return labels, weights
