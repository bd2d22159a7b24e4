"""mPQ against cityscapesscripts' panoptic evaluation, and the modal fusion against a
literal transliteration of the reference's torch code.

cityscapesscripts uses 0 as VOID while our GT uses 255 (and 0 is road), so every id
written for it is shifted: ``255 -> 0`` and ``id -> id + 1`` otherwise (an injective map
that keeps ids below 2**24). Categories, crowd handling and the category average are the
same in the library and in the reference copy (``evalPanopticSemanticLabeling.py``).
"""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.support import synthetic
from unlock_jax.data import labels
from unlock_jax.evaluation import panoptic_fusion as pf
from unlock_jax.evaluation import pq

cs_pq = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")


def _shift(ids):
  ids = np.asarray(ids, np.int64)
  return np.where(ids == labels.IGNORE, 0, ids + 1)


def _cityscapes_pq(tmp_path, pairs):
  """Runs the library's per-image PQ on PNG files with shifted ids."""
  categories = {c["id"]: c for c in pq.default_categories()}
  (tmp_path / "gt").mkdir()
  (tmp_path / "pred").mkdir()
  annotation_set = []
  for i, (gt_pan, segments, pred_pan) in enumerate(pairs):
    name = f"img{i}.png"
    Image.fromarray(labels.id2rgb(_shift(gt_pan))).save(tmp_path / "gt" / name)
    Image.fromarray(labels.id2rgb(_shift(pred_pan))).save(tmp_path / "pred" / name)
    gt_ann = {"image_id": i, "file_name": name, "segments_info": [
        dict(s, id=int(_shift(s["id"]))) for s in segments]}
    pred_ann = {"image_id": i, "file_name": name, "segments_info": [
        {"id": int(_shift(v)), "category_id": int(v) // labels.LABEL_DIVISOR}
        for v in np.unique(pred_pan)]}
    annotation_set.append(json.loads(json.dumps((gt_ann, pred_ann))))
  with contextlib.redirect_stdout(io.StringIO()):
    stat = cs_pq.pq_compute_single_core(0, annotation_set, str(tmp_path / "gt"),
                                        str(tmp_path / "pred"), categories)
  return stat, cs_pq.average_pq(stat, categories)


def test_pq_matches_cityscapesscripts(tmp_path):
  rng = np.random.default_rng(0)
  acc = pq.PanopticAccumulator()
  pairs = []
  for _ in range(6):
    gt = synthetic.make_gt(rng, n_things=8)
    pred = synthetic.make_prediction(rng, gt)
    dets = pf.prepare_detections(pred["modal"])
    pred_pan = pf.modal_panoptic(pred["sem"], dets, tau_m=0.3, stuff_area=64)
    # The GT lists one segment that is absent from its PNG (an FN by its JSON area).
    segments = gt["segments"] + [{"id": 17999, "category_id": 17, "iscrowd": 0,
                                  "area": 50, "amodal_id": 0}]
    pairs.append((gt["panoptic"], segments, pred_pan))
    acc.add(gt["panoptic"], segments, pred_pan)
  stat, res = _cityscapes_pq(tmp_path, pairs)
  ours = acc.result()
  for cat in range(labels.NUM_CLASSES):
    row = ours["per_class"][cat]
    ref = stat.pq_per_cat[cat]
    assert (row["tp"], row["fp"], row["fn"]) == (ref.tp, ref.fp, ref.fn), cat
    assert row["pq"] == pytest.approx(100 * res["per_class"][cat]["pq"], abs=1e-9)
  for name in ("All", "Things", "Stuff"):
    assert ours[name]["n"] == res[name]["n"]
    assert ours[name]["pq"] == pytest.approx(100 * res[name]["pq"], abs=1e-9)
    assert ours[name]["sq"] == pytest.approx(100 * res[name]["sq"], abs=1e-9)
    assert ours[name]["rq"] == pytest.approx(100 * res[name]["rq"], abs=1e-9)
  assert ours["mPQ"] == pytest.approx(100 * res["All"]["pq"], abs=1e-9)
  assert sum(r["tp"] for r in ours["per_class"].values()) > 10  # non-trivial


def test_crowd_and_void_are_ignored_for_false_positives():
  """A predicted car lying mostly on a car crowd region (or on VOID) is not an FP;
  the same prediction on road is one."""
  gt = np.zeros((20, 40), np.int32)
  gt[0:10, 0:20] = 13          # car crowd
  gt[10:20, 0:20] = 255        # void
  segments = [{"id": 0, "category_id": 0, "iscrowd": 0, "area": int((gt == 0).sum())},
              {"id": 13, "category_id": 13, "iscrowd": 1, "area": 200}]
  for region, fp in (((slice(0, 10), slice(0, 12)), 0), ((slice(10, 20), slice(0, 12)), 0),
                     ((slice(0, 10), slice(22, 34)), 1)):
    pred = np.zeros_like(gt)
    pred[region] = 13001
    acc = pq.PanopticAccumulator()
    acc.add(gt, segments, pred)
    assert acc.result()["per_class"][13]["fp"] == fp


def _reference_merge(sem, ins, stuff_area):
  """Transliteration of ``merge_semantic_and_instance`` + the evaluator's void->0."""
  pan = np.full(sem.shape, 255000, np.int64)
  thing_seg = ins > 0
  sem_thing = np.isin(sem, labels.THING_IDS)
  tracker = {}
  for ins_id in np.unique(ins):
    if ins_id == 0:
      continue
    tm = (ins == ins_id) & sem_thing
    if not tm.any():
      continue
    vals, counts = np.unique(sem[tm], return_counts=True)
    cls = int(vals[np.argmax(counts)])
    new = tracker.get(cls, 1)
    tracker[cls] = new + 1
    pan[tm] = cls * 1000 + new
  for cls in np.unique(sem):
    if cls in labels.THING_IDS:
      continue
    sm = (sem == cls) & ~thing_seg
    if sm.sum() >= stuff_area:
      pan[sm] = cls * 1000
  pan[pan == 255000] = 0
  return pan


def _reference_instance_map(dets, tau):
  """Transliteration of ``get_blendpass_instance_format_for_maskrcnn``: per class, in
  descending score, every detection advances the counter."""
  ins = np.zeros(dets["masks"].shape[1:], np.int64)
  for c in range(labels.NUM_THINGS):
    rows = [i for i in np.flatnonzero(dets["valid"]) if dets["classes"][i] == c]
    rows.sort(key=lambda i: -float(dets["scores"][i]))
    for k, i in enumerate(rows, start=1):
      if dets["scores"][i] >= tau:
        ins[dets["masks"][i]] = (11 + c) * 1000 + k
  return ins


def test_modal_fusion_matches_reference_transliteration():
  rng = np.random.default_rng(3)
  for _ in range(5):
    gt = synthetic.make_gt(rng, n_things=10)
    pred = synthetic.make_prediction(rng, gt, num_rows=32)
    dets = pf.prepare_detections(pred["modal"])
    ins = pf.modal_instance_map(dets, 0.4)
    np.testing.assert_array_equal(ins, _reference_instance_map(pred["modal"], 0.4))
    pan = pf.merge_semantic_and_instance(pred["sem"], ins, stuff_area=100)
    np.testing.assert_array_equal(pan, _reference_merge(pred["sem"], ins, 100))


def test_lower_score_mask_overwrites_higher_score_mask():
  """QUIRK: within a class the later (lower-score) detection wins overlapping pixels."""
  masks = np.zeros((2, 8, 8), bool)
  masks[0, 0:6, 0:6] = True
  masks[1, 3:8, 3:8] = True
  dets = pf.prepare_detections({"masks": masks, "scores": np.array([0.6, 0.9], np.float32),
                                "classes": np.array([2, 2]), "valid": np.ones(2, bool),
                                "boxes": np.zeros((2, 4))})
  ins = pf.modal_instance_map(dets, 0.5)
  assert ins[4, 4] == 13002  # the 0.6 detection (k=2) painted last
  assert ins[0, 0] == 13002 and ins[7, 7] == 13001
