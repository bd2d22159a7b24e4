"""mmdet 2.x ``AnchorGenerator`` anchors for a static list of feature-map sizes.

Semantics copied from mmdet 2.x (``center_offset=0``, no rounding):
base anchors are centred at (0, 0) of each cell, ratio = h / w with
``h_ratio = sqrt(ratio)``, ``w_ratio = 1 / h_ratio``, scale-major order
(ratios outer, scales inner), and grid shifts ``k * stride``. Anchors are
ordered (y, x, anchor) per level, which matches the NHWC flattening of the
RPN outputs ``[h, w, A]``.

On a full 360° panorama (the branches' ``circular=True``) the same anchors
serve: a level of a panorama ``W`` wide (a multiple of 64) has ``W / stride``
columns, so rolling the panorama by a multiple of the coarsest stride 64
moves every level's grid by whole cells; the anchors are permuted and their
decoded boxes, wrapped modulo ``W`` (``boxes.decode``), shift with the roll.
Anchors at the ends may stick out of ``[0, W]``; wrapping makes them boxes
that cross the seam.
"""
from typing import Sequence

import numpy as np

DEFAULT_STRIDES = (4, 8, 16, 32, 64)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (8.0,)


def base_anchors(base_size: float, scales: Sequence[float] = DEFAULT_SCALES,
                 ratios: Sequence[float] = DEFAULT_RATIOS) -> np.ndarray:
  """[A, 4] x1y1x2y2 anchors of one level centred at (0, 0)."""
  ratios = np.asarray(ratios, np.float32)
  scales = np.asarray(scales, np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = 1.0 / h_ratios
  ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
  return np.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], -1).astype(
      np.float32)


def grid_anchors(feat_size: tuple[int, int], stride: int,
                 scales: Sequence[float] = DEFAULT_SCALES,
                 ratios: Sequence[float] = DEFAULT_RATIOS) -> np.ndarray:
  """[h*w*A, 4] anchors of one level, ordered (y, x, anchor)."""
  h, w = feat_size
  base = base_anchors(float(stride), scales, ratios)
  sx = np.arange(w, dtype=np.float32) * stride
  sy = np.arange(h, dtype=np.float32) * stride
  xx, yy = np.meshgrid(sx, sy)  # [h, w], row-major like mmdet's _meshgrid
  shifts = np.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def multilevel_anchors(feat_sizes: Sequence[tuple[int, int]],
                       strides: Sequence[int] = DEFAULT_STRIDES,
                       scales: Sequence[float] = DEFAULT_SCALES,
                       ratios: Sequence[float] = DEFAULT_RATIOS
                       ) -> list[np.ndarray]:
  """One ``grid_anchors`` array per level (host numpy, static shapes)."""
  if len(feat_sizes) != len(strides):
    raise ValueError(
        f"{len(feat_sizes)} feature maps vs {len(strides)} strides")
  return [grid_anchors(tuple(s), st, scales, ratios)
          for s, st in zip(feat_sizes, strides)]
