"""Host-side numpy transforms: crop (cat_max_ratio rule, optionally across a
360° panorama's seam), flip, normalise.

Every function takes and returns one example dict with the keys of
``unlock_jax.data.keys`` (no batch dimension). Randomness comes from the
``np.random.Generator`` grain hands to each element, so a pipeline is
reproducible from its seed and its iterator state.
"""
import numpy as np

from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import seam_instances
from unlock_jax.data.layouts.common import boxes_from_masks

# ImageNet statistics in RGB order (mmseg Normalize with to_rgb=True).
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 RGB [H,W,3] → float32, ImageNet mean/std."""
  return (image.astype(np.float32) - MEAN) / STD


def _crop_ok(semantic: np.ndarray, cat_max_ratio: float) -> bool:
  """mmseg RandomCrop's test: ≥2 valid classes and none above the ratio."""
  counts = np.bincount(semantic[semantic != labels.IGNORE].ravel(),
                       minlength=labels.NUM_CLASSES)
  counts = counts[counts > 0]
  return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def window(array: np.ndarray, box: tuple[int, int, int, int],
           row_axis: int = 0) -> np.ndarray:
  """``array[y1:y2, x1:x2]`` on axes ``(row_axis, row_axis + 1)``, columns
  taken modulo the width: a box with ``x2`` past the last column (a crop of
  a 360° panorama that straddles its seam, :func:`random_crop_box` with
  ``wrap=True``) continues at column 0. A box inside the image is a plain
  slice (a view)."""
  y1, y2, x1, x2 = box
  w = array.shape[row_axis + 1]
  if not (0 <= x1 < w and x1 < x2 <= x1 + w):
    raise ValueError(f"crop columns [{x1}, {x2}) do not fit an image {w} wide")
  rows = array[(slice(None),) * row_axis + (slice(y1, y2),)]
  return seam_instances.take_columns(rows, x1, x2, axis=row_axis + 1)


def random_crop_box(semantic: np.ndarray, crop_size: tuple[int, int],
                    rng: np.random.Generator, cat_max_ratio: float = 1.0,
                    max_tries: int = 10, wrap: bool = False) -> tuple[int, int, int, int]:
  """A crop ``(y1, y2, x1, x2)`` as mmseg's RandomCrop draws it.

  With ``cat_max_ratio < 1`` the crop is checked against :func:`_crop_ok` up
  to ``max_tries`` times, each failure drawing a new one, and the draw after
  the last failure is used unchecked: ``max_tries + 1`` draws at most, as
  mmseg's loop (a first draw, then ten check-and-redraw rounds). A crop as
  tall as the image (panoramas, KITTI-360 rescaled to 376 rows) only moves
  horizontally.

  ``wrap=True`` (full 360° panoramas only) draws the left column ``x1``
  uniformly from all ``W`` columns instead of ``[0, W - w]``; ``x2 = x1 + w``
  may then pass ``W`` and the crop continues at column 0 (read it with
  :func:`window`). Column ``c`` is covered iff ``x1`` is one of the ``w``
  distinct values ``c, c-1, ..., c-w+1`` (mod ``W``), so every column,
  the seam's included, is covered with probability ``w / W``; the flat draw
  covers the interior columns with ``w / (W-w+1)`` but the first and last
  with ``1 / (W-w+1)``. A fraction ``(w-1) / W`` of the wrapped crops
  straddles the seam. The class-ratio check and its redraws see the wrapped
  crop; the random draws are the same in number and kind as the flat ones.
  """
  h, w = semantic.shape
  ch, cw = crop_size
  if ch > h or cw > w:
    raise ValueError(f"crop {ch}x{cw} is larger than the image {h}x{w}")

  def draw():
    y1 = int(rng.integers(0, h - ch + 1))
    x1 = int(rng.integers(0, w if wrap else w - cw + 1))
    return y1, y1 + ch, x1, x1 + cw

  box = draw()
  if cat_max_ratio < 1.0:
    for _ in range(max_tries):
      if _crop_ok(window(semantic, box), cat_max_ratio):
        break
      box = draw()
  return box


def crop(example: dict, box: tuple[int, int, int, int],
         box_rule: str = "positive") -> dict:
  """Crops image, semantic and instance masks; refreshes boxes and validity.

  Boxes are recomputed from the cropped masks (inclusive x2/y2 as the
  reference's ``get_bbox_coord``), with ``box_rule`` as in
  :func:`~unlock_jax.data.layouts.common.boxes_from_masks`.
  """
  y1, y2, x1, x2 = box
  out = dict(example)
  out[keys.IMAGE] = example[keys.IMAGE][y1:y2, x1:x2]
  out[keys.SEMANTIC] = example[keys.SEMANTIC][y1:y2, x1:x2]
  for prefix in ("modal", "amodal"):
    mk = f"{prefix}_masks"
    if mk not in example:
      continue
    masks = example[mk][:, y1:y2, x1:x2]
    out[mk] = masks
    out[f"{prefix}_valid"] = example[f"{prefix}_valid"] & (masks == 1).any((1, 2))
    out[f"{prefix}_boxes"] = boxes_from_masks(masks, box_rule)
  return out


def hflip(example: dict, box_rule: str = "positive") -> dict:
  """Horizontal flip of image, semantic and masks; boxes recomputed from masks."""
  out = dict(example)
  out[keys.IMAGE] = example[keys.IMAGE][:, ::-1]
  out[keys.SEMANTIC] = example[keys.SEMANTIC][:, ::-1]
  for prefix in ("modal", "amodal"):
    mk = f"{prefix}_masks"
    if mk in example:
      out[mk] = example[mk][:, :, ::-1]
      out[f"{prefix}_boxes"] = boxes_from_masks(out[mk], box_rule)
  return out


def finalize(example: dict) -> dict:
  """Normalises the image and fixes dtypes for batching (contiguous copies)."""
  out = {}
  for k, v in example.items():
    if k == keys.IMAGE:
      out[k] = normalize(np.ascontiguousarray(v))
    elif k == keys.SEMANTIC:
      out[k] = np.ascontiguousarray(v, np.int32)
    else:
      out[k] = np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v
  return out
