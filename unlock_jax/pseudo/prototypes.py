"""OPLL's prototype filter: a documented departure from the reference code.

The reference keeps a pseudo-label when its confidence passes the class-wise
threshold (docs/method.md §5); nothing checks that the *features* agree with the class.
Following ProDA and 360SFUDA++ (reliable panoramic prototypes), this module
builds one prototype per semantic class from the source model's decode-head
features (``AmodalPASS`` output ``sem_features``, bilinearly resized to the
panorama like the logits) and rejects pseudo-labels whose features point to
another class:

* prototype_c = Σ conf·f / Σ conf over every pixel of the whole target set
  whose OPLL label is c (label ≠ 255, i.e. it passed the thresholds); the
  sums stream over the set and merge across processes (:class:`Sums`);
* a pixel keeps its label c iff cos(f, p_c) + margin ≥ max_k cos(f, p_k),
  the maximum over the classes that have a prototype (a class without one
  is never contradicted);
* an instance that passed its threshold keeps its mask iff its mask-pooled
  feature (mean over the mask's pixels) passes the same test for its class;
  a rejected instance is treated like a low-score one (its pixels become
  uncertain, as ``labels.instance_labels(reject=...)`` does).

Cost: the features are not stored by ``predict`` (256 channels at stride 4
would be ~13 MB per 400×2048 panorama), so the filter runs the network twice
more over the set: once to sum prototypes, once to test pixels and masks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax import sharding as shd
from unlock_jax.data import labels
from unlock_jax.models import layers

_CACHE: dict = {}


class Sums:
  """Streaming confidence-weighted feature sums per class (float64)."""

  def __init__(self, num_classes: int = labels.NUM_CLASSES, dim: int = 0):
    self.sums = np.zeros((num_classes, dim), np.float64)
    self.weights = np.zeros((num_classes,), np.float64)

  def add(self, sums: np.ndarray, weights: np.ndarray) -> None:
    sums = np.asarray(sums, np.float64)
    if self.sums.shape[1] == 0:
      self.sums = np.zeros_like(sums)
    self.sums += sums
    self.weights += np.asarray(weights, np.float64)

  def merge(self, other: "Sums") -> None:
    self.add(other.sums, other.weights)

  def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
    """``(prototypes [K,C] float32 unit-norm, present [K] bool)``."""
    present = self.weights > 0
    protos = np.where(present[:, None], self.sums / np.maximum(self.weights, 1e-12)[:, None], 0)
    norm = np.linalg.norm(protos, axis=1, keepdims=True)
    protos = np.where(norm > 0, protos / np.maximum(norm, 1e-12), 0)
    return protos.astype(np.float32), present & (norm[:, 0] > 0)


def _features(model, variables, image):
  out = model.apply(variables, image, train=False)
  f = layers.resize_bilinear(out["sem_features"].astype(jnp.float32), image.shape[1:3])
  return f


def sums_fn(model, mesh):
  """Jitted ``(variables, image, label [B,H,W] int32, weight [B,H,W]) -> (sums [B,K,C], w [B,K])``."""
  key = ("sums", id(model), id(mesh))
  if key not in _CACHE:
    def fn(variables, image, label, weight):
      f = _features(model, variables, image)
      onehot = jax.nn.one_hot(label, labels.NUM_CLASSES, dtype=jnp.float32)  # 255 -> zeros
      wk = onehot * weight[..., None]
      return jnp.einsum("bhwk,bhwc->bkc", wk, f), wk.sum((1, 2))
    _CACHE[key] = (model, jax.jit(fn, out_shardings=shd.data_sharding(mesh)))
  return _CACHE[key][1]


def _agree(cos, own, present, margin):
  """cos [..., K], own [...] int → own class within ``margin`` of the best present one."""
  best = jnp.max(jnp.where(present, cos, -jnp.inf), -1)
  own_c = jnp.take_along_axis(cos, jnp.clip(own, 0, cos.shape[-1] - 1)[..., None], -1)[..., 0]
  own_present = present[jnp.clip(own, 0, cos.shape[-1] - 1)]
  return jnp.where(own_present, own_c + margin >= best, True)


def filter_fn(model, mesh):
  """Jitted prototype test of one batch.

  ``(variables, image, label [B,H,W] int32, masks_m [B,N,H,W] bool,
  classes_m [B,N] int32 (semantic ids), masks_a, classes_a, protos [K,C],
  present [K], margin) -> (pixel_keep [B,H,W] bool, keep_m [B,N], keep_a [B,N])``.
  """
  key = ("filter", id(model), id(mesh))
  if key not in _CACHE:
    def fn(variables, image, label, masks_m, classes_m, masks_a, classes_a,
           protos, present, margin):
      f = _features(model, variables, image)
      fn_ = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
      cos = jnp.einsum("bhwc,kc->bhwk", fn_, protos)
      pixel_keep = jnp.where(label == labels.IGNORE, False,
                             _agree(cos, label, present, margin))

      def inst(masks, classes):
        m = masks.astype(jnp.float32)
        pooled = jnp.einsum("bnhw,bhwc->bnc", m, f) / jnp.maximum(m.sum((2, 3)), 1.0)[..., None]
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return _agree(jnp.einsum("bnc,kc->bnk", pooled, protos), classes, present, margin)
      return pixel_keep, inst(masks_m, classes_m), inst(masks_a, classes_a)
    _CACHE[key] = (model, jax.jit(fn, out_shardings=(
        shd.data_sharding(mesh),) * 3))
  return _CACHE[key][1]


def reference_filter(features: np.ndarray, label: np.ndarray, masks: np.ndarray,
                     classes: np.ndarray, protos: np.ndarray, present: np.ndarray,
                     margin: float = 0.0):
  """Plain numpy version of the test for one image (features at label size).

  Used by the tests as an independent check of the jitted path and handy for
  users' own analysis. Returns ``(pixel_keep [H,W], instance_keep [N])``.
  """
  def agree(vec, c):
    if not present[c]:
      return True
    v = vec / max(np.linalg.norm(vec), 1e-12)
    cos = protos @ v
    return cos[c] + margin >= cos[present].max()
  h, w = label.shape
  keep = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      if label[y, x] != labels.IGNORE:
        keep[y, x] = agree(features[y, x], int(label[y, x]))
  inst = np.array([agree((features * m[..., None]).sum((0, 1)) / max(m.sum(), 1), int(c))
                   for m, c in zip(masks.astype(np.float64), classes)], bool)
  return keep, inst
