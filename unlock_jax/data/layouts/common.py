"""Shared pieces of the data-set readers: errors, checked file reading, GT building, padding.

Ground truth follows the reference (``GenAPSKITTIAmodalLabelsForMaskFormer``,
docs/method.md §8.1): semantic starts at 255 and every non-crowd
segment writes its ``category_id``; an instance enters the modal/amodal lists
if it is a non-crowd thing with a non-empty modal mask (``panoptic == id``), a
non-empty amodal mask (its ``amodal_id`` polygons) and both tight boxes at
least 2 px wide and high.

Box convention (reference ``get_bbox_coord``): ``[x1, y1, x2, y2]`` with x2/y2
the *inclusive* last column/row index, so a 1-px-wide mask has x1 == x2.
"""
import json
import logging
import os

from etils import epath
import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data import keys
from unlock_jax.data import labels

_log = logging.getLogger(__name__)
_warned_truncation = False


class DataError(ValueError):
  """A data set file is missing, unreadable, malformed or of the wrong size."""


def open_image(path: str, what: str) -> Image.Image:
  """A whole decoded image (a truncated file fails here); DataError naming the file."""
  try:
    with epath.Path(path).open("rb") as f:
      im = Image.open(f)
      im.load()  # decoded while the file is open
      return im
  except FileNotFoundError as e:
    raise DataError(f"missing {what} {path}") from e
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"cannot read {what} {path}: {e}") from e


def read_json(path: str, what: str):
  """Loads a JSON file, raising DataError naming ``what`` and the path on any problem."""
  try:
    return json.loads(epath.Path(path).read_text())
  except FileNotFoundError as e:
    raise DataError(f"missing {what} {path}") from e
  except (OSError, ValueError) as e:  # UnicodeDecodeError included
    raise DataError(f"cannot parse {what} {path}: {e}") from e


def require_keys(obj, names, what: str, path: str):
  """Checks that a JSON object has the given keys."""
  if not isinstance(obj, dict):
    raise DataError(f"{what} in {path} is a {type(obj).__name__}, expected an object")
  for k in names:
    if k not in obj:
      raise DataError(f"{what} in {path} has no '{k}' field")


def check_size(array: np.ndarray, path: str, what: str, size) -> tuple:
  """Raises DataError unless ``array`` is ``size`` = (height, width); returns its (h, w)."""
  h, w = array.shape[:2]
  if size is not None and (h, w) != tuple(size):
    raise DataError(f"{what} {path} is {w}x{h}, expected {size[1]}x{size[0]}")
  return h, w


def read_png(path: str, what: str, size, mode: str | None = None) -> np.ndarray:
  """Reads an image file into numpy (optionally converting mode), checking its size."""
  im = open_image(path, what)
  if mode is not None and im.mode != mode:
    im = im.convert(mode)
  arr = np.array(im)
  check_size(arr, path, what, size)
  return arr


def fit_rgb(image: np.ndarray, size) -> np.ndarray:
  """An RGB image at ``size`` (H, W): as it is, or resized bilinearly (PIL)."""
  if image.shape[:2] == tuple(size):
    return image
  h, w = size
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.uint8)


def read_png_size(path: str, what: str) -> tuple:
  """(height, width) of an image file, from its header only."""
  try:
    with epath.Path(path).open("rb") as f, Image.open(f) as im:
      w, h = im.size
  except FileNotFoundError as e:
    raise DataError(f"missing {what} {path}") from e
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"cannot read {what} {path}: {e}") from e
  return h, w


def read_rgb(path: str, what: str, size) -> np.ndarray:
  """uint8 [H,W,3] RGB image."""
  return read_png(path, what, size, mode="RGB")


def read_panoptic(path: str, what: str, size) -> np.ndarray:
  """RGB id-encoded panoptic PNG → int32 ids (``R + 256 G + 256² B``)."""
  arr = read_png(path, what, size)
  if arr.ndim != 3 or arr.shape[2] != 3:
    raise DataError(f"{what} {path} has shape {arr.shape}, expected an RGB image (H,W,3)")
  return labels.rgb2id(arr)


def amodal_index(amodal_json: dict, path: str) -> dict:
  """Reference ``make_json_dict``: image file_name → {annotation id: annotation}."""
  require_keys(amodal_json, ("images", "annotations"), "amodal JSON", path)
  names = {}
  for img in amodal_json["images"]:
    require_keys(img, ("id", "file_name"), "image entry", path)
    names[img["id"]] = img["file_name"]
  out = {n: {} for n in names.values()}
  for a in amodal_json["annotations"]:
    require_keys(a, ("id", "image_id", "segmentation"), "annotation", path)
    if a["image_id"] not in names:
      raise DataError(f"annotation {a['id']} in {path} refers to image_id {a['image_id']}, "
                      "which is not in its 'images'")
    out[names[a["image_id"]]][a["id"]] = a
  return out


def decode_polygons(segmentation, height: int, width: int) -> np.ndarray:
  """Polygons → uint8 0/1 mask, like the reference (pycocotools frPyObjects, merge, decode)."""
  import pycocotools.mask as mask_utils  # pylint: disable=g-import-not-at-top
  if not segmentation:
    return np.zeros((height, width), np.uint8)
  rles = mask_utils.frPyObjects(segmentation, height, width)
  rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
  return mask_utils.decode(rle).astype(np.uint8)


def _valid_box(mask: np.ndarray) -> bool:
  """Reference ``isValidBox(get_bbox_coord(mask))``: x1 < x2 and y1 < y2."""
  cols = np.flatnonzero(mask.any(0))
  rows = np.flatnonzero(mask.any(1))
  return cols.size > 0 and cols[-1] > cols[0] and rows[-1] > rows[0]


def check_segments(segments, path: str):
  """Validates ``segments_info`` entries (fields and category ids)."""
  for s in segments:
    require_keys(s, ("id", "category_id", "iscrowd"), "segment", path)
    if not 0 <= int(s["category_id"]) < labels.NUM_CLASSES:
      raise DataError(f"segment {s['id']} in {path} has category_id {s['category_id']}, "
                      f"expected 0..{labels.NUM_CLASSES - 1}")


def build_gt(panoptic: np.ndarray, segments: list, amodal_anns: dict, json_path: str,
             name: str) -> dict:
  """Semantic map, segment list and the filtered, aligned modal/amodal instance lists."""
  h, w = panoptic.shape
  semantic = np.full((h, w), labels.IGNORE, np.uint8)
  segs, modal, amodal = [], [], []
  for s in segments:
    sid, cat, crowd = int(s["id"]), int(s["category_id"]), bool(s["iscrowd"])
    aid = s.get("amodal_id", 0)
    segs.append(dict(id=sid, category_id=cat, iscrowd=int(crowd), area=int(s.get("area", 0)),
                     amodal_id=aid))
    m = panoptic == sid
    if not crowd:
      semantic[m] = cat
    if crowd or not labels.is_thing(cat) or not m.any():
      continue
    if aid not in amodal_anns:
      raise DataError(f"segment {sid} of {name} in {json_path} has amodal_id {aid}, which is "
                      "not an annotation of this image in the amodal JSON")
    amask = decode_polygons(amodal_anns[aid]["segmentation"], h, w)
    if not amask.any() or not _valid_box(m) or not _valid_box(amask):
      continue
    modal.append(dict(mask=m.astype(np.uint8), category_id=cat, seg_id=sid))
    amodal.append(dict(mask=amask, category_id=cat, seg_id=sid, amodal_id=aid))
  return dict(semantic=semantic, segments=segs, modal=modal, amodal=amodal)


def boxes_from_masks(masks: np.ndarray, rule: str = "positive") -> np.ndarray:
  """Tight boxes [N,4] float32 (x1, y1, x2, y2 inclusive, as ``get_bbox_coord``) of masks [N,H,W].

  ``rule="positive"`` uses pixels == 1 (ignore value 255 excluded);
  ``rule="nonzero"`` uses pixels != 0, reproducing the reference's inflated
  boxes when masks carry 255 (docs/reference_differences.md item 1). Empty masks → zeros.
  """
  masks = np.asarray(masks)
  if rule == "positive":
    fg = masks == 1
  elif rule == "nonzero":
    fg = masks != 0
  else:
    raise ValueError(f"rule must be 'positive' or 'nonzero', got {rule!r}")
  n, h, w = fg.shape
  cols, rows = fg.any(1), fg.any(2)
  nonempty = cols.any(1)
  x1 = cols.argmax(1)
  x2 = w - 1 - cols[:, ::-1].argmax(1)
  y1 = rows.argmax(1)
  y2 = h - 1 - rows[:, ::-1].argmax(1)
  boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
  boxes[~nonempty] = 0
  return boxes.reshape(n, 4)


def to_padded(example: dict, max_instances: int) -> dict:
  """Static-shape instance arrays (keys from ``keys.py``, no batch dim) plus ``semantic`` int32.

  Rows j < count hold instance j of ``example["modal"]`` / ``example["amodal"]``
  (aligned); the rest are zeros with ``*_valid == False``. With more than
  ``max_instances`` instances the largest amodal ones are kept (in their
  original order) and a warning is logged once per process.
  """
  global _warned_truncation
  h, w = example["semantic"].shape
  modal, amodal = example["modal"], example["amodal"]
  if len(modal) != len(amodal):
    raise DataError(f"{example.get('name')}: {len(modal)} modal vs {len(amodal)} amodal instances")
  keep = list(range(len(amodal)))
  if len(keep) > max_instances:
    if not _warned_truncation:
      _log.warning("%s has %d instances, more than max_instances=%d; keeping the largest "
                   "(amodal area). Further truncations are not reported.",
                   example.get("name"), len(keep), max_instances)
      _warned_truncation = True
    areas = np.array([int(a["mask"].sum()) for a in amodal])
    keep = sorted(np.argsort(-areas, kind="stable")[:max_instances].tolist())
  n = max_instances
  out = {keys.SEMANTIC: example["semantic"].astype(np.int32)}
  for names, items in (((keys.MODAL_MASKS, keys.MODAL_CLASSES, keys.MODAL_BOXES,
                          keys.MODAL_VALID), modal),
                        ((keys.AMODAL_MASKS, keys.AMODAL_CLASSES, keys.AMODAL_BOXES,
                          keys.AMODAL_VALID), amodal)):
    masks = np.zeros((n, h, w), np.uint8)
    classes = np.zeros((n,), np.int32)
    valid = np.zeros((n,), bool)
    for row, j in enumerate(keep):
      masks[row] = items[j]["mask"]
      classes[row] = items[j]["category_id"] - labels.FIRST_THING
      valid[row] = True
    out[names[0]] = masks
    out[names[1]] = classes
    out[names[2]] = boxes_from_masks(masks, "positive")
    out[names[3]] = valid
  return out
