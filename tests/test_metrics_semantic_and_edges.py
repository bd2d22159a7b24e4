"""mIoU against a plain np.histogram2d confusion matrix, and the metrics' edge cases
(absent classes, no detections, all-ignore images, no GT anywhere), merge, JSON output."""
import json

import numpy as np
import pytest

from tests.support import synthetic
from unlock_jax.data import labels
from unlock_jax.evaluation import instance_ap
from unlock_jax.evaluation import panoptic_fusion
from unlock_jax.evaluation import report
from unlock_jax.evaluation import semantic


def _histogram_miou(preds, gts, n=labels.NUM_CLASSES):
  conf = np.zeros((n, n))
  for p, g in zip(preds, gts):
    keep = g != 255
    conf += np.histogram2d(p[keep], g[keep], bins=n, range=[[0, n], [0, n]])[0]
  tp = np.diag(conf)
  gt_c, pred_c = conf.sum(0), conf.sum(1)
  union = gt_c + pred_c - tp
  iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
  return 100 * iou.sum() / (union > 0).sum(), 100 * iou


def test_miou_matches_histogram2d():
  rng = np.random.default_rng(0)
  acc = semantic.SemanticAccumulator()
  preds, gts = [], []
  for _ in range(4):
    gt = rng.integers(0, 12, size=(32, 64)).astype(np.uint8)  # classes 12..17 absent
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, np.minimum(gt, 15),
                    rng.integers(0, 16, size=gt.shape))
    acc.add(pred, gt)
    preds.append(pred)
    gts.append(gt)
  miou, iou = _histogram_miou(preds, gts)
  res = acc.result()
  assert res["mIoU"] == pytest.approx(miou, abs=1e-9)
  np.testing.assert_allclose(res["class_iou"], iou, atol=1e-9)
  # Classes 12..15 are predicted but never in GT: they count 0 in the mean.
  assert res["class_counted"][12:16].all() and not res["class_counted"][16:].any()


def test_merge_equals_single_accumulator():
  rng = np.random.default_rng(1)
  pairs = [(synthetic.make_gt(rng), None) for _ in range(4)]
  pairs = [(g, synthetic.make_prediction(rng, g)) for g, _ in pairs]
  whole = report.OassMetrics(0.3, 0.3, stuff_area=100)
  part_a = report.OassMetrics(0.3, 0.3, stuff_area=100)
  part_b = report.OassMetrics(0.3, 0.3, stuff_area=100)
  for i, (g, p) in enumerate(pairs):
    whole.add(g, p)
    (part_a if i % 2 else part_b).add(g, p)
  part_a.merge(part_b)
  a, b = whole.result(), part_a.result()
  for key in report.HEADLINE:
    assert a[key] == pytest.approx(b[key], abs=1e-9)
  assert b["num_images"] == 4


def _empty_dets(h, w, rows=4):
  return {"masks": np.zeros((rows, h, w), bool), "scores": np.zeros(rows, np.float32),
          "classes": np.zeros(rows, np.int32), "valid": np.zeros(rows, bool),
          "boxes": np.zeros((rows, 4), np.float32)}


def test_image_without_detections_and_all_ignore_image():
  rng = np.random.default_rng(2)
  gt = synthetic.make_gt(rng, n_things=5)
  h, w = gt["semantic"].shape
  m = report.OassMetrics(stuff_area=100)
  m.add(gt, {"sem": gt["semantic"].astype(np.int32).clip(0, 17),
             "modal": _empty_dets(h, w), "amodal": _empty_dets(h, w)})
  ignore_gt = {"semantic": np.full((h, w), 255, np.uint8),
               "panoptic": np.full((h, w), 255, np.int32), "segments": [],
               "instance_ids": np.full((h, w), 255, np.int32), "modal": [], "amodal": []}
  m.add(ignore_gt, {"sem": np.zeros((h, w), np.int32), "modal": _empty_dets(h, w),
                    "amodal": _empty_dets(h, w)})
  res = m.result()
  assert all(np.isfinite(res[k]) for k in report.HEADLINE)
  assert res["mAP"] == 0.0 and res["mAAP"] == 0.0  # GT exists, nothing detected
  assert not res["undefined"]["mAP"]
  assert res["mIoU"] > 0


def test_no_gt_anywhere_gives_zero_headline_with_flag():
  h, w = 16, 32
  m = report.OassMetrics()
  ignore_gt = {"semantic": np.full((h, w), 255, np.uint8),
               "panoptic": np.full((h, w), 255, np.int32), "segments": [],
               "instance_ids": np.full((h, w), 255, np.int32), "modal": [], "amodal": []}
  dets = _empty_dets(h, w)
  dets["valid"][0] = True
  dets["masks"][0, 2:8, 2:8] = True
  dets["scores"][0] = 0.9
  m.add(ignore_gt, {"sem": np.full((h, w), 13, np.int32), "modal": dets, "amodal": dets})
  res = m.result()
  for key in ("mIoU", "mAP", "mAAP"):
    assert res[key] == 0.0 and res["undefined"][key], key
  assert np.isnan(res["details"]["instance"]["ap_table"]).all()
  text = json.dumps(report.to_jsonable(res), allow_nan=False)  # NaN never leaks
  assert '"mAP": 0.0' in text
  assert "mAP" in report.format_table(res)


def test_cityscapes_ap_integration_known_values():
  """Hand-computed values of the reference's step integration."""
  assert instance_ap.cityscapes_ap([0.9], [], 0) == pytest.approx(1.0)
  # FP above the TP: points (p=.5, r=1), (p=0, r=0), (1, 0) -> 0.5 * 0.5.
  assert instance_ap.cityscapes_ap([0.8], [0.9], 0) == pytest.approx(0.25)
  # TP above the FP: the low point gets zero width -> 1.
  assert instance_ap.cityscapes_ap([0.9], [0.8], 0) == pytest.approx(1.0)
  # One of two GTs found, no FP: AP = max recall.
  assert instance_ap.cityscapes_ap([0.7], [], 1) == pytest.approx(0.5)
  assert instance_ap.cityscapes_ap([], [0.3], 2) == 0.0


def test_ap_accepts_raw_detection_dicts():
  rng = np.random.default_rng(4)
  gt = synthetic.make_gt(rng)
  pred = synthetic.make_prediction(rng, gt)
  a, b = instance_ap.InstanceAPAccumulator(True), instance_ap.InstanceAPAccumulator(True)
  a.add(gt, pred["amodal"])
  b.add(gt, panoptic_fusion.prepare_detections(pred["amodal"]))
  np.testing.assert_array_equal(a.ap_table(), b.ap_table())
