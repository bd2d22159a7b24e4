"""Panoptic quality (mPQ) and amodal panoptic quality (mAPQ) accumulators.

docs/method.md §8.4 and §8.8.

Reference: ``blendpassscripts/evaluation/evalPanopticSemanticLabeling.py`` L127-253 and
``evalAmodalPanopticSemanticLabeling.py`` L136-294 (modified cityscapesScripts). GT VOID is
id 255, not 0 as in COCO panopticapi. Intersections come from one bincount of the pair
index per layer pair instead of PNG round trips.
"""
import numpy as np

from unlock_jax.data import labels
from unlock_jax.evaluation import masks as masks_lib
from unlock_jax.evaluation import panoptic_fusion

VOID = labels.IGNORE  # GT segment id whose pixels are VOID


def default_categories() -> list:
  """The 18-class category list of ``val_trainId_K2B.json`` (id == train id)."""
  return [{"id": i, "name": n, "isthing": int(labels.is_thing(i))}
          for i, n in enumerate(labels.CLASS_NAMES)]


def match_segments(inter, gt_cat, gt_area, gt_crowd, pred_cat, pred_area, void_inter,
                   one_to_one: bool = False):
  """TP pairs of one image, with the reference's IoU (VOID pixels leave the union).

  ``inter`` [S,P] pixel counts between GT segments and predicted segments. A pair is a
  TP if categories agree, the GT is not crowd and IoU > 0.5. Without ``one_to_one`` every
  qualifying pair counts (the reference; one-to-one anyway when segments do not overlap).
  With it, pairs are taken greedily by descending IoU, each segment at most once.
  Returns ``(gt_index, pred_index, iou)`` of the TP pairs.
  """
  inter = np.asarray(inter, np.int64)
  union = (pred_area[None, :] + gt_area[:, None] - inter - void_inter[None, :])
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(inter > 0, inter / np.maximum(union, 1e-12), 0.0)
  ok = (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None] & (inter > 0)
  ok &= iou > 0.5
  gi, pi = np.nonzero(ok)
  vals = iou[gi, pi]
  if one_to_one and gi.size:
    order = np.argsort(-vals, kind="stable")
    used_g, used_p, keep = set(), set(), []
    for o in order:
      if gi[o] in used_g or pi[o] in used_p:
        continue
      used_g.add(gi[o])
      used_p.add(pi[o])
      keep.append(o)
    keep = np.array(sorted(keep), np.int64)
    gi, pi, vals = gi[keep], pi[keep], vals[keep]
  return gi, pi, vals


class PQStats:
  """Per-category TP/FP/FN counts and IoU sums, keyed by the category list."""

  def __init__(self, categories):
    self.categories = list(categories) if categories is not None else default_categories()
    self.cat_ids = np.array([c["id"] for c in self.categories], np.int64)
    self.isthing = np.array([bool(c.get("isthing", 0)) for c in self.categories])
    self.tp = np.zeros(len(self.categories), np.int64)
    self.fp = np.zeros(len(self.categories), np.int64)
    self.fn = np.zeros(len(self.categories), np.int64)
    self.iou = np.zeros(len(self.categories), np.float64)
    self._sorted = np.argsort(self.cat_ids)

  def rows(self, cat_ids) -> np.ndarray:
    """Row of each category id, -1 for ids that are not in the category list."""
    pos = masks_lib.lookup(self.cat_ids[self._sorted], cat_ids)
    return np.where(pos >= 0, self._sorted[np.maximum(pos, 0)], -1)

  def update(self, inter, gt_ids, gt_cat, gt_area, gt_crowd, pred_cat, pred_area,
             void_inter, one_to_one=False):
    """Adds one image's matching (reference L204-251) to the counts."""
    gt_crowd = np.asarray(gt_crowd, bool)
    pred_rows = self.rows(pred_cat)
    if np.any(pred_rows < 0):
      bad = sorted(set(np.asarray(pred_cat)[pred_rows < 0].tolist()))
      raise KeyError(f"predicted segment with unknown category_id {bad}")
    gi, pi, vals = match_segments(inter, gt_cat, gt_area, gt_crowd, pred_cat, pred_area,
                                  void_inter, one_to_one)
    gt_rows = self.rows(gt_cat)
    np.add.at(self.tp, gt_rows[gi], 1)
    np.add.at(self.iou, gt_rows[gi], vals)
    gt_matched = np.zeros(len(gt_ids), bool)
    gt_matched[gi] = True
    pred_matched = np.zeros(len(pred_cat), bool)
    pred_matched[pi] = True
    fn = ~gt_matched & ~gt_crowd & (gt_rows >= 0)
    np.add.at(self.fn, gt_rows[fn], 1)
    # Crowd regions: the reference keeps one crowd segment per category, the last one.
    ignored = np.asarray(void_inter, np.int64).copy()
    crowd_of_cat = {}
    for s in np.flatnonzero(gt_crowd):
      crowd_of_cat[int(gt_cat[s])] = s
    for p in np.flatnonzero(~pred_matched):
      s = crowd_of_cat.get(int(pred_cat[p]))
      if s is not None:
        ignored[p] += inter[s, p]
    fp = ~pred_matched & ~(ignored / np.maximum(pred_area, 1) > 0.5)
    np.add.at(self.fp, pred_rows[fp], 1)

  def merge(self, other: "PQStats"):
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    self.iou += other.iou

  def result(self) -> dict:
    """Per-category PQ/SQ/RQ and All/Things/Stuff means over categories with TP+FP+FN>0."""
    denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
    counted = (self.tp + self.fp + self.fn) > 0
    pq = np.where(counted, self.iou / np.maximum(denom, 1e-12), 0.0)
    sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
    rq = np.where(counted, self.tp / np.maximum(denom, 1e-12), 0.0)
    out = {"per_class": {}}
    for i, cat in enumerate(self.categories):
      out["per_class"][cat["id"]] = {
          "name": cat.get("name", str(cat["id"])), "pq": 100 * pq[i], "sq": 100 * sq[i],
          "rq": 100 * rq[i], "tp": int(self.tp[i]), "fp": int(self.fp[i]),
          "fn": int(self.fn[i]), "counted": bool(counted[i])}
    for name, sel in (("All", np.ones_like(counted)), ("Things", self.isthing),
                      ("Stuff", ~self.isthing)):
      m = counted & sel
      n = int(m.sum())
      out[name] = {"pq": 100 * pq[m].mean() if n else 0.0,
                   "sq": 100 * sq[m].mean() if n else 0.0,
                   "rq": 100 * rq[m].mean() if n else 0.0, "n": n}
    return out


def segment_table(segments):
  """Unique-id view of a segments_info list (a later duplicate id wins, like a dict)."""
  by_id = {}
  for seg in segments:
    by_id[int(seg["id"])] = seg
  ids = np.array(list(by_id), np.int64)
  cat = np.array([int(s["category_id"]) for s in by_id.values()], np.int64)
  area = np.array([int(s["area"]) for s in by_id.values()], np.int64)
  crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in by_id.values()], bool)
  return ids, cat, area, crowd


class PanopticAccumulator:
  """mPQ over images: ``add(gt_panoptic, gt_segments, pred_panoptic)``; mergeable."""

  def __init__(self, categories=None, label_divisor: int = labels.LABEL_DIVISOR):
    self.stats = PQStats(categories)
    self.label_divisor = label_divisor

  def add(self, gt_pan: np.ndarray, gt_segments, pred_pan: np.ndarray) -> None:
    """One image: GT id map + its segments_info (areas from the JSON), predicted id map.

    Predicted segments are the unique ids of ``pred_pan``, category ``id // divisor``
    (the fusion already turned void into road). GT pixels whose id is not listed are
    never matched; GT id 255 is VOID.
    """
    gt_pan = np.asarray(gt_pan)
    pred_pan = np.asarray(pred_pan)
    if gt_pan.shape != pred_pan.shape:
      raise ValueError(f"GT {gt_pan.shape} and prediction {pred_pan.shape} differ")
    g_uniq, g_idx, _ = masks_lib.compact_ids(gt_pan)
    p_uniq, p_idx, p_cnt = masks_lib.compact_ids(pred_pan)
    n_p = p_uniq.size
    inter_all = np.bincount(g_idx.ravel().astype(np.int64) * n_p + p_idx.ravel(),
                            minlength=g_uniq.size * n_p).reshape(g_uniq.size, n_p)
    ids, cat, area, crowd = segment_table(gt_segments)
    rows = masks_lib.lookup(g_uniq, ids)
    inter = np.where(rows[:, None] >= 0, inter_all[np.maximum(rows, 0)], 0)
    void_row = masks_lib.lookup(g_uniq, [VOID])[0]
    void_inter = inter_all[void_row] if void_row >= 0 else np.zeros(n_p, np.int64)
    self.stats.update(inter, ids, cat, area, crowd, p_uniq // self.label_divisor, p_cnt,
                      void_inter)

  def merge(self, other: "PanopticAccumulator") -> None:
    self.stats.merge(other.stats)

  def result(self) -> dict:
    res = self.stats.result()
    res["mPQ"] = res["All"]["pq"]
    res["mPQ_undefined"] = res["All"]["n"] == 0
    return res


class AmodalPanopticAccumulator:
  """mAPQ over images (§8.8): PQ between GT and predicted *layers* of segments.

  GT layer 0 is the GT semantic map with thing pixels removed (stuff segment id =
  category = class, 255 = VOID); every amodal GT instance is its own layer. Each (GT
  segment, predicted segment) intersection is counted in the one layer pair holding both.
  ``one_to_one=False`` reproduces the reference, which counts every pair with IoU > 0.5
  as a TP although amodal segments overlap (QUIRK); ``True`` is the published APQ rule.
  """

  def __init__(self, categories=None, one_to_one: bool = False,
               num_classes: int = labels.NUM_CLASSES):
    self.stats = PQStats(categories)
    self.one_to_one = one_to_one
    self.num_classes = num_classes

  def add(self, gt_semantic: np.ndarray, gt_amodal, pred) -> None:
    """One image: GT semantic [H,W], amodal GT list ({mask, category_id, seg_id}),
    and an :class:`panoptic_fusion.AmodalPanoptic` prediction."""
    gt_sem = np.asarray(gt_semantic).astype(np.int64)
    if gt_sem.shape != pred.layer0.shape:
      raise ValueError(f"GT {gt_sem.shape} and prediction {pred.layer0.shape} differ")
    # GT layer 0 as compact indices: 0..255 = semantic value, 256 = "not in layer 0".
    outside = 256
    g0 = np.where(labels.is_thing(gt_sem), outside, np.clip(gt_sem, 0, 255))
    g0_present = np.bincount(g0.ravel(), minlength=outside + 1)[:outside]
    stuff_vals = np.flatnonzero(g0_present)
    stuff_vals = stuff_vals[stuff_vals != VOID]
    # Pred layer 0 as compact indices, its void pixels on an extra index.
    p_uniq, p_idx, p_cnt = masks_lib.compact_ids(pred.layer0)
    p_keep = p_uniq != panoptic_fusion.VOID_LABEL
    n_p0 = p_uniq.size
    # Pair counts of layer 0 x layer 0.
    l00 = np.bincount(g0.ravel() * n_p0 + p_idx.ravel(),
                      minlength=(outside + 1) * n_p0).reshape(outside + 1, n_p0)
    gt_crops = [masks_lib.crop_mask(a["mask"]) for a in gt_amodal]
    n_gi, n_pi = len(gt_crops), len(pred.crops)
    # GT layer 0 x predicted instances, GT instances x predicted layer 0.
    g0_x_pi = np.stack([masks_lib.histogram_in_crop(g0, c, outside + 1)
                        for c in pred.crops], 1) if n_pi else np.zeros((outside + 1, 0))
    gi_x_p0 = np.stack([masks_lib.histogram_in_crop(p_idx, c, n_p0)
                        for c in gt_crops], 0) if n_gi else np.zeros((0, n_p0))
    gi_x_pi = masks_lib.pairwise_intersections(gt_crops, pred.crops)
    # Assemble [GT segments (stuff, then instances)] x [pred segments (layer 0, inst)].
    p0_cols = np.flatnonzero(p_keep)
    inter = np.zeros((stuff_vals.size + n_gi, p0_cols.size + n_pi), np.int64)
    inter[:stuff_vals.size, :p0_cols.size] = l00[stuff_vals][:, p0_cols]
    inter[:stuff_vals.size, p0_cols.size:] = g0_x_pi[stuff_vals]
    inter[stuff_vals.size:, :p0_cols.size] = gi_x_p0[:, p0_cols]
    inter[stuff_vals.size:, p0_cols.size:] = gi_x_pi
    void_inter = np.concatenate([l00[VOID, p0_cols], g0_x_pi[VOID]]).astype(np.int64)
    gt_ids = np.concatenate([stuff_vals, [int(a["seg_id"]) for a in gt_amodal]])
    gt_cat = np.concatenate([stuff_vals, [int(a["category_id"]) for a in gt_amodal]])
    gt_area = np.concatenate([g0_present[stuff_vals], [c.area for c in gt_crops]])
    pred_cat = np.concatenate([p_uniq[p0_cols] // labels.LABEL_DIVISOR, pred.categories])
    pred_area = np.concatenate([p_cnt[p0_cols], [c.area for c in pred.crops]])
    self.stats.update(inter, gt_ids.astype(np.int64), gt_cat.astype(np.int64),
                      gt_area.astype(np.int64), np.zeros(gt_ids.size, bool),
                      pred_cat.astype(np.int64), pred_area.astype(np.int64), void_inter,
                      one_to_one=self.one_to_one)

  def merge(self, other: "AmodalPanopticAccumulator") -> None:
    self.stats.merge(other.stats)

  def result(self) -> dict:
    res = self.stats.result()
    res["mAPQ"] = res["All"]["pq"]
    res["mAPQ_undefined"] = res["All"]["n"] == 0
    return res
