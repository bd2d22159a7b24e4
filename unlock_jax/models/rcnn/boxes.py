"""Box arithmetic: mmdet 2.x ``DeltaXYWHBBoxCoder`` and pairwise IoU (no +1).

Boxes are ``[..., 4]`` float32 ``x1, y1, x2, y2`` in pixels.
"""
import math
from typing import Sequence

import jax.numpy as jnp

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
WH_RATIO_CLIP = 16 / 1000


def encode(proposals: jnp.ndarray, gt: jnp.ndarray,
           stds: Sequence[float] = RPN_STDS) -> jnp.ndarray:
  """mmdet ``bbox2delta`` with means 0: deltas of ``gt`` w.r.t. ``proposals``.

  Degenerate proposals would give inf/NaN; callers only use the deltas of
  positive samples, and we guard widths with a tiny floor so that masked-out
  rows never poison gradients through ``where``.
  """
  proposals = proposals.astype(jnp.float32)
  gt = gt.astype(jnp.float32)
  pw = jnp.maximum(proposals[..., 2] - proposals[..., 0], 1e-6)
  ph = jnp.maximum(proposals[..., 3] - proposals[..., 1], 1e-6)
  px = (proposals[..., 0] + proposals[..., 2]) * 0.5
  py = (proposals[..., 1] + proposals[..., 3]) * 0.5
  gw = jnp.maximum(gt[..., 2] - gt[..., 0], 1e-6)
  gh = jnp.maximum(gt[..., 3] - gt[..., 1], 1e-6)
  gx = (gt[..., 0] + gt[..., 2]) * 0.5
  gy = (gt[..., 1] + gt[..., 3]) * 0.5
  deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph,
                      jnp.log(gw / pw), jnp.log(gh / ph)], -1)
  return deltas / jnp.asarray(stds, jnp.float32)


def decode(rois: jnp.ndarray, deltas: jnp.ndarray,
           stds: Sequence[float] = RPN_STDS,
           max_shape: tuple[int, int] | None = None,
           wh_ratio_clip: float = WH_RATIO_CLIP) -> jnp.ndarray:
  """mmdet ``delta2bbox`` (means 0); clips to ``max_shape=(H, W)`` if given."""
  rois = rois.astype(jnp.float32)
  d = deltas.astype(jnp.float32) * jnp.asarray(stds, jnp.float32)
  max_ratio = abs(math.log(wh_ratio_clip))
  pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
  pwh = rois[..., 2:] - rois[..., :2]
  dwh = jnp.clip(d[..., 2:], -max_ratio, max_ratio)
  gxy = pxy + pwh * d[..., :2]
  gwh = pwh * jnp.exp(dwh)
  boxes = jnp.concatenate([gxy - 0.5 * gwh, gxy + 0.5 * gwh], -1)
  if max_shape is not None:
    h, w = max_shape
    hi = jnp.asarray([w, h, w, h], jnp.float32)
    boxes = jnp.clip(boxes, 0.0, hi)
  return boxes


def area(boxes: jnp.ndarray) -> jnp.ndarray:
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray, eps: float = 1e-6
                 ) -> jnp.ndarray:
  """IoU matrix ``[..., n, m]`` as mmdet ``bbox_overlaps`` (mode iou, no +1)."""
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[..., :, None] + area(b)[..., None, :] - inter
  return inter / jnp.maximum(union, eps)
