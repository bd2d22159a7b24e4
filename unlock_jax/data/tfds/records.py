"""The record format of the TFDS builds: a file reader's example <-> one record, exactly.

A record holds the bytes of the image file (decoded here as ``common.read_rgb``
decodes the file) and the reader's ground truth already computed, so reading
it costs no polygon decoding or segment matching: the semantic, panoptic and
instance-id maps (zlib), the segment list, and the aligned modal/amodal
instance lists with every mask stored as its bounding-box crop (zlib), so
decoding costs about the crops' area rather than N full-size masks. An
unlabelled example (BlendPASS train) stores empty ground truth.
"""
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from unlock_jax.data.layouts import common

SEGMENT_FIELDS = ("id", "category_id", "iscrowd", "area", "amodal_id")
INSTANCE_FIELDS = {"modal": ("category_id", "seg_id"),
                   "amodal": ("category_id", "seg_id", "amodal_id")}
MAPS = {"semantic": np.uint8, "panoptic": np.int32, "instance_ids": np.int32}
# Everything but name and image: what an image-only read leaves undecoded.
GT_KEYS = (tuple(MAPS) + tuple(f"segment_{f}" for f in SEGMENT_FIELDS)
           + tuple(f"{b}_{f}" for b, fs in INSTANCE_FIELDS.items()
                   for f in ("boxes", "crops") + fs))


def features() -> tfds.features.FeaturesDict:
  """Flat arrays; ``{branch}_boxes`` [N,4] = (y0, y1, x0, x1) of each crop, end exclusive."""
  def vec():
    return tfds.features.Tensor(shape=(None,), dtype=np.int64)

  f = {"name": tfds.features.Tensor(shape=(), dtype=np.object_),
       "image": tfds.features.Tensor(shape=(), dtype=np.object_)}
  f.update({k: tfds.features.Tensor(shape=(None, None), dtype=dt, encoding="zlib")
            for k, dt in MAPS.items()})
  f.update({f"segment_{k}": vec() for k in SEGMENT_FIELDS})
  for b, fields in INSTANCE_FIELDS.items():
    f[f"{b}_boxes"] = tfds.features.Tensor(shape=(None, 4), dtype=np.int64)
    f[f"{b}_crops"] = tfds.features.Tensor(shape=(None,), dtype=np.uint8, encoding="zlib")
    f.update({f"{b}_{k}": vec() for k in fields})
  return tfds.features.FeaturesDict(f)


def decode_rgb(data: bytes, what: str, size, resize: bool = False) -> np.ndarray:
  """Image file bytes -> uint8 [H,W,3] RGB, as ``common.read_rgb`` decodes a file.

  ``resize``: brought to ``size`` as the AmodalSynthDrive reader does
  (``common.fit_rgb``) instead of required to have it.
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.mode != "RGB":
        im = im.convert("RGB")
      arr = np.array(im)
  except (OSError, ValueError, SyntaxError) as e:
    raise common.DataError(f"cannot decode {what}: {e}") from e
  if resize:
    return common.fit_rgb(arr, size)
  common.check_size(arr, what, "image", size)
  return arr


def crop_masks(masks) -> tuple[np.ndarray, np.ndarray]:
  """[H,W] masks -> boxes [N,4] (y0, y1, x0, x1) of their nonzero pixels, flat crops."""
  boxes, parts = np.zeros((len(masks), 4), np.int64), []
  for j, m in enumerate(masks):
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size:
      boxes[j] = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
      parts.append(m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].ravel())
  return boxes, (np.concatenate(parts) if parts else np.zeros((0,), np.uint8))


def paste_masks(boxes: np.ndarray, crops: np.ndarray, height: int, width: int) -> list:
  """Inverse of :func:`crop_masks`: uint8 [H,W] masks, zero outside their crop."""
  out, start = [], 0
  for y0, y1, x0, x1 in boxes.tolist():
    m = np.zeros((height, width), np.uint8)
    n = (y1 - y0) * (x1 - x0)
    m[y0:y1, x0:x1] = crops[start:start + n].reshape(y1 - y0, x1 - x0)
    start += n
    out.append(m)
  if start != crops.size:
    raise common.DataError(f"mask crops hold {crops.size} pixels, their boxes {start}")
  return out


def encode(example: dict, image_bytes: bytes) -> dict:
  """A reader's ``load(i)`` dict (+ the bytes of its image file) -> a record."""
  rec = {"name": example["name"].encode(), "image": image_bytes}
  if "semantic" not in example:  # image only
    rec.update({k: np.zeros((0, 0), dt) for k, dt in MAPS.items()})
    rec.update({k: np.zeros((0, 4) if k.endswith("_boxes") else (0,),
                            np.uint8 if k.endswith("_crops") else np.int64)
                for k in GT_KEYS if k not in MAPS})
    return rec
  for k, dt in MAPS.items():
    if example[k].dtype != dt:
      raise common.DataError(f"{example['name']}: {k} is {example[k].dtype}, records store "
                             f"{np.dtype(dt)}")
    rec[k] = example[k]
  for f in SEGMENT_FIELDS:
    rec[f"segment_{f}"] = np.array([s[f] for s in example["segments"]], np.int64)
  for b, fields in INSTANCE_FIELDS.items():
    masks = [it["mask"] for it in example[b]]
    if any(m.dtype != np.uint8 for m in masks):
      raise common.DataError(f"{example['name']}: {b} masks must be uint8")
    rec[f"{b}_boxes"], rec[f"{b}_crops"] = crop_masks(masks)
    for f in fields:
      rec[f"{b}_{f}"] = np.array([it[f] for it in example[b]], np.int64)
  return rec


def decode(rec: dict, *, size, categories, with_gt: bool, what: str,
           resize: bool = False) -> dict:
  """A record (from ``tfds.data_source``) -> the reader's ``load(i)`` dict.

  ``with_gt=False`` gives name and image only (the ground truth may be left
  undecoded); ``resize`` as in :func:`decode_rgb`. Maps are copied: the
  records' buffers are read-only.
  """
  out = dict(name=rec["name"].decode(), image=decode_rgb(rec["image"], what, size, resize))
  if not with_gt:
    return out
  h, w = rec["semantic"].shape
  ids = {k: rec[f"segment_{k}"].tolist() for k in SEGMENT_FIELDS}
  segments = [{k: ids[k][j] for k in SEGMENT_FIELDS} for j in range(len(ids["id"]))]
  inst = {}
  for b, fields in INSTANCE_FIELDS.items():
    masks = paste_masks(rec[f"{b}_boxes"], rec[f"{b}_crops"], h, w)
    vals = {k: rec[f"{b}_{k}"].tolist() for k in fields}
    inst[b] = [dict(mask=m, **{k: vals[k][j] for k in fields}) for j, m in enumerate(masks)]
  return out | dict(semantic=rec["semantic"].copy(), panoptic=rec["panoptic"].copy(),
                    segments=segments, categories=categories,
                    instance_ids=rec["instance_ids"].copy(), modal=inst["modal"],
                    amodal=inst["amodal"])
