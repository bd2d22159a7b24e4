"""Box arithmetic: mmdet 2.x ``DeltaXYWHBBoxCoder`` and pairwise IoU (no +1).

Boxes are ``[..., 4]`` float32 ``x1, y1, x2, y2`` in pixels.

Wrapped boxes (a full 360° panorama of width ``W``, the R-CNN branches'
``circular=True``): ``0 <= x1 < W`` and ``x1 < x2 <= x1 + W``; a box with
``x2 > W`` crosses the seam and covers columns ``[x1, W) ∪ [0, x2 - W)``.
``decode(..., circular=True)`` makes them (x wrapped, y clipped) and
``pairwise_iou(..., period=W)`` measures their overlap on the circle. Boxes
that do not cross the seam are ordinary boxes, so every flat consumer reads
them unchanged.
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
           wh_ratio_clip: float = WH_RATIO_CLIP,
           circular: bool = False) -> jnp.ndarray:
  """mmdet ``delta2bbox`` (means 0); clips to ``max_shape=(H, W)`` if given.

  ``circular=True`` (needs ``max_shape``): y is clipped as usual, x is
  wrapped instead (module docstring): ``x1`` modulo ``W``, ``x2 = x1 +``
  the width capped at ``W``. ``rois`` may be wrapped boxes themselves.
  """
  rois = rois.astype(jnp.float32)
  d = deltas.astype(jnp.float32) * jnp.asarray(stds, jnp.float32)
  max_ratio = abs(math.log(wh_ratio_clip))
  pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
  pwh = rois[..., 2:] - rois[..., :2]
  dwh = jnp.clip(d[..., 2:], -max_ratio, max_ratio)
  gxy = pxy + pwh * d[..., :2]
  gwh = pwh * jnp.exp(dwh)
  boxes = jnp.concatenate([gxy - 0.5 * gwh, gxy + 0.5 * gwh], -1)
  if circular:
    if max_shape is None:
      raise ValueError("decode(circular=True) needs max_shape=(H, W)")
    return wrap_boxes(boxes, max_shape)
  if max_shape is not None:
    h, w = max_shape
    hi = jnp.asarray([w, h, w, h], jnp.float32)
    boxes = jnp.clip(boxes, 0.0, hi)
  return boxes


def wrap_boxes(boxes: jnp.ndarray, image_shape: tuple[int, int]
               ) -> jnp.ndarray:
  """Boxes on the ``(H, W)`` panorama in the wrapped convention (module
  docstring): y clipped to ``[0, H]``, ``x1`` modulo ``W``, ``x2 = x1 +
  min(x2 - x1, W)``."""
  h, w = float(image_shape[0]), float(image_shape[1])
  boxes = boxes.astype(jnp.float32)
  width = jnp.clip(boxes[..., 2] - boxes[..., 0], 0.0, w)
  x1 = jnp.mod(boxes[..., 0], w)
  x1 = jnp.where(x1 >= w, x1 - w, x1)  # mod of a tiny negative rounds to W
  y1 = jnp.clip(boxes[..., 1], 0.0, h)
  y2 = jnp.clip(boxes[..., 3], 0.0, h)
  return jnp.stack([x1, y1, x1 + width, y2], -1)


def area(boxes: jnp.ndarray) -> jnp.ndarray:
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray, eps: float = 1e-6,
                 period: float | None = None) -> jnp.ndarray:
  """IoU matrix ``[..., n, m]`` as mmdet ``bbox_overlaps`` (mode iou, no +1).

  ``period=W``: the horizontal overlap is taken on a circle of circumference
  ``W`` (wrapped boxes, module docstring; any representative of a box modulo
  ``W`` gives the same value, widths are capped at ``W``).
  """
  if period is not None:
    return _circular_iou(a, b, float(period), eps)
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[..., :, None] + area(b)[..., None, :] - inter
  return inter / jnp.maximum(union, eps)


def _circular_iou(a: jnp.ndarray, b: jnp.ndarray, period: float,
                  eps: float) -> jnp.ndarray:
  """``pairwise_iou`` with x on a circle of circumference ``period``.

  With ``a``'s interval moved to ``[0, wa)`` and ``b``'s start to
  ``d = (b.x1 - a.x1) mod W`` in ``[0, W)``, only two copies of ``b`` can meet
  ``a`` (widths <= W): ``[d, d + wb)`` and ``[d - W, d - W + wb)``.
  """
  wa = jnp.clip(a[..., :, None, 2] - a[..., :, None, 0], 0.0, period)
  wb = jnp.clip(b[..., None, :, 2] - b[..., None, :, 0], 0.0, period)
  d = jnp.mod(b[..., None, :, 0] - a[..., :, None, 0], period)
  ix = (jnp.maximum(jnp.minimum(wa, d + wb) - d, 0.0)
        + jnp.maximum(jnp.minimum(wa, d + wb - period), 0.0))
  iy = jnp.maximum(jnp.minimum(a[..., :, None, 3], b[..., None, :, 3])
                   - jnp.maximum(a[..., :, None, 1], b[..., None, :, 1]), 0.0)
  inter = ix * iy
  ha = jnp.maximum(a[..., 3] - a[..., 1], 0.0)
  hb = jnp.maximum(b[..., 3] - b[..., 1], 0.0)
  union = (wa * ha[..., :, None]) + (wb * hb[..., None, :]) - inter
  return inter / jnp.maximum(union, eps)
