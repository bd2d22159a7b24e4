"""OPLL pseudo-labels from one panorama's predictions (docs/method.md §5.2, §5.3).

Semantic: the argmax, with 255 where the confidence is below its class's
threshold. Instances (modal and amodal alike): a detection scoring below its
class's threshold (or rejected by a filter) only marks "uncertain" pixels; a
kept one is clipped to the pixels whose semantic argmax is any thing class and
dropped if nothing is left; the uncertain map is the low-score area on thing
pixels that no kept mask covers. At load time those pixels become ignore (255)
in every mask of the image (``LoadAmodalSoftLabels``, §7.2.2).

Two on-disk forms: the reference's PNG folders (written here, for
inspection and comparison) and one packed ``.npz`` per panorama for the input
pipeline (``data/packed_labels.py``, which the data layer reads).
"""
from __future__ import annotations

import io
import os
import re

import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data import keys
from unlock_jax.data import labels

# Reference folder of each branch under the OPLL root.
FOLDERS = {"modal": "instance", "amodal": "amodal_instance"}


def semantic_labels(pred: dict, tau: dict[int, dict]) -> np.ndarray:
  """uint8 [H,W]: argmax, 255 where the confidence is below its class's tau.

  Compares codes with ``tau_code`` when both exist (exact and cheap);
  otherwise the float32 confidence in float64 against ``tau``.
  """
  sem = np.asarray(pred["semantic"])
  if sem.size and (sem.min() < 0 or sem.max() >= labels.NUM_CLASSES):
    raise ValueError(f"{pred.get('name')}: semantic argmax outside 0..17")
  sem = sem.astype(np.intp)
  missing = [c for c in range(labels.NUM_CLASSES) if c not in tau]
  if missing:
    raise ValueError(f"semantic thresholds lack classes {missing}")
  codes = pred.get("confidence_code")
  if codes is not None and all("tau_code" in tau[c] for c in range(labels.NUM_CLASSES)):
    lut = np.array([tau[c]["tau_code"] for c in range(labels.NUM_CLASSES)], np.int64)
    low = np.asarray(codes).astype(np.int64) < lut[sem]
  else:
    lut = np.array([tau[c]["tau"] for c in range(labels.NUM_CLASSES)], np.float64)
    low = np.asarray(pred["confidence"]).astype(np.float64) < lut[sem]
  out = sem.astype(np.uint8)
  out[low] = labels.IGNORE
  return out


def instance_labels(pred: dict, branch: str, tau: dict[int, dict],
                    reject: np.ndarray | None = None) -> dict:
  """Kept, clipped masks and the uncertain map of one branch (§5.3).

  ``reject[j]`` True sends detection ``j`` to the uncertain candidates like a
  low score (the hook for a prototype filter). Returns ``{"masks" bool [K,H,W],
  "classes" int32 [K], "scores" float32 [K], "det_index" int32 [K],
  "uncertain" bool [H,W]}`` in the detections' order.

  An image without detections gets an all-False uncertain map; the reference
  reuses the previous image's maps there (docs/reference_differences.md
  item 12), which is benign because the map only acts inside instance masks
  and such an image has none.
  """
  if branch not in keys.BRANCHES:
    raise ValueError(f"branch must be one of {keys.BRANCHES}, got {branch!r}")
  sem = np.asarray(pred["semantic"])
  h, w = sem.shape
  things = labels.is_thing(sem)
  det = pred[branch]
  classes = np.asarray(det["classes"]).ravel()
  scores = np.asarray(det["scores"]).ravel()
  masks = np.asarray(det["masks"])
  n = classes.size
  if scores.size != n or masks.shape[0] != n or (n and masks.shape[1:] != (h, w)):
    raise ValueError(f"{pred.get('name')} {branch}: {n} classes, {scores.size} scores, "
                     f"masks {masks.shape}, semantic {sem.shape}")
  if reject is not None:
    reject = np.asarray(reject, bool).ravel()
    if reject.size != n:
      raise ValueError(f"reject has {reject.size} entries for {n} detections")
  soft = np.zeros((h, w), bool)
  hard = np.zeros((h, w), bool)
  kept, kept_masks = [], []
  for j in range(n):
    m = masks[j].astype(bool)
    low = float(scores[j]) < tau[int(classes[j])]["tau"]  # float64 of the float32 score
    if low or (reject is not None and reject[j]):
      soft |= m
      continue
    m &= things
    if not m.any():
      continue
    hard |= m
    kept.append(j)
    kept_masks.append(m)
  idx = np.asarray(kept, np.int32)
  return {"masks": (np.stack(kept_masks) if kept_masks else np.zeros((0, h, w), bool)),
          "classes": classes[idx].astype(np.int32),
          "scores": scores[idx].astype(np.float32),
          "det_index": idx,
          "uncertain": soft & ~hard & things}


# ---- reference PNG layout ---------------------------------------------------

def split_name(name: str) -> tuple[str, str]:
  """``(folder, stem)`` of a panorama name: ``"<city>/<stem>"`` for BlendPASS, any
  relative path for a folder of the user's own (``"trip1/day2/pano.jpg"``,
  ``"pano.jpg"``: folder ``""``). ValueError for an empty, absolute or ``..`` name."""
  parts = name.split("/") if isinstance(name, str) else [""]
  if any(p in ("", ".", "..") for p in parts) or "\\" in name:
    raise ValueError(f"panorama name {name!r} must be a relative path like "
                     "'<city>/<stem>' or 'folder/file.jpg' (no empty, '.' or '..' parts)")
  return "/".join(parts[:-1]), parts[-1]


def _png_bytes(im: Image.Image) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def _gray_png(a: np.ndarray) -> bytes:
  a = np.ascontiguousarray(a, np.uint8)
  return _png_bytes(Image.frombytes("L", (a.shape[1], a.shape[0]), a.tobytes()))


def semantic_png(semantic_label: np.ndarray) -> bytes:
  """8-bit palette PNG: pixel = class index (0..17, 255), colours labels.PALETTE."""
  a = np.ascontiguousarray(semantic_label, np.uint8)
  im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())
  im.putpalette(labels.PALETTE.ravel().tolist())
  return _png_bytes(im)


def instance_files(stem: str, inst: dict) -> dict[str, bytes]:
  """``{file name: PNG bytes}`` of one branch: ``<stem>_cls{c}_id{k}.png``
  (values 0/1, k counts per class in output order) and ``<stem>_uncertain.png``
  (0/255)."""
  files, count = {}, {}
  for m, cls in zip(inst["masks"], inst["classes"]):
    c = int(cls) - labels.FIRST_THING
    k = count.get(c, 0)
    count[c] = k + 1
    files[f"{stem}_cls{c}_id{k}.png"] = _gray_png(m.astype(np.uint8))
  files[f"{stem}_uncertain.png"] = _gray_png(inst["uncertain"].astype(np.uint8) * 255)
  return files


def write_reference_layout(root: str, name: str, semantic_label: np.ndarray,
                           modal: dict, amodal: dict) -> None:
  """Writes one panorama in the reference OPLL layout under ``root``.

  ``root/semantic/<city>/<stem>.png`` and, per branch, ``root/instance/<city>/``
  and ``root/amodal_instance/<city>/``. The uncertain PNG is always written,
  so the city folders always exist (the reference crashes on a missing one).
  Mask files of this stem left by an earlier run and not rewritten are
  removed, since the reference loader globs ``<stem>_cls{c}_*.png``. A
  folder-of-panoramas name keeps its relative path: ``trip1/a.jpg`` →
  ``semantic/trip1/a.jpg.png``, ``instance/trip1/a.jpg_cls0_id0.png``.
  """
  city, stem = split_name(name)
  fileio.atomic_write_bytes(os.path.join(root, "semantic", city, f"{stem}.png"),
                            semantic_png(semantic_label))
  stale = re.compile(re.escape(stem) + r"_cls\d+_id\d+\.png")
  for branch, inst in (("modal", modal), ("amodal", amodal)):
    folder = os.path.join(root, FOLDERS[branch], city)
    files = instance_files(stem, inst)
    for fname, data in files.items():
      fileio.atomic_write_bytes(os.path.join(folder, fname), data)
    for fname in fileio.listdir(folder):
      if stale.fullmatch(fname) and fname not in files:
        fileio.remove(os.path.join(folder, fname))
