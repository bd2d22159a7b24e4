"""RoIAlign (mmcv ``aligned=True``) on FPN levels, and a separable exact form.

mmcv semantics per RoI (scale = 1 / stride): start = x1 * scale - 0.5,
size = (x2 - x1) * scale, bin = size / out; sample points
``start + o * bin + (s + 0.5) * bin / S`` for ``s < S``; bilinear value with
zero outside ``[-1, L]`` and clamping to ``[0, L-1]`` inside; average of the
S×S samples of each bin.

mmdet uses ``sampling_ratio=0``: ``S = ceil(size / out)`` per RoI, which is
data dependent. We evaluate that adaptive rule on a static number of sample
slots per axis (``max_samples``, default 2) and mask the unused ones: exact
whenever the adaptive count fits, capped otherwise. Level mapping puts a
square RoI of 56..448 px at 14..28 cells on its level (smaller ones on level
0 at fewer cells), so its adaptive count is 1..2 for the 14×14 mask features
(exact with 2 slots) and 1..4 for the 7×7 box features (capped at 2 by
default; ``max_samples=4`` is exact at 4× the gathers). Elongated RoIs (the
level uses sqrt(w·h)) and RoIs above 448 px need more samples along their
long axis and are capped. ``tests/test_rcnn_roi_align.py`` quantifies the gap.
The bilinear kernel is separable, so for the 28×28 mask *targets* (one
channel) we build per-RoI weight matrices ``[out, L]`` with the adaptive count
and contract them with the mask: no gather. Its default cap
``ceil(max(H, W) / out)`` bounds the count of any RoI clipped to the image, so
these targets are exact mmcv numbers.
"""
import math
from typing import Sequence

import jax
import jax.numpy as jnp

FINEST_SCALE = 56
ROI_STRIDES = (4, 8, 16, 32)


def map_roi_levels(boxes: jnp.ndarray, num_levels: int = 4,
                   finest_scale: float = FINEST_SCALE) -> jnp.ndarray:
  """mmdet ``SingleRoIExtractor.map_roi_levels``: floor(log2(s/56 + 1e-6))."""
  scale = jnp.sqrt(jnp.maximum(
      (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 0.0))
  lvl = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
  return jnp.clip(lvl, 0, num_levels - 1).astype(jnp.int32)


def _axis_samples(start, size, out: int, sampling_ratio: int,
                  max_samples: int, length):
  """Sample coordinates ``[R, out*K]`` along one axis with their bilinear
  ``(low, high, w_low, w_high)`` (mmcv border rules). The weights include
  the sample mask and the ``1 / count`` of the bin average, so summing over
  the K samples of a bin gives mmcv's value.

  ``sampling_ratio > 0``: K = count = sampling_ratio. ``0``: mmcv's adaptive
  ``count = ceil(size / out)`` per RoI, evaluated on K = ``max_samples``
  static slots (exact whenever count <= max_samples, else capped).
  """
  bin_size = size / out
  if sampling_ratio > 0:
    k_slots = sampling_ratio
    count = jnp.full_like(size, float(sampling_ratio))
  else:
    k_slots = max_samples
    count = jnp.clip(jnp.ceil(bin_size), 1.0, float(max_samples))
  o = jnp.arange(out, dtype=jnp.float32)[:, None]
  k = jnp.arange(k_slots, dtype=jnp.float32)[None, :]
  cnt = count[:, None, None]
  v = (start[:, None, None] + o * bin_size[:, None, None]
       + (k + 0.5) * bin_size[:, None, None] / cnt)  # [R, out, K]
  used = (k < cnt) & (size > 0)[:, None, None]  # mmcv: 0 samples if size 0
  v = v.reshape(v.shape[0], -1)
  used = jnp.broadcast_to(used, (v.shape[0], out, k_slots)).reshape(
      v.shape[0], -1)
  scale = jnp.where(used, 1.0 / jnp.repeat(count, out * k_slots).reshape(
      v.shape), 0.0)
  length = jnp.asarray(length, jnp.float32)[:, None]
  inside = (v >= -1.0) & (v <= length)
  v = jnp.clip(v, 0.0, length - 1.0)
  low = jnp.floor(v)
  high = jnp.minimum(low + 1.0, length - 1.0)
  frac = v - low
  w_low = jnp.where(inside, 1.0 - frac, 0.0) * scale
  w_high = jnp.where(inside, frac, 0.0) * scale
  return low.astype(jnp.int32), high.astype(jnp.int32), w_low, w_high, k_slots


def multilevel_roi_align(feats: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                         output_size: int,
                         strides: Sequence[int] = ROI_STRIDES,
                         sampling_ratio: int = 0,
                         finest_scale: float = FINEST_SCALE,
                         max_samples: int = 2) -> jnp.ndarray:
  """RoIAlign of ``boxes [R, 4]`` on one image's levels ``[H_l, W_l, C]``.

  All levels are flattened into one ``[sum H_l W_l, C]`` table so each bin
  corner is one row gather, whatever the RoI's level. ``sampling_ratio=0``
  is mmcv's adaptive count capped at ``max_samples`` per axis. Returns
  ``[R, out, out, C]`` in the features' dtype.
  """
  num_levels = len(feats)
  c = feats[0].shape[-1]
  dtype = feats[0].dtype
  table = jnp.concatenate([f.reshape(-1, c) for f in feats], 0)
  sizes = [f.shape[:2] for f in feats]
  offsets = [0]
  for h, w in sizes[:-1]:
    offsets.append(offsets[-1] + h * w)
  lvl = map_roi_levels(boxes, num_levels, finest_scale)
  pick = lambda vals: jnp.asarray(vals, jnp.float32)[lvl]
  scale = 1.0 / pick([float(s) for s in strides[:num_levels]])
  hl = pick([float(h) for h, _ in sizes])
  wl = pick([float(w) for _, w in sizes])
  off = jnp.asarray(offsets, jnp.int32)[lvl]
  boxes = boxes.astype(jnp.float32)
  y0, y1, wy0, wy1, ks = _axis_samples(
      boxes[:, 1] * scale - 0.5, (boxes[:, 3] - boxes[:, 1]) * scale,
      output_size, sampling_ratio, max_samples, hl)
  x0, x1, wx0, wx1, _ = _axis_samples(
      boxes[:, 0] * scale - 0.5, (boxes[:, 2] - boxes[:, 0]) * scale,
      output_size, sampling_ratio, max_samples, wl)
  wl_i = wl.astype(jnp.int32)[:, None, None]
  base = off[:, None, None]
  out = 0.0
  for yi, wy in ((y0, wy0), (y1, wy1)):
    for xi, wx in ((x0, wx0), (x1, wx1)):
      idx = base + yi[:, :, None] * wl_i + xi[:, None, :]  # [R, P, P]
      w = (wy[:, :, None] * wx[:, None, :]).astype(dtype)
      out = out + table[idx] * w[..., None]
  r = boxes.shape[0]
  out = out.reshape(r, output_size, ks, output_size, ks, c)
  return jnp.sum(out.astype(jnp.float32), axis=(2, 4)).astype(dtype)


def adaptive_axis_weights(start: jnp.ndarray, size: jnp.ndarray, out: int,
                          length: int, max_samples: int) -> jnp.ndarray:
  """Separable mmcv RoIAlign weights ``[R, out, length]`` along one axis,
  with ``sampling_ratio=0`` (``ceil(size / out)`` samples, capped at
  ``max_samples``). The mmcv average divides by the *product* of both axes'
  counts; each axis here divides by its own count, which is the same."""
  n = jnp.clip(jnp.ceil(size / out), 1, max_samples)  # mmcv: count >= 1
  bin_size = size / out
  o = jnp.arange(out, dtype=jnp.float32)[None, :, None]
  k = jnp.arange(max_samples, dtype=jnp.float32)[None, None, :]
  nn = n[:, None, None]
  v = start[:, None, None] + o * bin_size[:, None, None] + (
      k + 0.5) * bin_size[:, None, None] / nn  # [R, out, K]
  inside = (v >= -1.0) & (v <= length) & (k < nn)
  vc = jnp.clip(v, 0.0, length - 1.0)
  grid = jnp.arange(length, dtype=jnp.float32)
  tri = jnp.maximum(0.0, 1.0 - jnp.abs(vc[..., None] - grid))  # [R,out,K,L]
  w = jnp.sum(jnp.where(inside[..., None], tri, 0.0), axis=2) / nn
  # A zero-size RoI has 0 samples in mmcv (ceil(0) = 0) and outputs 0.
  return jnp.where((size > 0)[:, None, None], w, 0.0)


def separable_roi_align(images: jnp.ndarray, boxes: jnp.ndarray, out: int,
                        max_samples: int | None = None) -> jnp.ndarray:
  """Exact mmcv RoIAlign (aligned, scale 1, adaptive sampling) of one-channel
  ``images [R, H, W]`` (one image per RoI) → ``[R, out, out]`` float32."""
  h, w = images.shape[-2:]
  if max_samples is None:
    max_samples = max(1, math.ceil(max(h, w) / out))
  boxes = boxes.astype(jnp.float32)
  wy = adaptive_axis_weights(boxes[:, 1] - 0.5, boxes[:, 3] - boxes[:, 1],
                             out, h, max_samples)
  wx = adaptive_axis_weights(boxes[:, 0] - 0.5, boxes[:, 2] - boxes[:, 0],
                             out, w, max_samples)
  t = jnp.einsum("roh,rhw->row", wy, images.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("row,rpw->rop", t, wx,
                    precision=jax.lax.Precision.HIGHEST)
