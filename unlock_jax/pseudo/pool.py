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
box (absolute panorama coordinates: the paste is position-locked; an object
across the 360° seam has one wrapped box, ``x1 > W``, ``data/seam_instances.py``), the
0/1/255 mask crop and the RGB crop of its source panorama, so the paste never
opens a file. Class and source are stored fields, not parsed from file names
(docs/reference_differences.md item 11). A pool with fewer than 80 entries,
or none, is the paste's concern (item 13), not this module's.

Files: one compressed ``.npz`` shard per panorama (an empty panorama gets
one too, so the stage resumes panorama by panorama) and one uncompressed
index concatenating them in name order, which the paste's workers
memory-map (``data/pool_index.py``: the checks and the reader).
``write_reference`` writes the reference PNG layout for viewing or for the
reference code.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data import pool_index
from unlock_jax.data import seam_instances
from unlock_jax.pseudo import labels as pl_labels

SHARED = 255  # pool pixel also covered by another confident amodal mask


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
    # An object across the seam keeps one wrapped extent (x1 > W) and crop.
    y0, y1, x0, x1 = seam_instances.wrapped_extent(m != 0)
    if y1 == y0:
      raise ValueError(f"{name}: empty pool entry (det {e['det_index']})")
    extents.append((y0, y1, x0, x1))
    mask_chunks.append(seam_instances.take_columns(m[y0:y1], x0, x1).ravel())
    rgb_chunks.append(seam_instances.take_columns(image_rgb[y0:y1], x0, x1).ravel())
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


def _write_npz(path: str, arrays: dict, compressed: bool = True) -> None:
  buf = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buf, **arrays)
  fileio.atomic_write_bytes(path, buf.getvalue())


def write_shard(path: str, record: dict) -> None:
  """Atomic ``.npz`` of one panorama's :func:`entry_record`."""
  _write_npz(path, record)


def read_shard(path: str) -> dict:
  """Loads and checks a shard; corrupt file → ValueError naming it."""
  record = pool_index.read_arrays(path, ("name", "image_size") + pool_index.ENTRY_KEYS)
  pool_index.check(record, path)
  return record


def build_index(shard_paths: list[str], out_path: str) -> dict:
  """Concatenates shards (sorted by panorama name, then entry order) into one
  uncompressed ``.npz`` that ``pool_index.PoolIndex.load`` maps.

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
  pool_index.check(out, out_path)
  # Uncompressed, so that the adaptation's workers memory-map it (data/pool_index.py).
  _write_npz(out_path, out, compressed=False)
  return {"panoramas": len(records), "entries": int(out["classes"].size),
          "per_class": {int(c): int((out["classes"] == c).sum()) for c in labels.THING_IDS}}
