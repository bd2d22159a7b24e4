"""ADCL amodal-instance pool (docs/method.md §6) and the compact index the online paste reads.

Per panorama, a confident amodal detection (``score >= tau_c``, tau from the
§5.1 rule with p=0.1, t=0.95) enters the pool as its mask clipped to the
visible thing region ``T`` (semantic argmax in 11..17) and marked 255 where
another confident amodal mask covers it too::

    A = sum of confident masks;  A = A * T;  A[A > 1] = 255
    M = (mask AND T) * A        # 0 / 1 / 255
    skip if M is empty, or if 2 * #(M == 255) > #(M != 0)

The reference saves each entry as a full 400x2048 PNG and the paste reads it
plus the source panorama at every draw. Here each entry is kept as its tight
box (absolute panorama coordinates: the paste is position-locked), the
0/1/255 mask crop and the RGB crop of its source panorama, so the paste never
opens a file. Class and source are stored fields, not parsed from file names
(docs/reference_differences.md item 11). A pool with fewer than 80 entries,
or none, is the paste's concern (item 13), not this module's.

Files: one ``.npz`` shard per panorama (an empty panorama gets one too, so
the stage resumes panorama by panorama) and one index concatenating them in
name order. ``write_reference`` writes the reference PNG layout for viewing
or for the reference code.
"""
from __future__ import annotations

import io
import os
import zipfile
import zlib

import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.pseudo import labels as pl_labels
from unlock_jax.data import maskcodec

SHARED = 255  # pool pixel also covered by another confident amodal mask

# Per-entry arrays common to shards and the index (``[P]``-leading, or ragged
# data + ``[P+1]`` offsets).
_ENTRY_KEYS = ("classes", "det_index", "scores", "k", "extents",
               "mask_data", "mask_offsets", "rgb_data", "rgb_offsets")


def _tau_of(tau: dict, c: int) -> float:
  # JSON round trips turn int keys into strings; accept both.
  t = tau[c] if c in tau else tau.get(str(c))
  if t is None:
    raise ValueError(f"no ADCL threshold for class {c}")
  return float(t["tau"])


def pool_entries(pred: dict, tau: dict) -> list[dict]:
  """§6 for one panorama: the pool entries of its confident amodal detections.

  ``tau`` maps thing class 11..17 to ``{"tau": float, ...}``. Entries come in
  detection order, each ``{"class_id", "det_index", "score", "mask", "k"}``
  with ``mask`` uint8 [H,W] in {0,1,255} and ``k`` the per-class counter,
  which advances only for saved entries (the reference file suffix).
  """
  semantic = np.asarray(pred["semantic"])
  thing = labels.is_thing(semantic)
  dets = pred["amodal"]
  classes = np.asarray(dets["classes"]).astype(np.int64).reshape(-1)
  scores = np.asarray(dets["scores"], np.float32).reshape(-1)
  masks = np.asarray(dets["masks"]).astype(bool).reshape((-1,) + semantic.shape)
  if not (classes.size == scores.size == masks.shape[0]):
    raise ValueError(f"{pred.get('name')}: amodal classes/scores/masks disagree in length")
  if not labels.is_thing(classes).all():
    raise ValueError(f"{pred.get('name')}: amodal classes outside 11..17: {np.unique(classes)}")
  keep = np.array([s >= _tau_of(tau, int(c)) for c, s in zip(classes, scores)], bool)

  # int32 count: the reference's uint8 sum would only wrap at 256 overlaps.
  count = masks[keep].sum(axis=0, dtype=np.int32) * thing
  shared = np.where(count > 1, SHARED, count).astype(np.uint8)

  k = {c: 0 for c in labels.THING_IDS}
  entries = []
  for j in np.flatnonzero(keep):
    c = int(classes[j])
    m = np.where(masks[j] & thing, shared, 0).astype(np.uint8)
    n = np.count_nonzero(m)
    if n == 0 or 2 * np.count_nonzero(m == SHARED) > n:
      continue
    entries.append({"class_id": c, "det_index": int(j), "score": float(scores[j]),
                    "mask": m, "k": k[c]})
    k[c] += 1
  return entries


def reference_path(root: str, name: str, class_id: int, k: int) -> str:
  """``root/amodal_instance/<city>/<stem>_cls{c}_id{k}.png`` with c = class - 11.

  ``<city>/<stem>`` is any relative name (``labels.split_name``).
  """
  city, stem = pl_labels.split_name(name)
  return os.path.join(root, "amodal_instance", city,
                      f"{stem}_cls{class_id - labels.FIRST_THING}_id{k}.png")


def write_reference(root: str, name: str, entries: list[dict]) -> list[str]:
  """Writes the entries as the reference's full-size 0/1/255 mode-L PNGs.

  Returns the paths written. Files of an earlier run with other thresholds
  are not removed (the caller owns the folder).
  """
  paths = []
  for e in entries:
    path = reference_path(root, name, e["class_id"], e["k"])
    buf = io.BytesIO()
    Image.fromarray(np.asarray(e["mask"], np.uint8), mode="L").save(buf, format="PNG")
    fileio.atomic_write_bytes(path, buf.getvalue())
    paths.append(path)
  return paths


def entry_record(name: str, image_rgb: np.ndarray, entries: list[dict]) -> dict:
  """One panorama's entries as flat arrays: boxes, mask crops, RGB crops."""
  image_rgb = np.asarray(image_rgb)
  if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
    raise ValueError(f"{name}: image must be uint8 [H,W,3], got {image_rgb.dtype} {image_rgb.shape}")
  size = image_rgb.shape[:2]
  extents, mask_chunks, rgb_chunks = [], [], []
  for e in entries:
    m = np.asarray(e["mask"], np.uint8)
    if m.shape != size:
      raise ValueError(f"{name}: entry mask {m.shape} does not match image {size}")
    y0, y1, x0, x1 = maskcodec.tight_extent(m != 0)
    if y1 == y0:
      raise ValueError(f"{name}: empty pool entry (det {e['det_index']})")
    extents.append((y0, y1, x0, x1))
    mask_chunks.append(m[y0:y1, x0:x1].ravel())
    rgb_chunks.append(image_rgb[y0:y1, x0:x1].ravel())
  return {
      "name": np.array(name),
      "image_size": np.asarray(size, np.int32),
      "classes": np.asarray([e["class_id"] for e in entries], np.int32),
      "det_index": np.asarray([e["det_index"] for e in entries], np.int32),
      "scores": np.asarray([e["score"] for e in entries], np.float32),
      "k": np.asarray([e["k"] for e in entries], np.int32),
      "extents": np.asarray(extents, np.int32).reshape(-1, 4),
      **_ragged("mask", mask_chunks), **_ragged("rgb", rgb_chunks),
  }


def _ragged(key: str, chunks: list[np.ndarray]) -> dict:
  offsets = np.cumsum([0] + [c.size for c in chunks], dtype=np.int64)
  data = np.concatenate(chunks) if chunks else np.zeros((0,), np.uint8)
  return {f"{key}_data": data.astype(np.uint8), f"{key}_offsets": offsets}


def shard_path(folder: str, name: str) -> str:
  """Where the shard of panorama ``<city>/<stem>`` (any relative name) lives:
  ``folder/<city>/<stem>.npz``."""
  city, stem = pl_labels.split_name(name)
  return os.path.join(folder, city, stem + ".npz")


def _write_npz(path: str, arrays: dict) -> None:
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  fileio.atomic_write_bytes(path, buf.getvalue())


def _corrupt(path: str, why: str) -> ValueError:
  return ValueError(f"ADCL pool file {path} is corrupt or truncated ({why}); "
                    "delete it and rerun the adcl_pool stage")


def _read_npz(path: str, keys: tuple[str, ...]) -> dict:
  try:
    z = fileio.load_npz(path)
    missing = [k for k in keys if k not in z]
    arrays = {k: z[k] for k in keys if k in z}
  except FileNotFoundError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise _corrupt(path, f"{type(e).__name__}: {e}") from e
  if missing:
    raise _corrupt(path, f"missing {missing}")
  return arrays


def _check(arrays: dict, path: str) -> None:
  """Shapes, dtypes and offsets agree; every box lies inside the panorama."""
  def need(ok, why):
    if not ok:
      raise _corrupt(path, why)
  size = arrays["image_size"]
  need(size.shape == (2,) and (size >= 0).all(), f"image_size {size}")
  h, w = (int(v) for v in size)
  cls, ext = arrays["classes"], arrays["extents"]
  p = cls.shape[0] if cls.ndim == 1 else -1
  need(p >= 0 and ext.shape == (p, 4), f"classes {cls.shape} / extents {ext.shape}")
  for key in ("det_index", "scores", "k"):
    need(arrays[key].shape == (p,), f"{key} shape {arrays[key].shape}, expected ({p},)")
  need(bool(labels.is_thing(cls).all()), "class outside 11..17")
  y0, y1, x0, x1 = (ext[:, i].astype(np.int64) for i in range(4))
  need(bool(((0 <= y0) & (y0 < y1) & (y1 <= h) & (0 <= x0) & (x0 < x1) & (x1 <= w)).all()),
       f"an extent lies outside {h}x{w} or is empty")
  area = (y1 - y0) * (x1 - x0)
  for key, per_px in (("mask", 1), ("rgb", 3)):
    data, off = arrays[f"{key}_data"], arrays[f"{key}_offsets"]
    need(data.dtype == np.uint8 and data.ndim == 1, f"{key}_data {data.dtype} {data.shape}")
    need(off.shape == (p + 1,) and off[0] == 0 and off[-1] == data.size
         and (np.diff(off) == per_px * area).all(), f"{key}_offsets disagree with extents")


def write_shard(path: str, record: dict) -> None:
  """Atomic ``.npz`` of one panorama's :func:`entry_record`."""
  _write_npz(path, record)


def read_shard(path: str) -> dict:
  """Loads and checks a shard; corrupt file → ValueError naming it."""
  record = _read_npz(path, ("name", "image_size") + _ENTRY_KEYS)
  _check(record, path)
  return record


def build_index(shard_paths: list[str], out_path: str) -> dict:
  """Concatenates shards (sorted by panorama name, then entry order) into one file.

  Returns ``{"panoramas", "entries", "per_class"}`` for the stage's log.
  """
  if not shard_paths:
    raise ValueError(f"no ADCL pool shards to index into {out_path}")
  records = sorted((read_shard(p) for p in shard_paths), key=lambda r: str(r["name"]))
  names = [str(r["name"]) for r in records]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"ADCL pool shards repeat panoramas {dup[:5]}")
  size = records[0]["image_size"]
  for r, p in zip(records, names):
    if not np.array_equal(r["image_size"], size):
      raise ValueError(f"ADCL pool shard of {p} is {tuple(r['image_size'])}, others {tuple(size)}")

  out = {"image_size": size.astype(np.int32),
         "names": np.array([n for r, n in zip(records, names) for _ in range(len(r["classes"]))],
                           dtype=str).reshape(-1)}
  for key in ("classes", "det_index", "scores", "k", "extents", "mask_data", "rgb_data"):
    out[key] = np.concatenate([r[key] for r in records])
  for key in ("mask_offsets", "rgb_offsets"):
    sizes = np.concatenate([np.diff(r[key]) for r in records])
    out[key] = np.cumsum(np.concatenate([[0], sizes]), dtype=np.int64)
  _check(out, out_path)
  _write_npz(out_path, out)
  return {"panoramas": len(records), "entries": int(out["classes"].size),
          "per_class": {int(c): int((out["classes"] == c).sum()) for c in labels.THING_IDS}}


class PoolIndex:
  """The whole pool in memory: per-entry class, source, box and crops.

  ``classes`` [P] and ``extents`` [P,4] ``(y0, y1, x0, x1)`` (half-open,
  panorama coordinates) let the paste find the entries that intersect a crop
  window without touching pixels. Arrays are read-only; crops are views.
  """

  def __init__(self, arrays: dict, path: str = "<memory>"):
    _check(arrays, path)
    if arrays["names"].shape != arrays["classes"].shape:
      raise _corrupt(path, f"names {arrays['names'].shape} vs classes {arrays['classes'].shape}")
    self._a = {k: np.asarray(v) for k, v in arrays.items()}
    for v in self._a.values():
      v.setflags(write=False)
    self.path = path
    self.classes = self._a["classes"]
    self.extents = self._a["extents"]
    self.names = self._a["names"]
    self.image_size = tuple(int(v) for v in self._a["image_size"])

  @classmethod
  def load(cls, path: str) -> "PoolIndex":
    if not fileio.isfile(path):
      raise FileNotFoundError(f"missing ADCL pool index {path}; run the adcl_pool stage")
    return cls(_read_npz(path, ("names", "image_size") + _ENTRY_KEYS), path)

  def __len__(self) -> int:
    return int(self.classes.shape[0])

  @property
  def nbytes(self) -> int:
    return int(sum(v.nbytes for v in self._a.values()))

  def extent(self, j: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in self.extents[j])

  def class_id(self, j: int) -> int:
    return int(self.classes[j])

  def name(self, j: int) -> str:
    return str(self.names[j])

  def score(self, j: int) -> float:
    return float(self._a["scores"][j])

  def mask(self, j: int) -> np.ndarray:
    """uint8 [h,w] in {0,1,255}: the entry's mask inside its extent."""
    y0, y1, x0, x1 = self.extent(j)
    off = self._a["mask_offsets"]
    return self._a["mask_data"][off[j]:off[j + 1]].reshape(y1 - y0, x1 - x0)

  def rgb(self, j: int) -> np.ndarray:
    """uint8 [h,w,3]: the source panorama's pixels inside the extent."""
    y0, y1, x0, x1 = self.extent(j)
    off = self._a["rgb_offsets"]
    return self._a["rgb_data"][off[j]:off[j + 1]].reshape(y1 - y0, x1 - x0, 3)

  def full_mask(self, j: int, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Entry ``j`` as a full-size uint8 mask (tests, viewer); default panorama size."""
    out = np.zeros((height or self.image_size[0], width or self.image_size[1]), np.uint8)
    y0, y1, x0, x1 = self.extent(j)
    out[y0:y1, x0:x1] = self.mask(j)
    return out

  def full_rgb(self, j: int, height: int | None = None, width: int | None = None) -> np.ndarray:
    """The entry's RGB crop placed in a black full-size image (tests, viewer)."""
    out = np.zeros((height or self.image_size[0], width or self.image_size[1], 3), np.uint8)
    y0, y1, x0, x1 = self.extent(j)
    out[y0:y1, x0:x1] = self.rgb(j)
    return out
