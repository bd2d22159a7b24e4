"""mAPQ: hand-built cases with known answers and a literal transliteration of the
reference's layered evaluator (``amodalpanoptic.py`` update +
``evalAmodalPanopticSemanticLabeling.pq_compute_single_core``) and of
``merge_semantic_and_amodal`` run on full HxW layers."""
import numpy as np
import pytest

from tests.support import synthetic
from unlock_jax.data import labels
from unlock_jax.evaluation import panoptic_fusion as pf
from unlock_jax.evaluation import pq

VOID_LABEL = 255000


def _reference_amodal_layers(sem, dets, tau, stuff_area):
  """``get_blendpass_amodal_format_for_maskrcnn`` + ``merge_semantic_and_amodal``."""
  amo = []
  for c in range(labels.NUM_THINGS):
    rows = [i for i in np.flatnonzero(dets["valid"]) if dets["classes"][i] == c]
    rows.sort(key=lambda i: -float(dets["scores"][i]))
    for i in rows:
      if dets["scores"][i] >= tau:
        amo.append(dets["masks"][i].astype(np.int64) * (c * 1000 + len(amo) + 1))
  thing_seg = np.zeros(sem.shape, bool)
  count = np.zeros(sem.shape, np.int64)
  for a in amo:
    thing_seg |= a > 0
    count += a > 0
  overlap = count > 1
  sem_thing = np.isin(sem, labels.THING_IDS)
  layer0 = np.full(sem.shape, VOID_LABEL, np.int64)
  for cls in np.unique(sem):
    if cls in labels.THING_IDS:
      continue
    sm = (sem == cls) & ~thing_seg
    if sm.sum() >= stuff_area:
      layer0[sm] = cls * 1000
  layer0[layer0 == VOID_LABEL] = 0
  layers, tracker = [layer0], {}
  for a in amo:
    tm = (a != 0) & sem_thing
    tcm = tm & ~overlap
    if not tm.any():
      continue
    vals, counts = np.unique(sem[tcm] if tcm.any() else sem[tm], return_counts=True)
    cls = int(vals[np.argmax(counts)])
    new = tracker.get(cls, 1)
    tracker[cls] = new + 1
    layer = np.full(sem.shape, VOID_LABEL, np.int64)
    layer[tm] = cls * 1000 + new
    layers[0][tm] = VOID_LABEL
    layers.append(layer)
  return layers


def _reference_apq_image(pred_layers, gt_sem, gt_amodal, stat):
  """The reference's update() and pq_compute_single_core on one image (dict-based)."""
  pred_segms = {}
  for layer in pred_layers:
    for v, n in zip(*np.unique(layer, return_counts=True)):
      if v != VOID_LABEL:
        pred_segms[int(v)] = {"category_id": int(v) // 1000, "area": int(n)}
  gt0 = gt_sem.astype(np.int64).copy()
  gt_segms = {}
  for v, n in zip(*np.unique(gt_sem, return_counts=True)):
    if v in labels.THING_IDS:
      gt0[gt_sem == v] = VOID_LABEL
      continue
    if v == 255:
      continue
    gt_segms[int(v)] = {"category_id": int(v), "iscrowd": 0, "area": int(n)}
  gt_layers = [gt0]
  for a in gt_amodal:
    gt_segms[a["seg_id"]] = {"category_id": a["category_id"], "iscrowd": 0,
                             "area": int(a["mask"].sum())}
    layer = a["mask"].astype(np.int64) * a["seg_id"]
    layer[layer == 0] = VOID_LABEL
    gt_layers.append(layer)
  gt_pred_map = {}
  for g in gt_layers:
    for p in pred_layers:
      key = g.astype(np.uint64) * 2 ** 24 + p.astype(np.uint64)
      for lab, n in zip(*np.unique(key, return_counts=True)):
        gid, pid = int(lab // 2 ** 24), int(lab % 2 ** 24)
        if gid == VOID_LABEL or pid == VOID_LABEL:
          continue
        gt_pred_map[(gid, pid)] = int(n)
  gt_matched, pred_matched = set(), set()
  for (gid, pid), inter in gt_pred_map.items():
    if gid not in gt_segms or pid not in pred_segms:
      continue
    if gt_segms[gid]["category_id"] != pred_segms[pid]["category_id"]:
      continue
    union = (pred_segms[pid]["area"] + gt_segms[gid]["area"] - inter
             - gt_pred_map.get((255, pid), 0))
    iou = inter / union
    if iou > 0.5:
      s = stat.setdefault(gt_segms[gid]["category_id"], [0.0, 0, 0, 0])
      s[0] += iou
      s[1] += 1
      gt_matched.add(gid)
      pred_matched.add(pid)
  for gid, info in gt_segms.items():
    if gid not in gt_matched:
      stat.setdefault(info["category_id"], [0.0, 0, 0, 0])[3] += 1
  for pid, info in pred_segms.items():
    if pid in pred_matched:
      continue
    if gt_pred_map.get((255, pid), 0) / info["area"] > 0.5:
      continue
    stat.setdefault(info["category_id"], [0.0, 0, 0, 0])[2] += 1


def test_amodal_fusion_matches_reference_transliteration():
  rng = np.random.default_rng(5)
  for _ in range(5):
    gt = synthetic.make_gt(rng, n_things=10)
    pred = synthetic.make_prediction(rng, gt, num_rows=32)
    ours = pf.amodal_panoptic(pred["sem"], pf.prepare_detections(pred["amodal"]), 0.3,
                              stuff_area=100)
    ref = _reference_amodal_layers(pred["sem"], pred["amodal"], 0.3, 100)
    got = ours.layers()
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1])
def test_apq_matches_reference_transliteration(seed):
  rng = np.random.default_rng(seed)
  acc = pq.AmodalPanopticAccumulator()
  stat = {}
  for _ in range(4):
    gt = synthetic.make_gt(rng, n_things=10)
    pred = synthetic.make_prediction(rng, gt, num_rows=32, max_shift=1)
    layered = pf.amodal_panoptic(pred["sem"], pf.prepare_detections(pred["amodal"]), 0.3,
                                 stuff_area=100)
    acc.add(gt["semantic"], gt["amodal"], layered)
    _reference_apq_image(layered.layers(), gt["semantic"], gt["amodal"], stat)
  res = acc.result()
  pqs = []
  for cat in range(labels.NUM_CLASSES):
    iou, tp, fp, fn = stat.get(cat, [0.0, 0, 0, 0])
    row = res["per_class"][cat]
    assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn), cat
    if tp + fp + fn:
      pqs.append(iou / (tp + 0.5 * fp + 0.5 * fn))
  assert res["mAPQ"] == pytest.approx(100 * np.mean(pqs), abs=1e-9)
  assert sum(r["tp"] for r in res["per_class"].values()) > 10


# --- hand-built cases -----------------------------------------------------------------

H, W = 40, 120


def _gt_case():
  """Road everywhere, two cars: car A (rows 10-30, cols 10-40) partly hidden by car B
  (rows 15-35, cols 30-60). Amodal A is its whole rectangle."""
  sem = np.zeros((H, W), np.uint8)
  a = np.zeros((H, W), np.uint8)
  a[10:30, 10:40] = 1
  b = np.zeros((H, W), np.uint8)
  b[15:35, 30:60] = 1
  sem[(a | b) > 0] = 13
  amodal = [{"mask": a, "category_id": 13, "seg_id": 13001},
            {"mask": b, "category_id": 13, "seg_id": 13002}]
  return sem, amodal


def _pred(sem, masks, scores=None, classes=None):
  n = len(masks)
  dets = {"masks": np.stack(masks).astype(bool), "valid": np.ones(n, bool),
          "scores": np.array(scores or [0.9] * n, np.float32),
          "classes": np.array(classes or [2] * n, np.int32), "boxes": np.zeros((n, 4))}
  return pf.amodal_panoptic(sem, pf.prepare_detections(dets), 0.5, stuff_area=10)


def _apq(sem_gt, amodal, pred, one_to_one=False):
  acc = pq.AmodalPanopticAccumulator(one_to_one=one_to_one)
  acc.add(sem_gt, amodal, pred)
  return acc.result()


def test_perfect_prediction_scores_100():
  sem, amodal = _gt_case()
  pred = _pred(sem.astype(np.int32), [a["mask"] for a in amodal])
  assert _apq(sem, amodal, pred)["mAPQ"] == pytest.approx(100.0)


def test_missed_occluded_object_is_one_fn():
  sem, amodal = _gt_case()
  pred = _pred(sem.astype(np.int32), [amodal[1]["mask"]])  # car A not detected
  res = _apq(sem, amodal, pred)
  car = res["per_class"][13]
  assert (car["tp"], car["fp"], car["fn"]) == (1, 0, 1)
  # Road: perfect (its GT excludes car pixels; A's pixels outside B fall to road = 0
  # in the prediction, which costs IoU only): PQ_road = IoU, PQ_car = 1/1.5.
  road_iou = res["per_class"][0]["pq"] / 100
  assert res["mAPQ"] == pytest.approx(100 * (road_iou + 1 / 1.5) / 2)


def test_wrong_amodal_extent_fails_the_match():
  """The occluded car A has 600 amodal px, 450 visible. Predicting its visible part
  only still passes (amodal IoU 450/600); a guess truncated to 300 px sits exactly at
  IoU 0.5, which is not > 0.5: one FP and one FN."""
  sem, amodal = _gt_case()
  visible = amodal[0]["mask"].astype(bool) & ~amodal[1]["mask"].astype(bool)
  visible_small = visible.copy()
  visible_small[:, 25:40] = False  # 300 of 600 px
  pred = _pred(sem.astype(np.int32), [visible_small, amodal[1]["mask"]])
  car = _apq(sem, amodal, pred)["per_class"][13]
  assert (car["tp"], car["fp"], car["fn"]) == (1, 1, 1)
  pred = _pred(sem.astype(np.int32), [visible, amodal[1]["mask"]])
  car = _apq(sem, amodal, pred)["per_class"][13]
  assert (car["tp"], car["fp"], car["fn"]) == (2, 0, 0)
  assert car["sq"] == pytest.approx(100 * (450 / 600 + 1) / 2)


def test_non_one_to_one_matching_quirk():
  """Two GT cars with nearly identical amodal masks and one prediction covering both:
  the reference counts two TPs from one prediction; the published rule counts one TP
  and one FN."""
  sem = np.zeros((H, W), np.uint8)
  a = np.zeros((H, W), np.uint8)
  a[10:30, 10:40] = 1
  b = np.zeros((H, W), np.uint8)
  b[11:30, 10:40] = 1
  sem[a > 0] = 13
  amodal = [{"mask": a, "category_id": 13, "seg_id": 13001},
            {"mask": b, "category_id": 13, "seg_id": 13002}]
  pred = _pred(sem.astype(np.int32), [a])
  quirk = _apq(sem, amodal, pred)["per_class"][13]
  assert (quirk["tp"], quirk["fp"], quirk["fn"]) == (2, 0, 0)
  published = _apq(sem, amodal, pred, one_to_one=True)["per_class"][13]
  assert (published["tp"], published["fp"], published["fn"]) == (1, 0, 1)
  assert published["pq"] == pytest.approx(100 * 1.0 / 1.5)  # the IoU-1 pair is kept
