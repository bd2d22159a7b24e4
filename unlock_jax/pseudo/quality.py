"""How good are the pseudo-labels? Scores against the hidden ground truth of synthpass.

Adapting costs GPU hours; these numbers say beforehand whether OPLL's labels (or a
variant of them) are worth it. The reference has nothing like this. Every count is an
integer sum, so accumulators filled on different processes merge exactly.

Definitions (per variant, summed over panoramas; ``label`` the pseudo-label, ``gt`` the
GT semantic map, "valid" = ``gt != 255``):

* semantic, over valid pixels only:
    precision_c = #(label = c & gt = c) / #(label = c & gt valid)
    coverage_c  = #(label != 255 & gt = c) / #(gt = c)   (how much of c gets any label)
    precision   = #(label = gt & label != 255) / #(label != 255 & gt valid)
    coverage    = #(label != 255 & gt valid) / #(gt valid)
  ``mean_precision`` / ``mean_coverage`` average the classes whose denominator is > 0.
* instances (predicted modal masks vs GT modal masks, amodal vs GT amodal): one-to-one
  matching per panorama, predictions in descending score (ties: list order), each
  taking the unmatched GT mask of its own class with the highest mask IoU, if that
  IoU >= 0.5 (tested exactly as ``2 * inter >= union``).
    precision = matched / #predictions,  recall = matched / #GT   (also per class)
* pool: an entry (its mask != 0, i.e. 1 and 255 pixels) is correct when it matches a GT
  amodal mask of its class at IoU >= 0.5, one-to-one within the panorama, entries in
  pool order.  pool precision = correct / #entries; pool size = #entries.

An empty denominator gives NaN in ``result()`` and "-" in ``format_table``. A variant
without a part (say no ``"pool"``) counts nothing for it.
"""
from __future__ import annotations

import math

import numpy as np

from unlock_jax.data import labels

IOU = 0.5
_N = labels.NUM_CLASSES
_T = labels.NUM_THINGS
_PARTS = ("modal", "amodal")


def _zeros() -> dict[str, np.ndarray]:
  z = {"images": np.zeros(1, np.int64),
       # valid, labelled, correct pixels
       "sem_total": np.zeros(3, np.int64)}
  for k in ("sem_tp", "sem_labelled", "sem_covered", "sem_gt"):
    z[k] = np.zeros(_N, np.int64)
  for part in _PARTS:
    for k in ("pred", "gt", "matched"):
      z[f"{part}_{k}"] = np.zeros(_T, np.int64)
  z["pool_size"] = np.zeros(_T, np.int64)
  z["pool_matched"] = np.zeros(_T, np.int64)
  return z


def _thing_index(classes) -> np.ndarray:
  c = np.asarray(classes, np.int64).reshape(-1)
  if c.size and not labels.is_thing(c).all():
    raise ValueError(f"instance classes must be thing ids 11..17, got {sorted(set(c.tolist()))}")
  return c - labels.FIRST_THING


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if rows.size == 0:
    return (0, 0, 0, 0)
  return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def match(pred_masks, pred_classes, gt_masks, gt_classes, order=None) -> np.ndarray:
  """GT index matched to each prediction (-1: none), one-to-one at IoU >= 0.5.

  Predictions are visited in ``order`` (default: list order); each takes the
  unmatched same-class GT mask of highest IoU (ties: first GT). Masks are compared
  as ``!= 0``; intersections are counted only inside the two masks' common extent.
  """
  pred = [np.asarray(m) != 0 for m in pred_masks]
  gt = [np.asarray(m) != 0 for m in gt_masks]
  pc, gc = np.asarray(pred_classes).reshape(-1), np.asarray(gt_classes).reshape(-1)
  if len(pred) != pc.size or len(gt) != gc.size:
    raise ValueError("masks and classes differ in length")
  if len({m.shape for m in pred + gt}) > 1:
    raise ValueError(f"masks differ in shape: {sorted({m.shape for m in pred + gt})}")
  p_ext, g_ext = [_extent(m) for m in pred], [_extent(m) for m in gt]
  p_area, g_area = [int(m.sum()) for m in pred], [int(m.sum()) for m in gt]
  out = np.full(len(pred), -1, np.int64)
  taken = np.zeros(len(gt), bool)
  for i in (range(len(pred)) if order is None else order):
    best, best_iou = -1, -1.0
    for j in range(len(gt)):
      if taken[j] or gc[j] != pc[i]:
        continue
      y0, x0 = max(p_ext[i][0], g_ext[j][0]), max(p_ext[i][2], g_ext[j][2])
      y1, x1 = min(p_ext[i][1], g_ext[j][1]), min(p_ext[i][3], g_ext[j][3])
      inter = int((pred[i][y0:y1, x0:x1] & gt[j][y0:y1, x0:x1]).sum()) if y1 > y0 and x1 > x0 else 0
      union = p_area[i] + g_area[j] - inter
      if union == 0 or 2 * inter < union:  # IoU < 0.5, exactly
        continue
      if inter / union > best_iou:
        best, best_iou = j, inter / union
    if best >= 0:
      out[i], taken[best] = best, True
  return out


def _ratio(num, den) -> float:
  return float(num) / float(den) if den else math.nan


def _mean(values) -> float:
  v = [x for x in values if not math.isnan(x)]
  return sum(v) / len(v) if v else math.nan


class QualityAccumulator:
  """Integer counts per named variant; ``add`` one panorama at a time, ``merge`` shards."""

  def __init__(self):
    self.counts: dict[str, dict[str, np.ndarray]] = {}

  def add(self, gt: dict, variants: dict) -> None:
    """Counts one panorama: ``gt`` as ``blendpass.Reader(..., hidden_gt=True).load``,
    ``variants`` name -> pseudo-label dict (``semantic``, ``modal``, ``amodal``, ``pool``)."""
    gt_sem = np.asarray(gt["semantic"])
    gt_inst = {part: ([a["mask"] for a in gt[part]],
                      np.array([int(a["category_id"]) for a in gt[part]], np.int64))
               for part in _PARTS}
    for name, v in variants.items():
      c = self.counts.setdefault(name, _zeros())
      c["images"] += 1
      if v.get("semantic") is not None:
        self._add_semantic(c, np.asarray(v["semantic"]), gt_sem)
      for part in _PARTS:
        if v.get(part) is not None:
          self._add_instances(c, part, v[part], *gt_inst[part])
      if v.get("pool") is not None:
        self._add_pool(c, v["pool"], *gt_inst["amodal"])

  @staticmethod
  def _add_semantic(c, label, gt_sem):
    if label.shape != gt_sem.shape:
      raise ValueError(f"semantic pseudo-label {label.shape} vs ground truth {gt_sem.shape}")
    valid = gt_sem != labels.IGNORE
    g, l = gt_sem[valid].astype(np.int64), label[valid].astype(np.int64)
    has = l != labels.IGNORE
    right = has & (l == g)
    count = lambda x: np.bincount(x, minlength=256)[:_N]
    c["sem_gt"] += count(g)
    c["sem_covered"] += count(g[has])
    c["sem_labelled"] += count(l[has])
    c["sem_tp"] += count(g[right])
    c["sem_total"] += [g.size, int(has.sum()), int(right.sum())]

  @staticmethod
  def _add_instances(c, part, pred, gt_masks, gt_classes):
    classes = _thing_index(pred["classes"])
    scores = np.asarray(pred["scores"], np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    got = match(pred["masks"], classes, gt_masks, _thing_index(gt_classes), order)
    c[f"{part}_pred"] += np.bincount(classes, minlength=_T)
    c[f"{part}_gt"] += np.bincount(_thing_index(gt_classes), minlength=_T)
    c[f"{part}_matched"] += np.bincount(classes[got >= 0], minlength=_T)

  @staticmethod
  def _add_pool(c, pool, gt_masks, gt_classes):
    classes = _thing_index([e["class_id"] for e in pool])
    got = match([e["mask"] for e in pool], classes, gt_masks, _thing_index(gt_classes))
    c["pool_size"] += np.bincount(classes, minlength=_T)
    c["pool_matched"] += np.bincount(classes[got >= 0], minlength=_T)

  def merge(self, other: "QualityAccumulator") -> None:
    """Adds ``other``'s counts (exact: integer sums)."""
    for name, oc in other.counts.items():
      c = self.counts.setdefault(name, _zeros())
      for k, arr in oc.items():
        c[k] += arr

  def result(self) -> dict:
    """JSON-able ``{"variants": {name: {"images", "semantic", "modal", "amodal", "pool"}}}``."""
    return {"variants": {name: _variant_result(c) for name, c in self.counts.items()}}


def _variant_result(c) -> dict:
  per = {}
  for k, name in enumerate(labels.CLASS_NAMES):
    per[name] = {"precision": _ratio(c["sem_tp"][k], c["sem_labelled"][k]),
                 "coverage": _ratio(c["sem_covered"][k], c["sem_gt"][k]),
                 "labelled": int(c["sem_labelled"][k]), "gt_pixels": int(c["sem_gt"][k])}
  valid, labelled, correct = (int(x) for x in c["sem_total"])
  out = {"images": int(c["images"][0]),
         "semantic": {"precision": _ratio(correct, labelled), "coverage": _ratio(labelled, valid),
                      "mean_precision": _mean(p["precision"] for p in per.values()),
                      "mean_coverage": _mean(p["coverage"] for p in per.values()),
                      "valid_pixels": valid, "labelled_pixels": labelled, "per_class": per}}
  things = labels.CLASS_NAMES[labels.FIRST_THING:]
  for part in _PARTS:
    n_pred, n_gt, n_ok = (c[f"{part}_{k}"] for k in ("pred", "gt", "matched"))
    out[part] = {
        "precision": _ratio(n_ok.sum(), n_pred.sum()), "recall": _ratio(n_ok.sum(), n_gt.sum()),
        "num_pred": int(n_pred.sum()), "num_gt": int(n_gt.sum()), "num_matched": int(n_ok.sum()),
        "per_class": {name: {"precision": _ratio(n_ok[k], n_pred[k]),
                             "recall": _ratio(n_ok[k], n_gt[k]), "num_pred": int(n_pred[k]),
                             "num_gt": int(n_gt[k]), "num_matched": int(n_ok[k])}
                      for k, name in enumerate(things)}}
  size, ok = c["pool_size"], c["pool_matched"]
  out["pool"] = {"precision": _ratio(ok.sum(), size.sum()), "size": int(size.sum()),
                 "num_matched": int(ok.sum()),
                 "per_class": {name: {"precision": _ratio(ok[k], size[k]), "size": int(size[k]),
                                      "num_matched": int(ok[k])}
                               for k, name in enumerate(things)}}
  return out


def scalars(result: dict) -> dict[str, float]:
  """Flat ``"<variant>/<metric>"`` floats for TensorBoard (NaN where undefined)."""
  out = {}
  for name, r in result["variants"].items():
    s = r["semantic"]
    for k in ("precision", "coverage", "mean_precision", "mean_coverage"):
      out[f"{name}/semantic_{k}"] = float(s[k])
    for part in _PARTS:
      out[f"{name}/{part}_precision"] = float(r[part]["precision"])
      out[f"{name}/{part}_recall"] = float(r[part]["recall"])
    out[f"{name}/pool_precision"] = float(r["pool"]["precision"])
    out[f"{name}/pool_size"] = float(r["pool"]["size"])
  return out


def _pct(x: float) -> str:
  return "-" if math.isnan(x) else f"{100 * x:.1f}"


def format_table(result: dict) -> str:
  """Headline table (one row per variant, percentages) and per-class semantic P / cov
  (one row per class, two columns per variant)."""
  head = ("variant", "imgs", "semP", "semCov", "mP", "mCov", "modP", "modR", "amoP", "amoR",
          "poolP", "pool")
  names = list(result["variants"])
  wn = max([len(head[0])] + [len(n) for n in names])
  fmt = f"{{:<{wn}}}" + " {:>6}" * (len(head) - 1)
  lines = [fmt.format(*head)]
  for name in names:
    r = result["variants"][name]
    s = r["semantic"]
    lines.append(fmt.format(
        name, r["images"], _pct(s["precision"]), _pct(s["coverage"]), _pct(s["mean_precision"]),
        _pct(s["mean_coverage"]), _pct(r["modal"]["precision"]), _pct(r["modal"]["recall"]),
        _pct(r["amodal"]["precision"]), _pct(r["amodal"]["recall"]),
        _pct(r["pool"]["precision"]), r["pool"]["size"]))
  if names:
    wc = max(len(n) for n in labels.CLASS_NAMES)
    wv = max(13, *(len(n) for n in names))
    lines += ["", f"{'semantic':<{wc}}" + "".join(f" {n:>{wv}}" for n in names),
              f"{'(P / coverage)':<{wc}}" + f" {'P     cov':>{wv}}" * len(names)]
    for cls in labels.CLASS_NAMES:
      cells = []
      for name in names:
        p = result["variants"][name]["semantic"]["per_class"][cls]
        cells.append(f"{_pct(p['precision']):>6} {_pct(p['coverage']):>6}")
      lines.append(f"{cls:<{wc}}" + "".join(f" {x:>{wv}}" for x in cells))
  return "\n".join(lines)
