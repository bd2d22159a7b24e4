"""Host-side numpy transforms: crop (cat_max_ratio rule), flip, normalise.

Every function takes and returns one example dict with the keys of
``unlock_jax.data.keys`` (no batch dimension). Randomness comes from the
``np.random.Generator`` grain hands to each element, so a pipeline is
reproducible from its seed and its iterator state.
"""
import numpy as np

from unlock_jax.data import keys
from unlock_jax.data import labels
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


def random_crop_box(semantic: np.ndarray, crop_size: tuple[int, int],
                    rng: np.random.Generator, cat_max_ratio: float = 1.0,
                    max_tries: int = 10) -> tuple[int, int, int, int]:
  """A crop ``(y1, y2, x1, x2)`` as mmseg's RandomCrop draws it.

  With ``cat_max_ratio < 1`` the crop is checked against :func:`_crop_ok` up
  to ``max_tries`` times, each failure drawing a new one, and the draw after
  the last failure is used unchecked: ``max_tries + 1`` draws at most, as
  mmseg's loop (a first draw, then ten check-and-redraw rounds). A crop as
  tall as the image (panoramas, KITTI-360 rescaled to 376 rows) only moves
  horizontally.
  """
  h, w = semantic.shape
  ch, cw = crop_size
  if ch > h or cw > w:
    raise ValueError(f"crop {ch}x{cw} is larger than the image {h}x{w}")

  def draw():
    y1 = int(rng.integers(0, h - ch + 1))
    x1 = int(rng.integers(0, w - cw + 1))
    return y1, y1 + ch, x1, x1 + cw

  box = draw()
  if cat_max_ratio < 1.0:
    for _ in range(max_tries):
      y1, y2, x1, x2 = box
      if _crop_ok(semantic[y1:y2, x1:x2], cat_max_ratio):
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
