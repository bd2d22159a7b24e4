"""Cropped binary masks and dense id compaction: the fast primitives of the metrics.

Instance masks are small compared with a 2048x400 panorama, so every metric works on
masks cropped to their tight bounding box; per-pixel work is then proportional to the
object size, not to the image size.
"""
import dataclasses

import numpy as np

# Ids below this bound are compacted with a lookup table instead of a sort.
_DENSE_ID_LIMIT = 1 << 22


@dataclasses.dataclass(frozen=True)
class Crop:
  """A binary mask stored as its tight bounding box ``[y0:y1, x0:x1]`` and content."""
  y0: int
  y1: int
  x0: int
  x1: int
  mask: np.ndarray  # bool [y1-y0, x1-x0]
  area: int

  @property
  def window(self):
    return (slice(self.y0, self.y1), slice(self.x0, self.x1))


def row_occupancy(masks: np.ndarray) -> np.ndarray:
  """[..., H] bool: which rows of each HxW mask contain a pixel (one pass over memory)."""
  masks = np.asarray(masks)
  if masks.dtype != bool:
    masks = masks != 0
  if masks.flags.c_contiguous and masks.shape[-1] % 8 == 0:
    # Scan 8 pixels per machine word: this full-frame pass dominates for small objects.
    words = masks.view(np.uint64).reshape(masks.shape[:-1] + (-1,))
    return np.bitwise_or.reduce(words, axis=-1) != 0
  return masks.any(axis=-1)


def crop_mask(mask: np.ndarray, rows: np.ndarray = None) -> Crop:
  """Tight crop of one HxW mask (non-zero = inside); an empty mask gets area 0.

  ``rows`` (optional) is the mask's precomputed :func:`row_occupancy`.
  """
  mask = np.asarray(mask)
  if mask.dtype != bool:
    mask = mask != 0
  rows = np.flatnonzero(row_occupancy(mask) if rows is None else rows)
  if rows.size == 0:
    return Crop(0, 0, 0, 0, np.zeros((0, 0), bool), 0)
  cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
  y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  sub = mask[y0:y1, x0:x1]
  return Crop(int(y0), int(y1), int(x0), int(x1), sub, int(np.count_nonzero(sub)))


def crop_masks(masks) -> list:
  """Crops of a [N,H,W] stack (or list) of masks."""
  if isinstance(masks, np.ndarray) and masks.ndim == 3:
    masks = masks if masks.dtype == bool else masks != 0
    occupancy = row_occupancy(masks)
    return [crop_mask(m, r) for m, r in zip(masks, occupancy)]
  return [crop_mask(m) for m in masks]


def crop_intersection(a: Crop, b: Crop) -> int:
  """Number of pixels inside both masks."""
  y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
  x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
  if y0 >= y1 or x0 >= x1:
    return 0
  sa = a.mask[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
  sb = b.mask[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
  return int(np.count_nonzero(sa & sb))


def pairwise_intersections(rows: list, cols: list) -> np.ndarray:
  """``inter[i, j] = |rows[i] ∩ cols[j]|`` as int64, only touching overlapping boxes."""
  out = np.zeros((len(rows), len(cols)), np.int64)
  if not rows or not cols:
    return out
  box_a = np.array([[c.y0, c.y1, c.x0, c.x1] for c in rows])
  box_b = np.array([[c.y0, c.y1, c.x0, c.x1] for c in cols])
  overlap = ((np.maximum(box_a[:, None, 0], box_b[None, :, 0])
              < np.minimum(box_a[:, None, 1], box_b[None, :, 1]))
             & (np.maximum(box_a[:, None, 2], box_b[None, :, 2])
                < np.minimum(box_a[:, None, 3], box_b[None, :, 3])))
  for i, j in zip(*np.nonzero(overlap)):
    out[i, j] = crop_intersection(rows[i], cols[j])
  return out


def histogram_in_crop(index_map: np.ndarray, crop: Crop, length: int) -> np.ndarray:
  """Counts of each value of a compact ``index_map`` (0..length-1) under the mask."""
  if crop.area == 0:
    return np.zeros(length, np.int64)
  values = index_map[crop.window][crop.mask]
  return np.bincount(values, minlength=length).astype(np.int64)


def compact_ids(ids: np.ndarray):
  """Maps an id image to indices 0..K-1 of its sorted unique ids.

  Returns ``(unique_ids int64 [K], index_map like ids, counts int64 [K])``; the index
  map has the narrowest unsigned dtype that holds K (less memory traffic in gathers).
  Uses a lookup table for small non-negative ids (a bincount instead of a sort).
  """
  ids = np.asarray(ids)
  flat = ids.ravel()
  if flat.size and flat.min() >= 0 and flat.max() < _DENSE_ID_LIMIT:
    counts = np.bincount(flat)
    uniq = np.flatnonzero(counts)
    dtype = _index_dtype(uniq.size)
    lut = np.zeros(counts.size, dtype)
    lut[uniq] = np.arange(uniq.size, dtype=dtype)
    return uniq.astype(np.int64), lut[ids], counts[uniq].astype(np.int64)
  uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
  return (uniq.astype(np.int64), inverse.reshape(ids.shape).astype(_index_dtype(uniq.size)),
          counts.astype(np.int64))


def _index_dtype(k: int):
  return np.uint8 if k <= 256 else np.uint16 if k <= 65536 else np.int32


def lookup(uniq: np.ndarray, values) -> np.ndarray:
  """Index of each value in the sorted ``uniq`` array, -1 where absent."""
  values = np.asarray(values, np.int64)
  if uniq.size == 0:
    return np.full(values.shape, -1, np.int64)
  pos = np.clip(np.searchsorted(uniq, values), 0, uniq.size - 1)
  return np.where(uniq[pos] == values, pos, -1)
