"""The 360° seam: how a model treats the cut where a panorama's ends meet.

An equirectangular panorama has no left or right edge: its first and last
columns look in the same direction (synthpass: column 0 is azimuth -180°, and
so is the column after the last). A network with zero padding sees two image
borders there, and an object across the cut is cut in two. ``SeamMetrics``
measures that, beside (never instead of) the five headline metrics of
``report.OassMetrics``, which it does not touch:

* **seam band / rest mIoU**: the reference's mIoU (``semantic.py``) over the
  columns within ``band`` px of either end (``band = round(band_frac * W)``,
  at least 1), and over the other columns.
* **crossing instances**: a ground-truth instance *crosses the seam* if it
  has pixels in both the first and the last column (on the synthpass target
  val split every object across the cut touches both exactly; widening that
  to a few columns adds objects that merely come close). Restricted to those:
  PQ (things), AP (modal) and AAP (amodal), each with the reference's own
  matching, and the number of crossing objects predicted as two or more
  instances (*split*). See :meth:`SeamMetrics.add` for the exact rules.
* **roll consistency** (:meth:`SeamMetrics.add_roll`): the percentage of
  pixels whose semantic argmax changes when the panorama is rolled by
  :func:`roll_shift` columns before the forward and rolled back after (0: the
  cut does not matter). The evaluator runs the second forward.

All values are percentages, like the headline metrics.
"""
import math

import numpy as np

from unlock_jax.data import labels
from unlock_jax.evaluation import instance_ap
from unlock_jax.evaluation import masks as masks_lib
from unlock_jax.evaluation import panoptic_fusion
from unlock_jax.evaluation import pq
from unlock_jax.evaluation import semantic

# MiT's coarsest stride: a roll by a multiple of it moves the content by whole
# cells of every feature map (and of stage 1's 8x8-strided attention keys), so
# a network that wraps around is exactly roll-equivariant.
ROLL_MULTIPLE = 32
# A split piece: a predicted segment of the object's class with more than this
# fraction of its pixels inside the object (the crowd rule's 0.5).
PIECE_FRACTION = 0.5
# The order of the metrics in results.json and in the printed table.
KEYS = ("band_mIoU", "rest_mIoU", "crossing_PQ", "crossing_AP", "crossing_AAP",
        "crossing_split", "crossing_objects", "roll_change")


def _check_band_frac(band_frac: float) -> float:
  if not 0 < band_frac < 0.5:
    raise ValueError(f"seam band_frac={band_frac} must be in (0, 0.5): the band is "
                     "taken at both ends and must leave columns for the rest")
  return float(band_frac)


def band_width(width: int, band_frac: float) -> int:
  """Columns counted at each end: ``round(band_frac * width)``, at least 1."""
  return max(1, round(_check_band_frac(band_frac) * width))


def roll_shift(width: int) -> int:
  """Half the width, rounded down to a multiple of :data:`ROLL_MULTIPLE` when one fits."""
  half = width // 2
  return half - half % ROLL_MULTIPLE if half >= ROLL_MULTIPLE else half


def rolled_semantic(predict_semantic, images: np.ndarray, shift: int) -> np.ndarray:
  """The argmax of ``images`` [B,H,W,C] rolled ``shift`` columns, rolled back.

  ``predict_semantic``: ``[B,H,W,C] -> [B,H,W]``. Compare the result with the
  prediction of ``images`` themselves (:meth:`SeamMetrics.add_roll`).
  """
  rolled = np.roll(np.asarray(images), shift, axis=2)
  return np.roll(np.asarray(predict_semantic(rolled)), -shift, axis=2)


def crossing_ids(id_map: np.ndarray) -> np.ndarray:
  """Sorted ids present in both the first and the last column of an [H, W] id map."""
  id_map = np.asarray(id_map)
  return np.intersect1d(id_map[:, 0], id_map[:, -1])


def crosses(crop: masks_lib.Crop, width: int) -> bool:
  """Whether a cropped mask has pixels in the first and the last column."""
  return crop.area > 0 and crop.x0 == 0 and crop.x1 == width


def _at_an_end(crop: masks_lib.Crop, width: int) -> bool:
  return crop.area > 0 and (crop.x0 == 0 or crop.x1 == width)


def _thing_categories() -> list:
  return [c for c in pq.default_categories() if c["isthing"]]


class SeamMetrics:
  """Seam-band mIoU, crossing-instance PQ/AP/AAP/split and roll consistency; mergeable.

  ``band_frac``: the band's share of the width at each end; ``min_region_size``:
  the AP's minimum GT area (as ``OassMetrics``).
  """

  def __init__(self, band_frac: float, min_region_size: int = instance_ap.MIN_REGION_SIZE):
    self.band_frac = _check_band_frac(band_frac)
    self.band = semantic.SemanticAccumulator()
    self.rest = semantic.SemanticAccumulator()
    self.panoptic = pq.PQStats(_thing_categories())
    self.instance = instance_ap.InstanceAPAccumulator(False, min_region_size)
    self.amodal_instance = instance_ap.InstanceAPAccumulator(True, min_region_size)
    self.crossing_objects = 0
    self.crossing_split = 0
    self.roll_changed = 0
    self.roll_pixels = 0
    self.band_px = None

  def add(self, gt: dict, pred: dict, fused: dict) -> None:
    """One panorama: ``gt``/``pred`` as for ``report.evaluate_image``, ``fused`` its result.

    Ground truth is restricted to the crossing instances; every prediction is
    kept for matching. Non-crossing GT instances become ignore regions of
    their class (the reference's group/crowd rule: an unmatched prediction
    lying mostly on them is no false positive), and an unmatched prediction
    that touches neither end column nor any crossing GT instance is out of
    scope and ignored (as COCO ignores detections outside an evaluated area
    range): such a prediction can never match a crossing instance.
    """
    sem = np.asarray(pred["sem"])
    width = sem.shape[1]
    b = band_width(width, self.band_frac)
    self.band_px = b
    gt_sem = np.asarray(gt["semantic"])
    self.band.add(np.concatenate([sem[:, :b], sem[:, width - b:]], 1),
                  np.concatenate([gt_sem[:, :b], gt_sem[:, width - b:]], 1))
    self.rest.add(sem[:, b:width - b], gt_sem[:, b:width - b])
    self._add_panoptic(gt, fused["panoptic"])
    self._add_instance(gt, pred["modal"], amodal=False)
    self._add_instance(gt, pred["amodal"], amodal=True)

  def _add_panoptic(self, gt: dict, pred_pan: np.ndarray) -> None:
    """PQ (things) and splits over the crossing GT segments of the modal panoptic map."""
    gt_pan, pred_pan = np.asarray(gt["panoptic"]), np.asarray(pred_pan)
    g_uniq, g_idx, _ = masks_lib.compact_ids(gt_pan)
    p_uniq, p_idx, p_cnt = masks_lib.compact_ids(pred_pan)
    n_p = p_uniq.size
    inter_all = np.bincount(g_idx.ravel().astype(np.int64) * n_p + p_idx.ravel(),
                            minlength=g_uniq.size * n_p).reshape(g_uniq.size, n_p)
    ids, cat, area, crowd = pq.segment_table(gt["segments"])
    rows = masks_lib.lookup(g_uniq, ids)
    seg_inter = np.where(rows[:, None] >= 0, inter_all[np.maximum(rows, 0)], 0)
    thing = labels.is_thing(cat) & ~crowd
    crossing = thing & np.isin(ids, crossing_ids(gt_pan))
    # Predicted thing segments (the fusion's ids are category * divisor + k).
    p_cat = p_uniq // labels.LABEL_DIVISOR
    p_thing = labels.is_thing(p_cat)  # not road, stuff or VOID_LABEL
    at_end = np.isin(p_uniq, np.union1d(pred_pan[:, 0], pred_pan[:, -1]))
    in_scope = p_thing & (at_end | (seg_inter[crossing] > 0).any(0))
    cols = np.flatnonzero(in_scope)
    # GT rows: the crossing segments, then one crowd row per thing class holding
    # its other segments (crowd or not), so the crowd rule ignores predictions on them.
    others = labels.is_thing(cat) & ~crossing
    t_cats = np.array(labels.THING_IDS, np.int64)
    crowd_inter = np.stack([seg_inter[others & (cat == c)].sum(0) for c in t_cats])
    inter = np.concatenate([seg_inter[crossing], crowd_inter])[:, cols]
    n_c = int(crossing.sum())
    void_row = masks_lib.lookup(g_uniq, [pq.VOID])[0]
    void_inter = inter_all[void_row] if void_row >= 0 else np.zeros(n_p, np.int64)
    self.panoptic.update(
        inter, np.concatenate([ids[crossing], -1 - np.arange(t_cats.size)]),
        np.concatenate([cat[crossing], t_cats]),
        np.concatenate([area[crossing], np.zeros(t_cats.size, np.int64)]),
        np.concatenate([np.zeros(n_c, bool), np.ones(t_cats.size, bool)]),
        p_cat[cols], p_cnt[cols], void_inter[cols])
    # Split: two or more predicted segments of the object's class each lying
    # mostly (> PIECE_FRACTION of their pixels) inside it.
    piece = ((seg_inter[crossing] > PIECE_FRACTION * p_cnt[None, :])
             & (cat[crossing][:, None] == p_cat[None, :]) & p_thing[None, :])
    self.crossing_objects += n_c
    self.crossing_split += int((piece.sum(1) >= 2).sum())

  def _add_instance(self, gt: dict, dets: dict, *, amodal: bool) -> None:
    """AP (modal) or AAP (amodal) over the crossing GT instances."""
    dets = panoptic_fusion.prepare_detections(dets)
    width = dets.shape[1]
    instance_ids = np.asarray(gt["instance_ids"])
    if amodal:
      gt_crops = masks_lib.crop_masks([a["mask"] for a in gt["amodal"]])
      keep = [crosses(c, width) for c in gt_crops]
      # A non-crossing instance keeps its mask under a group id (< 1000): ignored.
      amodal_gt = [a if k else {**a, "seg_id": int(a["category_id"])}
                   for a, k in zip(gt["amodal"], keep)]
      crossing_crops = [c for c, k in zip(gt_crops, keep) if k]
      restricted = {"instance_ids": instance_ids, "amodal": amodal_gt}
    else:
      cross = crossing_ids(instance_ids)
      cross = cross[cross >= 1000]  # instances (below: classes, groups, 255 void)
      inst = instance_ids >= 1000
      # Non-crossing instances become their class's group region (id = class): ignored.
      restricted = {"instance_ids": np.where(inst & ~np.isin(instance_ids, cross),
                                             instance_ids // 1000, instance_ids)}
      crossing_crops = [masks_lib.crop_mask(instance_ids == i) for i in cross]
    touches = masks_lib.pairwise_intersections(dets.crops, crossing_crops).any(1)
    keep = [i for i, c in enumerate(dets.crops) if touches[i] or _at_an_end(c, width)]
    scoped = panoptic_fusion.Detections(
        classes=dets.classes[keep], scores=dets.scores[keep],
        crops=[dets.crops[i] for i in keep], shape=dets.shape)
    (self.amodal_instance if amodal else self.instance).add(restricted, scoped)

  def add_roll(self, sem: np.ndarray, sem_rolled: np.ndarray) -> None:
    """One panorama's argmax and that of its rolled copy, rolled back; any shapes alike."""
    sem, sem_rolled = np.asarray(sem), np.asarray(sem_rolled)
    if sem.shape != sem_rolled.shape:
      raise ValueError(f"roll consistency: {sem.shape} vs {sem_rolled.shape}")
    self.roll_changed += int(np.count_nonzero(sem != sem_rolled))
    self.roll_pixels += sem.size

  def merge(self, other: "SeamMetrics") -> None:
    for name in ("band", "rest", "panoptic", "instance", "amodal_instance"):
      getattr(self, name).merge(getattr(other, name))
    self.crossing_objects += other.crossing_objects
    self.crossing_split += other.crossing_split
    self.roll_changed += other.roll_changed
    self.roll_pixels += other.roll_pixels
    self.band_px = self.band_px if self.band_px is not None else other.band_px

  def result(self) -> dict:
    """:data:`KEYS` (NaN: nothing to measure, e.g. no crossing instance, no roll) and
    ``band_px``, the band's width in pixels."""
    nan = math.nan
    band, rest = self.band.result(), self.rest.result()
    pan = self.panoptic.result()["Things"]
    ins, ains = self.instance.result(), self.amodal_instance.result()
    return {
        "band_mIoU": nan if band["mIoU_undefined"] else float(band["mIoU"]),
        "rest_mIoU": nan if rest["mIoU_undefined"] else float(rest["mIoU"]),
        "crossing_PQ": float(pan["pq"]) if pan["n"] else nan,
        "crossing_AP": nan if ins["mAP_undefined"] else float(ins["mAP"]),
        "crossing_AAP": nan if ains["mAAP_undefined"] else float(ains["mAAP"]),
        "crossing_split": self.crossing_split,
        "crossing_objects": self.crossing_objects,
        "roll_change": (100.0 * self.roll_changed / self.roll_pixels
                        if self.roll_pixels else nan),
        "band_px": self.band_px,
    }


def format_lines(result: dict) -> str:
  """The seam metrics as one block of the evaluator's printed table."""
  def fmt(k):
    v = result[k]
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (
        f"{v:.2f}" if isinstance(v, float) else str(v))
  if result["band_px"] is None:  # roll consistency only
    return f"seam: -roll_change: {fmt('roll_change')}%"
  return "\n".join([
      f"seam (band {result['band_px']} px at each end):",
      f"-band_mIoU: {fmt('band_mIoU')}  -rest_mIoU: {fmt('rest_mIoU')}  "
      f"-roll_change: {fmt('roll_change')}%",
      f"-crossing_PQ: {fmt('crossing_PQ')}  -crossing_AP: {fmt('crossing_AP')}  "
      f"-crossing_AAP: {fmt('crossing_AAP')}  -split: {fmt('crossing_split')}"
      f"/{fmt('crossing_objects')}"])
