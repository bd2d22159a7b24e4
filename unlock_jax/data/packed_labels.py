"""The packed OPLL pseudo-labels: one compressed ``.npz`` per panorama.

``pseudo/labels.py`` computes the labels and writes them through
:func:`write_packed`; the adaptation pipeline (``data/pipeline.py``) reads
them back with :func:`load_packed` in its grain workers. The arrays are listed
in docs/formats.md; masks are stored with ``maskcodec``.
"""
from __future__ import annotations

import io
import zipfile
import zlib

import numpy as np

from unlock_jax import fileio
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import maskcodec


def pack_labels(name: str, semantic_label: np.ndarray, modal: dict, amodal: dict) -> bytes:
  """One panorama's labels as compressed ``.npz`` bytes (masks via maskcodec)."""
  sem = np.asarray(semantic_label, np.uint8)
  arrays = {"name": np.asarray(name), "semantic": sem,
            "shape": np.asarray(sem.shape, np.int64)}
  for branch, inst in (("modal", modal), ("amodal", amodal)):
    if inst["uncertain"].shape != sem.shape:
      raise ValueError(f"{name}: {branch} uncertain map {inst['uncertain'].shape} "
                       f"!= semantic {sem.shape}")
    arrays[f"{branch}_uncertain"] = np.packbits(np.asarray(inst["uncertain"], bool))
    arrays[f"{branch}_classes"] = np.asarray(inst["classes"], np.int32)
    arrays[f"{branch}_scores"] = np.asarray(inst["scores"], np.float32)
    arrays[f"{branch}_det_index"] = np.asarray(inst["det_index"], np.int32)
    for k, v in maskcodec.pack(np.asarray(inst["masks"], bool).reshape(-1, *sem.shape)).items():
      arrays[f"{branch}_{k}"] = v
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return buf.getvalue()


def write_packed(path: str, name: str, semantic_label: np.ndarray,
                 modal: dict, amodal: dict) -> None:
  fileio.atomic_write_bytes(path, pack_labels(name, semantic_label, modal, amodal))


def load_packed(path: str, ignore_uncertain: bool = True) -> dict:
  """Reads a packed file: ``{"name", "semantic" uint8 [H,W], "modal", "amodal"}``.

  Each branch holds ``classes`` int32 [K], ``scores`` float32 [K],
  ``det_index`` int32 [K], ``uncertain`` bool [H,W] and ``masks`` uint8
  [K,H,W]; with ``ignore_uncertain`` a mask is 255 at its branch's uncertain
  pixels where it is not 1, as the reference's ``LoadAmodalSoftLabels``.
  """
  data = fileio.read_bytes(path)
  try:
    a = fileio.load_npz(data)
    h, w = (int(v) for v in a["shape"])
    sem = a["semantic"]
    if sem.shape != (h, w) or sem.dtype != np.uint8:
      raise ValueError(f"semantic is {sem.dtype} {sem.shape}, expected uint8 {(h, w)}")
    out = {"name": str(a["name"]), "semantic": sem}
    for branch in keys.BRANCHES:
      if a[f"{branch}_uncertain"].size != -(-h * w // 8):
        raise ValueError(f"{branch}: uncertain map has {a[f'{branch}_uncertain'].size} bytes")
      unc = np.unpackbits(a[f"{branch}_uncertain"], count=h * w).astype(bool).reshape(h, w)
      classes = a[f"{branch}_classes"].astype(np.int32)
      scores = a[f"{branch}_scores"].astype(np.float32)
      det_index = a[f"{branch}_det_index"].astype(np.int32)
      packed = {k: a[f"{branch}_{k}"] for k in ("extent", "bits", "offsets")}
      k = classes.size
      if scores.size != k or det_index.size != k or packed["extent"].shape != (k, 4):
        raise ValueError(f"{branch}: {k} classes, {scores.size} scores, "
                         f"{det_index.size} indices, extent {packed['extent'].shape}")
      ext = packed["extent"].astype(np.int64)
      need = -(-(ext[:, 1] - ext[:, 0]) * (ext[:, 3] - ext[:, 2]) // 8)
      offsets = packed["offsets"]
      if (offsets.shape != (k + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) != need)
          or int(offsets[-1]) != packed["bits"].size):
        raise ValueError(f"{branch}: mask bits do not match their extents")
      masks = maskcodec.unpack(packed, h, w)
      if ignore_uncertain:
        background = np.where(unc, np.uint8(labels.IGNORE), np.uint8(0))
        masks = np.where(masks, np.uint8(1), background[None])
      else:
        masks = masks.astype(np.uint8)
      out[branch] = {"classes": classes, "scores": scores, "det_index": det_index,
                     "uncertain": unc, "masks": masks}
  except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(f"corrupt packed pseudo-label file {path} ({e}); "
                     "delete it and rerun the opll stage") from e
  return out
