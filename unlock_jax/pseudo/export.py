"""Predictions at the input's resolution, and the files other tools read.

The jitted predict function and the prediction store work at the panorama
size the model runs at (``config.predict.image_size``); an image of another
size is resized to it on the way in. This module brings one prediction back
to the input's (height, width), for ``unlock_jax.load(...).predict``
(``api.py``) and for the export of a store (``export_store``: the
``predict`` stage with ``config.predict.export_dir``), so both give the same
arrays:

* maps and masks are resized nearest-neighbour: output pixel ``(y, x)``
  takes the model pixel that contains its centre, ``floor((y + 0.5) h / H)``
  in exact integer arithmetic, so class ids are never blended;
* boxes (x1, y1, x2, y2, pixels) are scaled by ``W / w`` and ``H / h``;
* the panoptic map is fused at the model's size, as the evaluator fuses it
  (``evaluation/panoptic_fusion``: modal detections scoring >= ``tau_m``;
  each segment takes the majority semantic thing class under it; stuff
  regions of fewer than ``stuff_area`` pixels are void), then resized.
  Unlike the evaluator, void stays void (the reference scores it as road).

Panoptic ids, in the API's ``panoptic`` map and the PNGs (``R + 256 G + 256²
B``, the COCO panoptic convention): 0 is void; otherwise ``(class + 1) *
1000 + k``, with k = 0 for the region of a stuff class and k = 1, 2, ... for
the instances of a thing class (Cityscapes' ``class * 1000 + k`` moved up
by one class, as COCO reserves id 0 for void). ``segments`` holds one COCO
``segments_info`` record per id: ``id``, ``category_id`` (the class, a
train id 0..17 as in the semantic map), ``isthing``, ``iscrowd`` 0, ``area``
and ``bbox`` ``[x, y, width, height]`` at the input's size.

The export of a store writes, at each panorama's recorded source size
(``store``'s ``source_size``; the store's size where none is recorded,
with a warning)::

    <out>/semantic/<name>.png    uint8 class ids (train ids 0..17)
    <out>/panoptic/<name>.png    RGB panoptic ids as above
    <out>/panoptic.json          COCO panoptic: images, annotations, categories
    <out>/instances_modal.json   COCO instances: every detection, its RLE mask and score
    <out>/instances_amodal.json  the same for the amodal masks (occluded parts included)

Images are listed with ``id`` (1, 2, ... in name order), ``file_name`` (the
entry's name: for the user's own panoramas, the image's path under the
folder ``predict`` read), ``height`` and ``width`` (the source size) and
``path`` (the recorded source file, or null). Instance annotations carry
the detector's class (11..17), its box scaled to the image (as
``[x, y, width, height]``), the mask's ``area`` and RLE ``segmentation``
(``pycocotools.mask.encode``), and ``score``. Masks are brought to the
input's size one at a time, within their box, so a large image never holds
all of them at once.
"""
import os

import numpy as np
import pycocotools.mask as mask_utils
from absl import logging

from unlock_jax import fileio
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.evaluation import masks as masks_lib
from unlock_jax.evaluation import panoptic_fusion
from unlock_jax.evaluation import pictures
from unlock_jax.pseudo import store

SEMANTIC_DIR = "semantic"
PANOPTIC_DIR = "panoptic"
PANOPTIC_JSON = "panoptic.json"
INSTANCES_JSON = {"modal": "instances_modal.json", "amodal": "instances_amodal.json"}
BRANCHES = keys.BRANCHES
VOID = 0
_REFERENCE_PIXELS = 400 * 2048  # the panorama size the reference's pixel counts are set for


def stuff_area_for(size) -> int:
  """The reference's stuff area (2048 pixels of a 400x2048 panorama) at ``size``."""
  h, w = size
  return max(1, round(panoptic_fusion.STUFF_AREA * h * w / _REFERENCE_PIXELS))


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source index of each of ``n_out`` pixels: ``floor((i + 0.5) * n_in / n_out)``, exactly."""
  return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


class Resize:
  """Nearest-neighbour resizing of one prediction from ``src`` (h, w) to ``dst`` (H, W)."""

  def __init__(self, src, dst):
    self.src, self.dst = tuple(int(v) for v in src), tuple(int(v) for v in dst)
    if min(self.src + self.dst) < 1:
      raise ValueError(f"cannot resize a {self.src} prediction to {self.dst}")
    self.ys = nearest_indices(self.src[0], self.dst[0])
    self.xs = nearest_indices(self.src[1], self.dst[1])

  def map(self, a: np.ndarray) -> np.ndarray:
    """``[..., h, w]`` → ``[..., H, W]``."""
    if self.src == self.dst:
      return a
    return np.take(np.take(a, self.ys, axis=-2), self.xs, axis=-1)

  def mask(self, m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """One ``[h, w]`` bool mask → ``[H, W]``, gathering only the window of its pixels.

    ``out``: a zeroed ``[H, W]`` bool array to write into (any memory order).
    """
    out = np.zeros(self.dst, bool) if out is None else out
    crop = masks_lib.crop_mask(m)
    if crop.area:
      # Output rows/columns whose source lies in the crop (the indices are sorted).
      r0, r1 = np.searchsorted(self.ys, [crop.y0, crop.y1])
      c0, c1 = np.searchsorted(self.xs, [crop.x0, crop.x1])
      out[r0:r1, c0:c1] = crop.mask[np.ix_(self.ys[r0:r1] - crop.y0, self.xs[c0:c1] - crop.x0)]
    return out

  def boxes(self, b: np.ndarray) -> np.ndarray:
    """``[N, 4]`` x1, y1, x2, y2 → the same at the output size (float32)."""
    sy, sx = self.dst[0] / self.src[0], self.dst[1] / self.src[1]
    return (np.asarray(b, np.float64).reshape(-1, 4) * [sx, sy, sx, sy]).astype(np.float32)


def fuse(semantic: np.ndarray, modal: dict, *, tau_m: float, stuff_area: int) -> np.ndarray:
  """int32 panoptic ids (module docstring) of one prediction at its own size.

  ``modal``: the store's branch dict (classes 11..17, scores, masks [N,h,w]).
  """
  n = len(modal["classes"])
  dets = panoptic_fusion.prepare_detections({
      "valid": np.ones(n, bool),
      "classes": np.asarray(modal["classes"], np.int64) - labels.FIRST_THING,
      "scores": np.asarray(modal["scores"], np.float32), "masks": modal["masks"]})
  pan = panoptic_fusion.merge_semantic_and_instance(
      semantic, panoptic_fusion.modal_instance_map(dets, tau_m), stuff_area,
      void_to_road=False)
  return np.where(pan == panoptic_fusion.VOID_LABEL, VOID,
                  pan + labels.LABEL_DIVISOR).astype(np.int32)


def segments_info(panoptic: np.ndarray, rs: Resize | None = None) -> list[dict]:
  """COCO ``segments_info`` (module docstring) of ``panoptic``, or with ``rs`` of
  ``rs.map(panoptic)``, by ascending id.

  Computed on the small map: an output pixel repeats the source pixel its
  indices pick, so an id's area is the sum over its source pixels of how
  often their row and column are picked, and its box spans the output rows
  and columns that pick its first and last picked ones.
  """
  h, w = panoptic.shape
  rs = rs or Resize((h, w), (h, w))
  wy, wx = np.bincount(rs.ys, minlength=h), np.bincount(rs.xs, minlength=w)
  uniq, idx, _ = masks_lib.compact_ids(panoptic)
  area = np.bincount(idx.ravel(), weights=np.outer(wy, wx).ravel(), minlength=uniq.size)
  rows = np.zeros((uniq.size, h), bool)
  cols = np.zeros((uniq.size, w), bool)
  rows[idx[:, wx > 0], np.arange(h)[:, None]] = True  # rows holding the id in a picked column
  cols[idx[wy > 0], np.arange(w)[None, :]] = True
  rows[:, wy == 0] = cols[:, wx == 0] = False
  out = []
  for k, seg_id in enumerate(uniq.tolist()):
    if seg_id == VOID or not area[k]:
      continue
    r, c = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
    y0, y1 = np.searchsorted(rs.ys, r[0], "left"), np.searchsorted(rs.ys, r[-1], "right")
    x0, x1 = np.searchsorted(rs.xs, c[0], "left"), np.searchsorted(rs.xs, c[-1], "right")
    cls, inst = divmod(seg_id, labels.LABEL_DIVISOR)
    out.append({"id": seg_id, "category_id": cls - 1, "isthing": int(inst > 0), "iscrowd": 0,
                "area": int(round(area[k])),
                "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]})
  return out


def at_resolution(pred: dict, size, *, tau_m: float, stuff_area: int,
                  with_masks: bool = True, with_confidence: bool = True) -> dict:
  """One prediction at its model size (a store entry, or a row of ``inference.iterate``) → ``size``.

  Returns ``{"semantic" uint8 [H,W], "confidence" float32 [H,W] (only
  ``with_confidence``), "panoptic" int32 [H,W], "segments" [dict], "modal",
  "amodal"}``, each branch ``{"classes" int32 [N] (11..17), "scores" float32
  [N], "boxes" float32 [N,4] (x1, y1, x2, y2), "masks" bool [N,H,W] (only
  ``with_masks``)}``.
  """
  semantic = np.asarray(pred["semantic"])
  rs = Resize(semantic.shape, size)
  pan = fuse(semantic, pred["modal"], tau_m=tau_m, stuff_area=stuff_area)
  out = {"semantic": rs.map(semantic).astype(np.uint8), "panoptic": rs.map(pan),
         "segments": segments_info(pan, rs)}
  if with_confidence:
    out["confidence"] = rs.map(np.asarray(pred["confidence"])).astype(np.float32)
  for b in BRANCHES:
    d = pred[b]
    out[b] = {"classes": np.asarray(d["classes"], np.int32),
              "scores": np.asarray(d["scores"], np.float32), "boxes": rs.boxes(d["boxes"])}
    if with_masks:
      masks = np.zeros((len(d["masks"]),) + rs.dst, bool)  # pages touched only in windows
      for m, o in zip(d["masks"], masks):
        rs.mask(m, out=o)
      out[b]["masks"] = masks
  return out


def encode_rle(mask: np.ndarray) -> dict:
  """COCO RLE of one bool mask: ``{"size": [H, W], "counts": str}`` (no copy if Fortran-ordered)."""
  mask = np.asfortranarray(mask)
  rle = mask_utils.encode(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8, order="F"))
  return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _instances(branch: dict, boxes: np.ndarray, rs: Resize) -> list[dict]:
  anns = []
  for c, s, box, m in zip(branch["classes"], branch["scores"], boxes, branch["masks"]):
    m = rs.mask(m, out=np.zeros(rs.dst, bool, order="F"))  # column-major, as RLE runs
    x1, y1, x2, y2 = (float(v) for v in box)
    anns.append({"category_id": int(c), "segmentation": encode_rle(m),
                 "area": int(np.count_nonzero(m)), "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "score": float(s), "iscrowd": 0})
  return anns


def export_entry(out_dir: str, entry: dict, size, *, tau_m: float, stuff_area: int) -> dict:
  """Writes one store entry's PNGs at ``size``; returns its record for the JSON files."""
  name = entry["name"]
  res = at_resolution(entry, size, tau_m=tau_m, stuff_area=stuff_area, with_masks=False,
                      with_confidence=False)
  pictures.save_png(os.path.join(out_dir, SEMANTIC_DIR, name + ".png"), res["semantic"])
  pictures.save_png(os.path.join(out_dir, PANOPTIC_DIR, name + ".png"),
                    labels.id2rgb(res["panoptic"]))
  rs = Resize(entry["semantic"].shape, size)
  rec = {"name": name, "path": entry.get("source_path"), "height": int(size[0]),
         "width": int(size[1]), "segments": res["segments"]}
  for b in BRANCHES:
    rec[b] = _instances(entry[b], res[b]["boxes"], rs)
  return rec


def categories(things_only: bool = False) -> list[dict]:
  """COCO categories: id = train id, name, isthing, colour (the pictures' palette)."""
  return [{"id": c, "name": labels.CLASS_NAMES[c], "supercategory": "thing" if t else "stuff",
           "isthing": int(t), "color": [int(v) for v in labels.PALETTE[c]]}
          for c in range(labels.NUM_CLASSES)
          for t in [bool(labels.is_thing(c))] if t or not things_only]


def coco_files(records: list[dict], info: dict) -> dict:
  """``{file name: COCO dict}`` of the JSON files, ids numbered in name order."""
  records = sorted(records, key=lambda r: r["name"])
  images = [{"id": i + 1, "file_name": r["name"], "height": r["height"], "width": r["width"],
             "path": r["path"]} for i, r in enumerate(records)]
  panoptic = {"info": info, "images": images, "categories": categories(),
              "annotations": [{"image_id": i + 1, "file_name": r["name"] + ".png",
                               "segments_info": r["segments"]}
                              for i, r in enumerate(records)]}
  out = {PANOPTIC_JSON: panoptic}
  for b in BRANCHES:
    anns = [dict(a, image_id=i + 1) for i, r in enumerate(records) for a in r[b]]
    out[INSTANCES_JSON[b]] = {"info": dict(info, masks=b), "images": images,
                              "categories": categories(things_only=True),
                              "annotations": [dict(a, id=j + 1) for j, a in enumerate(anns)]}
  return out


def export_store(store_dir: str, out_dir: str, names, *, tau_m: float,
                 stuff_area: int) -> dict:
  """Exports the entries ``names`` of a store (module docstring); every process calls it.

  Each process writes the PNGs of its share of ``names``; process 0 writes
  the JSON files (all written atomically). Returns a summary.
  """
  import jax  # pylint: disable=g-import-not-at-top
  names = sorted(names)
  mine, unsized = [], []
  for name in names[jax.process_index()::jax.process_count()]:
    entry = store.load_prediction(store_dir, name)
    size = entry["source_size"]
    if size is None:
      size = entry["semantic"].shape
      unsized.append(name)
    mine.append(export_entry(out_dir, entry, size, tau_m=tau_m, stuff_area=stuff_area))
  gathered = shd.gather_objects((mine, unsized))
  records = [r for g in gathered for r in g[0]]
  unsized = sorted(n for g in gathered for n in g[1])
  if unsized:
    logging.warning(
        "export: %d of %d entries of %s record no source size (a data set split, or "
        "written before sizes were recorded) and are exported at the store's size (first: "
        "%s); rerun predict into a new store_dir to export at the images' own sizes",
        len(unsized), len(names), store_dir, unsized[0])
  info = {"description": "unlock_jax predictions", "store": store_dir,
          "tau_m": float(tau_m), "stuff_area": int(stuff_area)}
  if jax.process_index() == 0:
    for fname, obj in coco_files(records, info).items():
      fileio.atomic_write_json(os.path.join(out_dir, fname), obj)
  shd.barrier("export written")
  n_inst = {b: sum(len(r[b]) for r in records) for b in BRANCHES}
  logging.info("export: %d panoramas (%d modal, %d amodal instances) → %s", len(records),
               n_inst["modal"], n_inst["amodal"], out_dir)
  return {"exported": len(records), "out_dir": out_dir, "unsized": len(unsized),
          "instances": n_inst}
