"""Cityscapes-style instance AP as the reference computes it: mAP and mAAP.

docs/method.md §8.5, §8.6.

Reference: ``blendpassscripts/evaluation/evalInstanceLevelSemanticLabeling.py``
(``assignGt2Preds`` L333-430, ``evaluateMatches`` L432-652) and its amodal twin
``evalInstanceAmodalLevelSemanticLabeling.py``. Per image only the matching outcome is
kept: prediction scores and classes, how often each prediction is a negative at each
overlap threshold, which prediction is the positive of each valid GT, and hard false
negatives; never masks, so memory grows by about 2-3 KB per image.
"""
import numpy as np

from unlock_jax.data import labels
from unlock_jax import constants
from unlock_jax.evaluation import masks as masks_lib
from unlock_jax.evaluation import panoptic_fusion

OVERLAPS = np.arange(0.5, 1.0, 0.05)  # the reference's exact float values
MIN_REGION_SIZE = constants.MIN_REGION_SIZE


def cityscapes_ap(pos_scores, neg_scores, hard_fn: int) -> float:
  """AP of one class at one overlap: the reference's precision/recall integration.

  ``pos_scores``: confidences of matched GT instances (y_true = 1); ``neg_scores``:
  false positives (y_true = 0); ``hard_fn``: valid GT instances without any match.
  """
  y_score = np.concatenate([np.asarray(pos_scores, np.float64),
                            np.asarray(neg_scores, np.float64)])
  y_true = np.concatenate([np.ones(len(pos_scores)), np.zeros(len(neg_scores))])
  order = np.argsort(y_score, kind="stable")
  y_sorted = y_score[order]
  cumsum = np.cumsum(y_true[order])
  _, first = np.unique(y_sorted, return_index=True)
  n_all = y_sorted.size
  n_true = cumsum[-1] if cumsum.size else 0.0
  below = np.append(cumsum, 0.0)[first - 1]  # positives strictly below each threshold
  tp = n_true - below
  fp = n_all - first - tp
  fn = below + hard_fn
  precision = np.append(tp / (tp + fp), 1.0)
  recall = np.append(tp / (tp + fn), 0.0)
  padded = np.concatenate([recall[:1], recall, [0.0]])
  widths = np.convolve(padded, [-0.5, 0.0, 0.5], "valid")
  return float(np.dot(precision, widths))


class InstanceAPAccumulator:
  """mAP (``amodal=False``) or mAAP (``amodal=True``) over images; mergeable.

  ``add(gt, dets)``: ``gt`` holds ``instance_ids`` [H,W] (instanceTrainIds; 255 = void)
  and, for amodal, ``amodal`` (list of {mask, category_id, seg_id}); ``dets`` is a
  :class:`panoptic_fusion.Detections` or a padded detection dict (all valid
  detections count, no score threshold).
  """

  def __init__(self, amodal: bool = False, min_region_size: int = MIN_REGION_SIZE,
               overlaps=OVERLAPS, thing_ids=labels.THING_IDS):
    self.amodal = amodal
    self.min_region_size = min_region_size
    self.overlaps = np.asarray(overlaps, np.float64)
    self.thing_ids = np.asarray(thing_ids, np.int64)
    n_t, n_c = self.overlaps.size, self.thing_ids.size
    self.hard_fn = np.zeros((n_t, n_c), np.int64)
    self.have_gt = np.zeros(n_c, bool)
    self.have_pred = np.zeros(n_c, bool)
    # Per image: prediction scores/classes, per-threshold negative counts and the index
    # of the positive prediction of each valid GT (see ``add``).
    self._images = []

  # --- per image ------------------------------------------------------------------

  def _gt_modal(self, instance_ids, crops):
    """GT instances of the instance-id PNG and per-prediction intersections/void."""
    uniq, idx, cnt = masks_lib.compact_ids(np.asarray(instance_ids))
    label = np.where(uniq < 1000, uniq, uniq // 1000)
    is_inst = np.isin(label, self.thing_ids)
    hist = (np.stack([masks_lib.histogram_in_crop(idx, c, uniq.size) for c in crops])
            if crops else np.zeros((0, uniq.size), np.int64))
    void_col = masks_lib.lookup(uniq, [labels.IGNORE])[0]
    void = hist[:, void_col] if void_col >= 0 else np.zeros(len(crops), np.int64)
    return (uniq[is_inst], label[is_inst], cnt[is_inst], hist[:, is_inst], void)

  def _gt_amodal(self, instance_ids, amodal_gt, crops):
    """Amodal GT instances (instID = panoptic segment id) and intersections; the void
    mask comes from the *modal* instance PNG, as in the reference."""
    gt_crops = masks_lib.crop_masks([a["mask"] for a in amodal_gt])
    inst_id = np.array([int(a["seg_id"]) for a in amodal_gt], np.int64)
    label = np.array([int(a["category_id"]) for a in amodal_gt], np.int64)
    area = np.array([c.area for c in gt_crops], np.int64)
    inter = masks_lib.pairwise_intersections(crops, gt_crops)
    void_map = np.asarray(instance_ids) == labels.IGNORE
    void = np.array([np.count_nonzero(void_map[c.window] & c.mask) for c in crops],
                    np.int64)
    return inst_id, label, area, inter, void

  def add(self, gt: dict, dets) -> None:
    """Matches one image's detections against its GT at every overlap threshold."""
    if isinstance(dets, dict):
      dets = panoptic_fusion.prepare_detections(dets)
    keep = [i for i, c in enumerate(dets.crops) if c.area > 0]  # empty masks skipped
    crops = [dets.crops[i] for i in keep]
    p_label = labels.FIRST_THING + dets.classes[keep].astype(np.int64)
    p_score = dets.scores[keep].astype(np.float64)
    p_area = np.array([c.area for c in crops], np.int64)
    if self.amodal:
      g_id, g_label, g_area, inter, void = self._gt_amodal(
          gt["instance_ids"], gt["amodal"], crops)
    else:
      g_id, g_label, g_area, inter, void = self._gt_modal(gt["instance_ids"], crops)
    p_cls = np.searchsorted(self.thing_ids, p_label)
    g_cls = np.searchsorted(self.thing_ids, g_label)
    valid_gt = (g_id >= 1000) & (g_area >= self.min_region_size)
    self.have_gt |= np.bincount(g_cls[valid_gt], minlength=self.thing_ids.size) > 0
    self.have_pred |= np.bincount(p_cls, minlength=self.thing_ids.size) > 0
    # Only GT of the prediction's own class is ever looked at (labelName loop).
    same = p_label[:, None] == g_label[None, :]
    inter = np.where(same, inter, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
      iou = np.where(inter > 0, inter / (g_area[None, :] + p_area[:, None] - inter), 0.0)
    match = iou[None] > self.overlaps[:, None, None]  # [T,P,G]
    # Valid GT: positive with the best matching score; every other match of it is a
    # negative (the reference's max/min swap keeps exactly the maximum as positive).
    mv = match & valid_gt[None, None, :]
    scored = np.where(mv, p_score[None, :, None], -np.inf)
    best = (np.argmax(scored, axis=1) if p_score.size
            else np.zeros((self.overlaps.size, g_id.size), np.int64))  # [T,G]
    has = mv.any(axis=1)
    neg_count = mv.sum(axis=2).astype(np.int64)  # [T,P], minus one per positive below
    t_i, g_i = np.nonzero(has)
    np.subtract.at(neg_count, (t_i, best[t_i, g_i]), 1)
    miss = ~has & valid_gt[None, :]
    np.add.at(self.hard_fn, (np.nonzero(miss)[0], g_cls[np.nonzero(miss)[1]]), 1)
    # Predictions without any same-class GT above the overlap: false positive unless
    # mostly void, group (id < 1000) or small GT. Group-and-small counts twice (as in
    # the reference's two separate ``if``s).
    ignore_w = (g_id < 1000).astype(np.int64) + (g_area < self.min_region_size)
    ignored = void + inter @ ignore_w
    ratio = ignored / np.maximum(p_area, 1)
    neg_count += ~match.any(axis=2) & (ratio[None, :] <= self.overlaps[:, None])
    pos_pred = np.where(has, best, -1)[:, valid_gt]
    self._images.append({
        "score": p_score, "cls": p_cls.astype(np.int8),
        "neg_count": neg_count.astype(np.uint8),  # [T,P]: times p is a negative at t
        "pos_pred": pos_pred.astype(np.int16),    # [T,G valid]: the positive's pred
        "gt_cls": g_cls[valid_gt].astype(np.int8)})

  def merge(self, other: "InstanceAPAccumulator") -> None:
    self.hard_fn += other.hard_fn
    self.have_gt |= other.have_gt
    self.have_pred |= other.have_pred
    self._images.extend(other._images)

  def state_bytes(self) -> int:
    """Memory held by the per-image match records."""
    return sum(a.nbytes for rec in self._images for a in rec.values())

  # --- totals -----------------------------------------------------------------------

  def ap_table(self) -> np.ndarray:
    """AP [num classes, num overlaps]: NaN without valid GT, 0 with GT but no preds."""
    n_t, n_c = self.overlaps.size, self.thing_ids.size
    recs = self._images
    offsets = np.cumsum([0] + [r["score"].size for r in recs])
    score = np.concatenate([r["score"] for r in recs] + [np.zeros(0)])
    cls = np.concatenate([r["cls"] for r in recs] + [np.zeros(0, np.int8)])
    neg = np.concatenate([r["neg_count"] for r in recs] + [np.zeros((n_t, 0), np.uint8)], 1)
    pos = np.concatenate([np.where(r["pos_pred"] >= 0, r["pos_pred"] + o, -1)
                          for r, o in zip(recs, offsets)] + [np.zeros((n_t, 0), np.int64)], 1)
    gt_cls = np.concatenate([r["gt_cls"] for r in recs] + [np.zeros(0, np.int8)])
    ap = np.full((n_c, n_t), np.nan)
    for c in range(n_c):
      if not self.have_gt[c]:
        continue
      if not self.have_pred[c]:
        ap[c] = 0.0
        continue
      in_c = cls == c
      for t in range(n_t):
        idx = pos[t, gt_cls == c]
        ps = score[idx[idx >= 0]]
        ns = np.repeat(score[in_c], neg[t, in_c])
        ap[c, t] = cityscapes_ap(ps, ns, int(self.hard_fn[t, c]))
    return ap

  def result(self) -> dict:
    """mAP over classes x overlaps (nanmean, percent), AP50, per-class AP."""
    ap = self.ap_table()
    finite = ~np.isnan(ap)
    o50 = np.isclose(self.overlaps, 0.5)
    name = "mAAP" if self.amodal else "mAP"
    return {
        name: 100.0 * float(np.mean(ap[finite])) if finite.any() else 0.0,
        name + "_undefined": not finite.any(),
        "AP50": (100.0 * float(np.nanmean(ap[:, o50])) if finite[:, o50].any() else 0.0),
        "class_ap": 100.0 * ap.mean(axis=1),  # NaN for classes without valid GT
        "class_ap50": 100.0 * ap[:, o50].mean(axis=1),
        "ap_table": 100.0 * ap,
    }
