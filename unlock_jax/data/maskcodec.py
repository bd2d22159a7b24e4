"""Binary masks as box crops of packed bits: the prediction store, the packed
pseudo-labels and the pool index all use this one encoding.

A stack of N full-size masks ``[N,H,W]`` becomes
  ``extent`` int32 [N,4]: the tight extent ``(y0, y1, x0, x1)`` (half-open) of
      each mask's true pixels; all zeros for an empty mask;
  ``bits`` uint8 [M]: the concatenated ``np.packbits`` of each mask's crop;
  ``offsets`` int64 [N+1]: where mask ``j``'s bits start and end in ``bits``.
A 400x2048 car mask of 60x120 px costs 900 bytes instead of 819 kB.
"""
from __future__ import annotations

import numpy as np


def tight_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
  """``(y0, y1, x0, x1)`` half-open extent of ``mask``'s true pixels; zeros if empty."""
  rows = np.flatnonzero(mask.any(axis=1))
  if rows.size == 0:
    return (0, 0, 0, 0)
  cols = np.flatnonzero(mask.any(axis=0))
  return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def pack(masks: np.ndarray) -> dict[str, np.ndarray]:
  """``[N,H,W]`` bool-like masks → ``{"extent", "bits", "offsets"}``."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"masks must be [N,H,W], got shape {masks.shape}")
  extent = np.zeros((masks.shape[0], 4), np.int32)
  chunks, offsets = [], [0]
  for j, m in enumerate(masks):
    m = m.astype(bool)
    y0, y1, x0, x1 = tight_extent(m)
    extent[j] = (y0, y1, x0, x1)
    b = np.packbits(m[y0:y1, x0:x1], axis=None)
    chunks.append(b)
    offsets.append(offsets[-1] + b.size)
  bits = np.concatenate(chunks) if chunks else np.zeros((0,), np.uint8)
  return {"extent": extent, "bits": bits.astype(np.uint8),
          "offsets": np.asarray(offsets, np.int64)}


def unpack_one(extent, bits: np.ndarray, offsets: np.ndarray, j: int) -> np.ndarray:
  """Crop ``[y1-y0, x1-x0]`` bool of mask ``j`` (no full-size array)."""
  y0, y1, x0, x1 = (int(v) for v in extent[j])
  n = (y1 - y0) * (x1 - x0)
  seg = bits[int(offsets[j]):int(offsets[j + 1])]
  return np.unpackbits(seg, count=n).astype(bool).reshape(y1 - y0, x1 - x0)


def unpack(packed: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
  """Inverse of :func:`pack`: ``[N,H,W]`` bool."""
  extent, bits, offsets = packed["extent"], packed["bits"], packed["offsets"]
  n = extent.shape[0]
  if offsets.shape != (n + 1,):
    raise ValueError(f"offsets has shape {offsets.shape}, expected ({n + 1},)")
  out = np.zeros((n, height, width), bool)
  for j in range(n):
    y0, y1, x0, x1 = (int(v) for v in extent[j])
    if y1 > height or x1 > width:
      raise ValueError(f"mask {j} extent {tuple(extent[j])} exceeds {height}x{width}")
    out[j, y0:y1, x0:x1] = unpack_one(extent, bits, offsets, j)
  return out
