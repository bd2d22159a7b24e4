"""Pseudo-label quality: hand-computed semantic precision/coverage, one-to-one instance
matching at IoU 0.5, pool precision, exact merging and NaN for empty denominators."""
import json
import math

import numpy as np

from unlock_jax.pseudo import quality

CAR, TRUCK, PED = 13, 14, 11


def _gt(semantic, modal=(), amodal=()):
  return {"semantic": np.asarray(semantic, np.uint8),
          "modal": [dict(mask=np.asarray(m, np.uint8), category_id=c) for c, m in modal],
          "amodal": [dict(mask=np.asarray(m, np.uint8), category_id=c) for c, m in amodal]}


def _inst(items):
  """items: (class, score, mask) -> the variant's instance dict."""
  shape = np.shape(items[0][2]) if items else (1, 1)
  return {"masks": np.array([m for _, _, m in items], bool).reshape(-1, *shape),
          "classes": np.array([c for c, _, _ in items], np.int32),
          "scores": np.array([s for _, s, _ in items], np.float32)}


def _strip(lo, hi, w=20):
  """A 1 x w mask with columns lo..hi-1 set."""
  m = np.zeros((1, w), np.uint8)
  m[0, lo:hi] = 1
  return m


def _result(gt, variants):
  acc = quality.QualityAccumulator()
  acc.add(gt, variants)
  return acc.result()


def test_semantic_precision_and_coverage_by_hand():
  gt = [[0, 0, 0, 2],
        [0, 2, 2, 255],
        [13, 13, 255, 255]]
  label = [[0, 0, 255, 0],
           [2, 2, 255, 2],
           [13, 255, 0, 255]]
  s = _result(_gt(gt), {"opll": {"semantic": np.array(label, np.uint8)}})
  s = s["variants"]["opll"]["semantic"]
  # Valid GT pixels: road 4 + building 3 + car 2 = 9.
  # Correct: (0,0),(0,1),(1,1),(2,0) -> 4.
  # labelled & valid: (0,0),(0,1),(0,3),(1,0),(1,1),(2,0) -> 6 ((1,2) and (2,1) are 255).
  assert s["labelled_pixels"] == 6
  assert s["valid_pixels"] == 9
  assert math.isclose(s["precision"], 4 / 6)
  assert math.isclose(s["coverage"], 6 / 9)
  pc = s["per_class"]
  # road: labelled 0 on valid: (0,0),(0,1) right, (0,3) on building -> 2/3.
  # road coverage: road GT (0,0),(0,1),(0,2),(1,0) -> labelled (0,0),(0,1),(1,0) -> 3/4.
  assert math.isclose(pc["road"]["precision"], 2 / 3)
  assert math.isclose(pc["road"]["coverage"], 3 / 4)
  # building: labelled 2 on valid: (1,0) road, (1,1) right -> 1/2 ((1,3) is GT void).
  # building coverage: GT (0,3),(1,1),(1,2) -> labelled (0,3),(1,1) -> 2/3.
  assert math.isclose(pc["building"]["precision"], 1 / 2)
  assert math.isclose(pc["building"]["coverage"], 2 / 3)
  # car: labelled 13 at (2,0) right -> 1/1; GT (2,0),(2,1) -> 1/2.
  assert pc["car"]["precision"] == 1.0
  assert math.isclose(pc["car"]["coverage"], 1 / 2)
  assert math.isnan(pc["sky"]["precision"]) and math.isnan(pc["sky"]["coverage"])
  assert math.isclose(s["mean_precision"], (2 / 3 + 1 / 2 + 1) / 3)
  assert math.isclose(s["mean_coverage"], (3 / 4 + 2 / 3 + 1 / 2) / 3)


def test_duplicate_prediction_matches_once():
  g = _strip(0, 10)
  r = _result(_gt(np.zeros((1, 20)), modal=[(CAR, g)]),
              {"v": {"modal": _inst([(CAR, 0.9, g), (CAR, 0.8, g)])}})
  m = r["variants"]["v"]["modal"]
  assert (m["num_pred"], m["num_gt"], m["num_matched"]) == (2, 1, 1)
  assert m["precision"] == 0.5 and m["recall"] == 1.0
  assert m["per_class"]["car"]["num_matched"] == 1
  assert math.isnan(m["per_class"]["truck"]["precision"])


def test_class_mismatch_does_not_match():
  g = _strip(0, 10)
  r = _result(_gt(np.zeros((1, 20)), amodal=[(CAR, g)]),
              {"v": {"amodal": _inst([(TRUCK, 0.9, g)])}})
  a = r["variants"]["v"]["amodal"]
  assert a["precision"] == 0.0 and a["recall"] == 0.0
  assert a["per_class"]["truck"]["precision"] == 0.0
  assert a["per_class"]["car"]["recall"] == 0.0
  assert math.isnan(a["per_class"]["car"]["precision"])


def test_iou_exactly_half_counts_just_below_does_not():
  gt_mask = np.zeros((10, 20), np.uint8)
  gt_mask[:, :10] = 1  # 100 px
  half = np.zeros_like(gt_mask)
  half[:5, :10] = 1  # inter 50, union 100 -> IoU 0.5
  below = half.copy()
  below[0, 15] = 1  # inter 50, union 101
  gt = _gt(np.zeros((10, 20)), modal=[(CAR, gt_mask)])
  assert _result(gt, {"v": {"modal": _inst([(CAR, 0.9, half)])}})["variants"]["v"]["modal"][
      "num_matched"] == 1
  assert _result(gt, {"v": {"modal": _inst([(CAR, 0.9, below)])}})["variants"]["v"]["modal"][
      "num_matched"] == 0


def test_greedy_in_descending_score_takes_best_iou():
  # GT g1 = cols 0..9, g2 = cols 4..13 (amodal GT may overlap).
  # p1 = g1: IoU(g1) 1, IoU(g2) 6/14.  p2 = cols 1..10: IoU(g1) 9/11, IoU(g2) 7/13.
  g1, g2, p1, p2 = _strip(0, 10), _strip(4, 14), _strip(0, 10), _strip(1, 11)
  gt = _gt(np.zeros((1, 20)), amodal=[(CAR, g1), (CAR, g2)])
  # p2 first: it takes g1 (its best), leaving p1 only g2 at 6/14 < 0.5 -> one match.
  first = _result(gt, {"v": {"amodal": _inst([(CAR, 0.6, p1), (CAR, 0.9, p2)])}})
  assert first["variants"]["v"]["amodal"]["num_matched"] == 1
  # p1 first: p1 - g1, then p2 - g2 (7/13 >= 0.5) -> two matches.
  second = _result(gt, {"v": {"amodal": _inst([(CAR, 0.9, p1), (CAR, 0.6, p2)])}})
  assert second["variants"]["v"]["amodal"]["num_matched"] == 2
  np.testing.assert_array_equal(
      quality.match([p1, p2], [CAR, CAR], [g1, g2], [CAR, CAR], order=[1, 0]), [-1, 0])


def test_pool_precision_one_to_one_with_255_pixels():
  g = _strip(0, 10)
  shared = g * 1
  shared[0, 8:10] = 255  # non-zero: still part of the entry
  pool = [dict(class_id=CAR, mask=shared), dict(class_id=CAR, mask=g),
          dict(class_id=PED, mask=g), dict(class_id=CAR, mask=_strip(12, 20))]
  r = _result(_gt(np.zeros((1, 20)), amodal=[(CAR, g)]), {"v": {"pool": pool}})
  p = r["variants"]["v"]["pool"]
  assert p["size"] == 4 and p["num_matched"] == 1 and p["precision"] == 0.25
  assert p["per_class"]["car"]["size"] == 3
  assert math.isclose(p["per_class"]["car"]["precision"], 1 / 3)
  assert p["per_class"]["pedestrians"]["precision"] == 0.0
  # The 255 pixels count as mask: the 1 pixels alone equal the GT (IoU 1), with the 255
  # tail the entry has 20 pixels, IoU 9/20 < 0.5.
  tail = _strip(0, 20) * 255
  tail[0, :9] = 1
  r = _result(_gt(np.zeros((1, 20)), amodal=[(CAR, _strip(0, 9))]),
              {"v": {"pool": [dict(class_id=CAR, mask=tail)]}})
  assert r["variants"]["v"]["pool"]["num_matched"] == 0


def test_merge_equals_one_accumulator():
  rng = np.random.default_rng(0)
  pairs = []
  for _ in range(4):
    gt_sem = rng.choice([0, 2, 13, 255], size=(6, 8)).astype(np.uint8)
    label = rng.choice([0, 2, 13, 255], size=(6, 8)).astype(np.uint8)
    car = (gt_sem == 13).astype(np.uint8)
    pred = rng.random((6, 8)) < 0.5
    gt = _gt(gt_sem, modal=[(CAR, car)], amodal=[(CAR, car)])
    v = {"semantic": label, "modal": _inst([(CAR, 0.7, car.astype(bool)), (CAR, 0.5, pred)]),
         "amodal": _inst([(CAR, 0.4, pred)]), "pool": [dict(class_id=CAR, mask=car)]}
    pairs.append((gt, {"opll": v, "raw": {"semantic": label}}))
  one, a, b = quality.QualityAccumulator(), quality.QualityAccumulator(), \
      quality.QualityAccumulator()
  for i, (gt, vs) in enumerate(pairs):
    one.add(gt, vs)
    (a if i % 2 else b).add(gt, vs)
  a.merge(b)
  assert json.dumps(a.result(), sort_keys=True) == json.dumps(one.result(), sort_keys=True)
  # Independent oracle for the merged totals.
  valid = sum(int((gt["semantic"] != 255).sum()) for gt, _ in pairs)
  right = sum(int(((vs["raw"]["semantic"] == gt["semantic"]) & (gt["semantic"] != 255)).sum())
              for gt, vs in pairs)
  labelled = sum(int(((vs["raw"]["semantic"] != 255) & (gt["semantic"] != 255)).sum())
                 for gt, vs in pairs)
  s = a.result()["variants"]["raw"]["semantic"]
  assert math.isclose(s["coverage"], labelled / valid)
  assert math.isclose(s["precision"], right / labelled)
  assert a.result()["variants"]["opll"]["images"] == 4


def test_empty_gives_nan_and_dash():
  gt = _gt(np.full((2, 3), 255))
  v = {"semantic": np.full((2, 3), 255, np.uint8), "modal": _inst([]), "amodal": _inst([]),
       "pool": []}
  acc = quality.QualityAccumulator()
  acc.add(gt, {"opll": v})
  r = acc.result()
  json.dumps(r)
  sc = quality.scalars(r)
  assert set(sc) == {f"opll/{k}" for k in (
      "semantic_precision", "semantic_coverage", "semantic_mean_precision",
      "semantic_mean_coverage", "modal_precision", "modal_recall", "amodal_precision",
      "amodal_recall", "pool_precision", "pool_size")}
  assert sc["opll/pool_size"] == 0.0
  assert all(math.isnan(x) for k, x in sc.items() if k != "opll/pool_size")
  table = quality.format_table(r)
  row = table.splitlines()[1].split()
  assert row[0] == "opll" and row[1] == "1" and row[2:-1] == ["-"] * 9 and row[-1] == "0"
  assert quality.format_table(quality.QualityAccumulator().result()).split() == [
      "variant", "imgs", "semP", "semCov", "mP", "mCov", "modP", "modR", "amoP", "amoR",
      "poolP", "pool"]


def test_table_rows_hold_the_numbers():
  gt = _gt([[0, 0, 13, 13]])
  r = _result(gt, {"opll": {"semantic": np.array([[0, 255, 13, 0]], np.uint8)}})
  lines = quality.format_table(r).splitlines()
  # precision 2/3, coverage 3/4; road P 1/2 cov 1/2, car P 1/1 cov 2/2 -> means 3/4, 3/4.
  assert lines[1].split()[:6] == ["opll", "1", "66.7", "75.0", "75.0", "75.0"]
  road = next(l for l in lines if l.startswith("road"))
  assert road.split() == ["road", "50.0", "50.0"]
