"""RoIAlign (mmcv ``aligned=True``) on FPN levels, and a separable exact form.

mmcv semantics per RoI (scale = 1 / stride): start = x1 * scale - 0.5,
size = (x2 - x1) * scale, bin = size / out; sample points
``start + o * bin + (s + 0.5) * bin / S`` for ``s < S``; bilinear value with
zero outside ``[-1, L]`` and clamping to ``[0, L-1]`` inside; average of the
S×S samples of each bin.

mmdet uses ``sampling_ratio=0``: ``S = ceil(size / out)`` per RoI and axis,
which is data dependent. Two static forms:

* exact (``max_samples=0``, the default): the bin average is a weighted sum of
  the feature cells, separable in y and x. Each RoI gathers the cells of its
  footprint (the rectangle its samples touch) into a fixed budget of slots,
  row-major with its own row length, and contracts them with per-bin weights
  ``wy[o_y, row] * wx[o_x, col]`` (one batched matmul). The budget bounds the
  footprint of every RoI the level mapping can send to each level (the area
  of a level-l RoI is below ``(2 * finest_scale * 2**l / stride_l)**2``, i.e.
  28×28 cells; the last level is bounded by its map), so every RoI is exact:
  ~1100 cells at 400×400, 2048 at 400×2048 (extremely elongated RoIs set the
  bound), against 4·14² = 784 corner gathers of the capped form.
* capped (``max_samples=K > 0``): the adaptive rule on K static sample slots
  per axis, unused ones masked; exact whenever ``ceil(size/out) <= K``, capped
  otherwise (the form unlock_jax used before, with K = 2: a square RoI's count
  is 1..4 for the 7×7 box features, 1..2 for the 14×14 mask features).
  ``tests/test_rcnn_roi_align.py`` quantifies the gap.

A fixed ``sampling_ratio > 0`` always uses the sample slots (exact).

The exact mode's gather is ``[R, budget, C]`` (4 crops × 512 RoIs × ~1100
cells × 256 channels = 2.3 GB in float32 at 400×400, per branch and head).
``chunk > 0`` gathers and contracts ``chunk`` RoIs at a time (``lax.map``):
each RoI's value is the same sum, only XLA's kernels may round differently,
and the backward keeps the per-RoI weights, never the gathered cells (the
boxes carry no gradient), so the peak is one chunk's gather.
The 28×28 mask *targets* (one channel) use the separable form with per-RoI
weight matrices ``[out, L]`` over the whole mask: no gather, exact.

``circular=True`` (a full 360° panorama of width ``W``; wrapped boxes,
``boxes.py``): columns are periodic on every level (a level's width is
``W / stride``): x samples are neither clipped nor zeroed, and the bilinear
neighbours of a sample are taken modulo the level's width, so a box that
crosses the seam interpolates between its last and first columns. This
equals the flat RoIAlign on the map wrap-padded wide enough, with the box
shifted by the padding. Rows keep mmcv's border rules. Both forms (exact,
chunked or not, and capped) support it; the exact form's column budget grows
by the two bilinear neighbours a full-width box can add (``window_budget``).
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
                  max_samples: int, length, circular: bool = False):
  """Sample coordinates ``[R, out*K]`` along one axis with their bilinear
  ``(low, high, w_low, w_high)`` (mmcv border rules). The weights include
  the sample mask and the ``1 / count`` of the bin average, so summing over
  the K samples of a bin gives mmcv's value.

  ``sampling_ratio > 0``: K = count = sampling_ratio. ``0``: mmcv's adaptive
  ``count = ceil(size / out)`` per RoI, evaluated on K = ``max_samples``
  (> 0) static slots (exact whenever count <= max_samples, else capped).
  ``circular``: the axis is periodic (indices modulo ``length``, module
  docstring).
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
  if circular:
    low = jnp.floor(v)
    frac = v - low
    low = jnp.mod(low, length)
    high = jnp.mod(low + 1.0, length)
    return (low.astype(jnp.int32), high.astype(jnp.int32),
            (1.0 - frac) * scale, frac * scale, k_slots)
  inside = (v >= -1.0) & (v <= length)
  v = jnp.clip(v, 0.0, length - 1.0)
  low = jnp.floor(v)
  high = jnp.minimum(low + 1.0, length - 1.0)
  frac = v - low
  w_low = jnp.where(inside, 1.0 - frac, 0.0) * scale
  w_high = jnp.where(inside, frac, 0.0) * scale
  return low.astype(jnp.int32), high.astype(jnp.int32), w_low, w_high, k_slots


def _level_bound(h: int, w: int, area: float | None) -> int:
  """Most cells (rows × cols of the footprint) a RoI of cell area < ``area``
  can touch on an ``h × w`` map; ``area=None``: no area limit.

  A RoI ``ceil(size) = a`` cells long touches at most ``a + 2`` rows (the
  bilinear neighbours at both ends); if ``a >= 2`` its other side is below
  ``area / (a - 1)`` cells."""
  if area is None:
    return h * w
  best = 0
  for long, short in ((h, w), (w, h)):
    for a in range(1, long + 3):
      other = short if a == 1 else min(math.ceil(area / (a - 1)) + 2, short)
      best = max(best, min(a + 2, long) * other)
  return min(best, h * w)


def window_budget(sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                  finest_scale: float = FINEST_SCALE,
                  circular: bool = False) -> int:
  """Static footprint budget (cells) of the exact mode: enough for any RoI
  mapped by ``map_roi_levels`` to each of the levels ``sizes``.

  ``circular``: a wrapped box is at most a level's width ``w`` long but its
  bilinear neighbours reach ``w + 2`` (unwrapped) columns."""
  n = len(sizes)
  best = 0
  for lvl, ((h, w), st) in enumerate(zip(sizes, strides)):
    if lvl < n - 1:
      # sqrt(area) < finest * 2**(lvl+1) px, with a margin for float32.
      area = (finest_scale * 2 ** (lvl + 1) / st) ** 2 * (1 + 1e-4)
    else:
      area = None
    best = max(best, _level_bound(int(h), int(w) + 2 * circular, area))
  return best


def _footprint_weights(start, size, out: int, length, cap: int,
                       circular: bool = False):
  """Exact mmcv weights (``sampling_ratio=0``) along one axis on the cells
  ``first .. first + cap - 1`` that a RoI's samples touch.

  Returns ``(first [R] int32, count [R] int32, w [R, out, cap])``; ``w`` is
  the bin average's weight of each cell (0 beyond ``count``). A cell takes
  ``hat(clip(v, 0, L-1) - cell)`` from each sample ``v`` in ``[-1, L]``; the
  spacing of the ``n = ceil(bin)`` samples of a bin is > 0.5 cell (or n = 1),
  so at most 4 of them reach a cell: 6 candidates from the first one in
  range cover them.

  ``circular``: no clipping, and the cells are unwrapped column numbers
  (``first`` may be -1, ``first + count`` may pass ``length``); the caller
  takes them modulo ``length``.
  """
  length = jnp.asarray(length, jnp.float32)
  bin_size = size / out
  n = jnp.ceil(bin_size)
  nn = jnp.maximum(n, 1.0)
  step = jnp.maximum(bin_size / nn, 1e-6)
  if circular:
    first = jnp.floor(start)
    last = jnp.floor(start + size) + 1.0
  else:
    first = jnp.clip(jnp.floor(start), 0.0, length - 1.0)
    last = jnp.clip(jnp.floor(start + size) + 1.0, 0.0, length - 1.0)
  count = last - first + 1.0
  cell = first[:, None, None] + jnp.arange(cap, dtype=jnp.float32)
  a = (start[:, None] + jnp.arange(out, dtype=jnp.float32) * bin_size[:, None]
       )[:, :, None]  # [R, out, 1] bin starts
  st = step[:, None, None]
  k0 = jnp.maximum(jnp.ceil((cell - 1.0 - a) / st - 0.5) - 1.0, 0.0)
  hi = (length - 1.0)[:, None, None]
  w = 0.0
  for j in range(6):
    k = k0 + j
    v = a + (k + 0.5) * st
    if circular:
      ok = k < n[:, None, None]
      tri = jnp.maximum(0.0, 1.0 - jnp.abs(v - cell))
    else:
      ok = (k < n[:, None, None]) & (v >= -1.0) & (v <= hi + 1.0)
      tri = jnp.maximum(0.0, 1.0 - jnp.abs(jnp.clip(v, 0.0, hi) - cell))
    w = w + jnp.where(ok, tri, 0.0)
  inside = (jnp.arange(cap)[None, :] < count[:, None]) & (size > 0)[:, None]
  w = jnp.where(inside[:, None, :], w / nn[:, None, None], 0.0)
  return first.astype(jnp.int32), count.astype(jnp.int32), w


def _exact_roi_align(table, off, hl, wl, y0, ysize, x0, xsize, out: int,
                     budget: int, cap_y: int, cap_x: int, dtype,
                     circular: bool = False):
  """The exact mode's gather of each RoI's footprint and contraction."""
  fy, ny, wy = _footprint_weights(y0, ysize, out, hl, cap_y)
  fx, nx, wx = _footprint_weights(x0, xsize, out, wl, cap_x, circular)
  s = jnp.arange(budget, dtype=jnp.int32)[None, :]
  nxc = jnp.maximum(nx, 1)[:, None]
  i = s // nxc  # row-major footprint, row length = this RoI's column count
  j = s % nxc
  ok = i < ny[:, None]
  i = jnp.minimum(i, jnp.minimum(ny, cap_y)[:, None] - 1)
  j = jnp.minimum(j, cap_x - 1)
  wl_i = wl.astype(jnp.int32)[:, None]
  col = fx[:, None] + j
  if circular:
    col = jnp.mod(col, wl_i)
  idx = off[:, None] + (fy[:, None] + i) * wl_i + col
  wy_s = jnp.take_along_axis(wy, i[:, None, :], axis=2)  # [R, out, S]
  wx_s = jnp.take_along_axis(wx, j[:, None, :], axis=2)
  m = wy_s[:, :, None, :] * wx_s[:, None, :, :] * ok[:, None, None, :]
  r = m.shape[0]
  m = m.reshape(r, out * out, budget).astype(dtype)
  prec = (jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32
          else None)
  res = jnp.einsum("rps,rsc->rpc", m, table[idx], precision=prec,
                   preferred_element_type=jnp.float32)
  return res.reshape(r, out, out, -1).astype(dtype)


def _chunked(fn, args, chunk: int):
  """``fn(*args)`` on ``chunk`` rows of ``args`` at a time (``lax.map``).

  The last chunk is padded by repeating the last row (a real RoI: finite
  weights, so its zero cotangent adds exactly nothing to the features'
  gradient) and the padding is dropped.
  """
  r = args[0].shape[0]
  pad = -r % chunk
  args = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), mode="edge")
          .reshape(-1, chunk, *a.shape[1:]) for a in args]
  res = jax.lax.map(lambda a: fn(*a), args)
  return res.reshape(-1, *res.shape[2:])[:r]


def multilevel_roi_align(feats: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                         output_size: int,
                         strides: Sequence[int] = ROI_STRIDES,
                         sampling_ratio: int = 0,
                         finest_scale: float = FINEST_SCALE,
                         max_samples: int = 0, chunk: int = 0,
                         circular: bool = False) -> jnp.ndarray:
  """RoIAlign of ``boxes [R, 4]`` on one image's levels ``[H_l, W_l, C]``.

  All levels are flattened into one ``[sum H_l W_l, C]`` table so each cell
  is one row gather, whatever the RoI's level. ``sampling_ratio=0`` is mmcv's
  adaptive count: exact with ``max_samples=0``, else capped at
  ``max_samples`` per axis (module docstring); the exact mode ``chunk``
  RoIs at a time when ``0 < chunk < R`` (module docstring). ``circular``:
  periodic columns on every level, for wrapped boxes of a full panorama
  (module docstring). Returns ``[R, out, out, C]`` in the features' dtype.
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
  ys, ysize = boxes[:, 1] * scale - 0.5, (boxes[:, 3] - boxes[:, 1]) * scale
  xs, xsize = boxes[:, 0] * scale - 0.5, (boxes[:, 2] - boxes[:, 0]) * scale
  if sampling_ratio == 0 and max_samples == 0:
    budget = window_budget(sizes, strides[:num_levels], finest_scale,
                           circular)
    cap_y = min(max(h for h, _ in sizes), budget)
    cap_x = min(max(w for _, w in sizes) + 2 * circular, budget)
    fn = lambda *a: _exact_roi_align(table, *a, output_size, budget, cap_y,
                                     cap_x, dtype, circular)
    args = (off, hl, wl, ys, ysize, xs, xsize)
    if 0 < chunk < boxes.shape[0]:
      return _chunked(fn, args, chunk)
    return fn(*args)
  y0, y1, wy0, wy1, ks = _axis_samples(ys, ysize, output_size, sampling_ratio,
                                       max_samples, hl)
  x0, x1, wx0, wx1, _ = _axis_samples(xs, xsize, output_size, sampling_ratio,
                                      max_samples, wl, circular)
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
