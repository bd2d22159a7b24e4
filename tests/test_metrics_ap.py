"""mAP / mAAP against the unmodified cityscapesscripts 2.3.0 evaluator and pycocotools.

cityscapesscripts is run step by step (setInstanceLabels, getGtInstances,
matchGtWithPreds, evaluateMatches, computeAverages) on PNG/TXT files in tmp_path, with its
label table swapped for ours and its minimum region size at the reference's 100 px.
Reference modifications and how they are handled here:
* label table / instance-id PNG: ours (id == trainId, 255 = only void) is patched in.
* ``np.in1d`` (removed in numpy 2) is patched to ``np.isin(a, b).ravel()``.
* the reference guards ``cumsum[-1]`` of an empty score list (library raises
  IndexError); every test scene has one unambiguous false positive per class in a free
  strip so that list is never empty, which keeps both code paths identical.
* amodal matching (reference ``evalInstanceAmodalLevelSemanticLabeling.assignGt2Preds``)
  is transliterated below with per-pair ``count_nonzero``; the AP machinery fed with it
  is the library's own ``evaluateMatches``.
"""
import contextlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.support import synthetic
from unlock_jax.data import labels
from unlock_jax.evaluation import instance_ap
from unlock_jax.evaluation import panoptic_fusion

cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
cs_i2d = pytest.importorskip("cityscapesscripts.evaluation.instances2dict")
cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")

STRIP = 8  # rows of free road appended below each scene for the per-class FPs


def _our_label_table():
  label = cs_labels.Label
  table = [label("unlabeled", 255, 255, "void", 0, False, True, (0, 0, 0))]
  for i, name in enumerate(labels.CLASS_NAMES):
    thing = bool(labels.is_thing(i))
    table.append(label(name, i, i, "thing" if thing else "stuff", int(thing), thing, False,
                       tuple(int(v) for v in labels.PALETTE[i])))
  return table


@pytest.fixture
def cityscapes(monkeypatch, tmp_path):
  """The library's instance evaluation configured like the reference's copy."""
  table = _our_label_table()
  id2label = {lab.id: lab for lab in table}
  for mod in (cs_eval, cs_i2d):
    monkeypatch.setattr(mod, "labels", table)
    monkeypatch.setattr(mod, "id2label", id2label)
  monkeypatch.setattr(np, "in1d", lambda a, b: np.isin(a, b).ravel(), raising=False)
  args = cs_eval.args
  monkeypatch.setattr(args, "predictionPath", os.path.abspath(tmp_path))
  monkeypatch.setattr(args, "gtInstancesFile", str(tmp_path / "gtInstances.json"))
  monkeypatch.setattr(args, "quiet", True)
  monkeypatch.setattr(args, "distanceAvailable", False)
  monkeypatch.setattr(args, "minRegionSizes", np.array([100]))
  monkeypatch.setattr(args, "distanceThs", np.array([float("inf")]))
  monkeypatch.setattr(args, "distanceConfs", np.array([-float("inf")]))
  with contextlib.redirect_stdout(io.StringIO()):
    cs_eval.setInstanceLabels(args)
  return cs_eval


def _scene(rng, h=64, w=256, n_things=7):
  """A synthetic scene plus a free strip holding one false positive per class, a
  detection on the crowd (group) region and one on void."""
  gt = synthetic.make_gt(rng, h=h, w=w, n_things=n_things)
  pred = synthetic.make_prediction(rng, gt, num_rows=32, n_false=3)
  pad = lambda a, v: np.concatenate([a, np.full((STRIP,) + a.shape[1:], v, a.dtype)], 0)
  gt["instance_ids"] = pad(gt["instance_ids"], 0)
  for item in gt["amodal"]:
    item["mask"] = pad(item["mask"], 0)
  for kind in ("modal", "amodal"):
    d = pred[kind]
    masks = np.concatenate([d["masks"], np.zeros((d["masks"].shape[0], STRIP, w), bool)], 1)
    extra = np.zeros((labels.NUM_THINGS + 2, h + STRIP, w), bool)
    for c in range(labels.NUM_THINGS):
      extra[c, h + 2:h + 6, 10 + 30 * c:30 + 30 * c] = True
    ids = gt["instance_ids"]
    group = (ids > 0) & (ids < 1000) & labels.is_thing(ids)
    extra[-2] = group
    extra[-1] = ids == labels.IGNORE
    group_cls = int(ids[group][0]) - labels.FIRST_THING if group.any() else 0
    classes = np.concatenate([d["classes"], np.arange(labels.NUM_THINGS), [group_cls, 0]])
    scores = np.concatenate([d["scores"], rng.uniform(0.05, 1, labels.NUM_THINGS + 2)])
    pred[kind] = {"masks": np.concatenate([masks, extra]),
                  "classes": classes.astype(np.int32), "scores": scores.astype(np.float32),
                  "valid": np.concatenate([d["valid"], np.ones(labels.NUM_THINGS + 2, bool)]),
                  "boxes": np.zeros((classes.size, 4), np.float32)}
  return gt, pred


def _write_predictions(folder, name, dets):
  """The reference's instance writer: one PNG per detection + ``mask class score`` TXT."""
  os.makedirs(folder / "mask", exist_ok=True)
  lines = []
  for i in np.flatnonzero(dets["valid"]):
    cls = labels.FIRST_THING + int(dets["classes"][i])
    png = f"{name}_{i}_{cls}.png"
    Image.fromarray(dets["masks"][i].astype(np.uint8) * 255).save(folder / "mask" / png)
    lines.append(f"mask/{png} {cls} {dets['scores'][i]}\n")
  txt = folder / f"{name}_pred.txt"
  txt.write_text("".join(lines))
  return str(txt)


def _ours(scenes, amodal):
  acc = instance_ap.InstanceAPAccumulator(amodal=amodal)
  for gt, pred in scenes:
    acc.add(gt, panoptic_fusion.prepare_detections(pred["amodal" if amodal else "modal"]))
  return acc


def test_modal_ap_matches_cityscapesscripts(cityscapes, tmp_path):
  rng = np.random.default_rng(0)
  scenes = [_scene(rng) for _ in range(6)]
  gts, preds = [], []
  for i, (gt, pred) in enumerate(scenes):
    gt_png = tmp_path / f"img{i}_instanceTrainIds.png"
    Image.fromarray(gt["instance_ids"].astype(np.uint16)).save(gt_png)
    gts.append(str(gt_png))
    preds.append(_write_predictions(tmp_path, f"img{i}", pred["modal"]))
  with contextlib.redirect_stdout(io.StringIO()):
    gt_instances = cityscapes.getGtInstances(gts, cityscapes.args)
    matches = cityscapes.matchGtWithPreds(preds, gts, gt_instances, cityscapes.args)
    aps = cityscapes.evaluateMatches(matches, cityscapes.args)
    avg = cityscapes.computeAverages(aps, cityscapes.args)
  ours = _ours(scenes, amodal=False)
  np.testing.assert_allclose(ours.ap_table(), aps[0], rtol=1e-12, atol=1e-12)
  res = ours.result()
  assert res["mAP"] == pytest.approx(100 * avg["allAp"], abs=1e-9)
  assert res["AP50"] == pytest.approx(100 * avg["allAp50%"], abs=1e-9)
  assert 0 < res["mAP"] < 100  # a non-trivial case


def _amodal_matches(scenes, instlabels):
  """Transliteration of the reference's amodal ``assignGt2Preds`` (no vectorisation)."""
  matches = {}
  for i, (gt, pred) in enumerate(scenes):
    name_of = {lab: labels.CLASS_NAMES[lab] for lab in labels.THING_IDS}
    gt_by_label = {n: [] for n in instlabels}
    masks_by_label = {n: [] for n in instlabels}
    for a in gt["amodal"]:
      n = name_of[a["category_id"]]
      gt_by_label[n].append({"instID": int(a["seg_id"]), "labelID": int(a["category_id"]),
                             "pixelCount": int((a["mask"] != 0).sum()), "medDist": -1,
                             "distConf": 0.0, "matchedPred": []})
      masks_by_label[n].append(a["mask"] != 0)
    void = gt["instance_ids"] == labels.IGNORE
    pred_by_label = {n: [] for n in instlabels}
    d = pred["amodal"]
    for k, j in enumerate(np.flatnonzero(d["valid"])):
      n = name_of[labels.FIRST_THING + int(d["classes"][j])]
      m = d["masks"][j]
      if not m.any():
        continue
      # The score goes through the reference's text file: "{}".format -> float().
      p = {"predID": k, "labelID": labels.FIRST_THING + int(d["classes"][j]),
           "pixelCount": int(np.count_nonzero(m)), "confidence": float(f"{d['scores'][j]}"),
           "voidIntersection": int(np.count_nonzero(void & m))}
      matched = []
      for g, gm in zip(gt_by_label[n], masks_by_label[n]):
        inter = int(np.count_nonzero(gm & m))
        if inter > 0:
          gc, pc = dict(g), dict(p)
          gc["intersection"] = pc["intersection"] = inter
          matched.append(gc)
          g["matchedPred"].append(pc)
      p["matchedGt"] = matched
      pred_by_label[n].append(p)
    matches[f"img{i}"] = {"groundTruth": gt_by_label, "prediction": pred_by_label}
  return matches


def test_amodal_ap_matches_cityscapes_machinery(cityscapes):
  rng = np.random.default_rng(1)
  scenes = [_scene(rng) for _ in range(6)]
  matches = _amodal_matches(scenes, cityscapes.args.instLabels)
  with contextlib.redirect_stdout(io.StringIO()):
    aps = cityscapes.evaluateMatches(matches, cityscapes.args)
    avg = cityscapes.computeAverages(aps, cityscapes.args)
  ours = _ours(scenes, amodal=True)
  np.testing.assert_allclose(ours.ap_table(), aps[0], rtol=1e-12, atol=1e-12)
  assert ours.result()["mAAP"] == pytest.approx(100 * avg["allAp"], abs=1e-9)


def test_amodal_prediction_matching_two_overlapping_gts_counts_for_both(cityscapes):
  """Amodal GTs overlap, so one prediction can pass IoU > t with two of them: the
  reference then makes it a positive for both (no one-to-one assignment)."""
  h, w = 40, 120
  a = np.zeros((h, w), np.uint8)
  a[5:25, 10:40] = 1
  b = np.zeros((h, w), np.uint8)
  b[6:25, 10:40] = 1  # nearly the same amodal extent (one occludes the other)
  ids = np.zeros((h, w), np.int32)
  ids[5:25, 10:40] = 13001
  ids[6:25, 10:40] = 13002
  gt = {"instance_ids": ids,
        "amodal": [{"mask": a, "category_id": 13, "seg_id": 13001},
                   {"mask": b, "category_id": 13, "seg_id": 13002}]}
  masks = np.zeros((1 + labels.NUM_THINGS, h, w), bool)
  masks[0] = a.astype(bool)
  for c in range(labels.NUM_THINGS):
    masks[1 + c, 32:36, 5 + 15 * c:15 + 15 * c] = True
  pred = {"amodal": {"masks": masks, "valid": np.ones(8, bool),
                     "classes": np.array([2] + list(range(7)), np.int32),
                     "scores": np.linspace(0.9, 0.2, 8).astype(np.float32),
                     "boxes": np.zeros((8, 4), np.float32)}}
  matches = _amodal_matches([(gt, pred)], cityscapes.args.instLabels)
  with contextlib.redirect_stdout(io.StringIO()):
    aps = cityscapes.evaluateMatches(matches, cityscapes.args)
  ours = _ours([(gt, pred)], amodal=True)
  np.testing.assert_allclose(ours.ap_table(), aps[0], rtol=1e-12, atol=1e-12)
  car = labels.THING_IDS.index(13)
  assert ours.ap_table()[car, 0] > 0.5  # both GTs recalled by the one prediction


def _rect_scene(rng, iou_bins, n_obj=4, h=24, slot=100):
  """Objects in separate slots; every TP of class c has IoU inside bin ``iou_bins[c]``.

  TPs score above 0.5, FPs (empty slots) and duplicates below 0.4, so precision stays 1
  until every matchable GT is found: there the Cityscapes integration and COCO's
  101-point interpolation both give 1, elsewhere both give 0.
  """
  w = slot * (n_obj + 2)
  ids = np.zeros((h, w), np.int32)
  masks, classes, scores = [], [], []
  counters = {}
  for k in range(n_obj):
    c = int(rng.integers(0, labels.NUM_THINGS))
    n = counters.get(c, 1)
    counters[c] = n + 1
    x0 = k * slot + 5
    ids[4:14, x0:x0 + 40] = (labels.FIRST_THING + c) * 1000 + n
    lo = instance_ap.OVERLAPS[iou_bins[c]]
    target = lo + 0.025
    extra = int(round(40 / target - 40))
    pm = np.zeros((h, w), bool)
    pm[4:14, x0:x0 + 40 + extra] = True
    iou = 40 / (40 + extra)
    assert lo < iou and (iou_bins[c] == 9 or iou < instance_ap.OVERLAPS[iou_bins[c] + 1])
    masks.append(pm)
    classes.append(c)
    scores.append(rng.uniform(0.5, 1.0))
    if rng.random() < 0.5:  # low-scored duplicate
      masks.append(pm.copy())
      classes.append(c)
      scores.append(rng.uniform(0.0, 0.4))
  for j in range(2):  # low-scored false positives in the empty slots
    pm = np.zeros((h, w), bool)
    pm[4:14, (n_obj + j) * slot + 5:(n_obj + j) * slot + 45] = True
    masks.append(pm)
    classes.append(int(rng.integers(0, labels.NUM_THINGS)))
    scores.append(rng.uniform(0.0, 0.4))
  d = {"masks": np.stack(masks), "classes": np.array(classes, np.int32),
       "scores": np.array(scores, np.float32), "valid": np.ones(len(masks), bool),
       "boxes": np.zeros((len(masks), 4), np.float32)}
  return {"instance_ids": ids}, d


def test_modal_ap_agrees_with_coco_eval_where_definitions_coincide():
  mask_utils = pytest.importorskip("pycocotools.mask")
  coco_mod = pytest.importorskip("pycocotools.coco")
  cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
  rng = np.random.default_rng(2)
  iou_bins = rng.integers(0, 10, size=labels.NUM_THINGS)
  scenes = [_rect_scene(rng, iou_bins) for _ in range(5)]
  images, anns, dts = [], [], []
  for i, (gt, d) in enumerate(scenes):
    h, w = gt["instance_ids"].shape
    images.append({"id": i, "height": h, "width": w})
    for v in np.unique(gt["instance_ids"]):
      if v < 1000:
        continue
      rle = mask_utils.encode(np.asfortranarray((gt["instance_ids"] == v).astype(np.uint8)))
      anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(v // 1000),
                   "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                   "area": float(mask_utils.area(rle)), "iscrowd": 0,
                   "bbox": [float(x) for x in mask_utils.toBbox(rle)]})
    for m, c, s in zip(d["masks"], d["classes"], d["scores"]):
      rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
      dts.append({"image_id": i, "category_id": labels.FIRST_THING + int(c),
                  "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                  "score": float(s)})
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = coco_mod.COCO()
    coco_gt.dataset = {"images": images, "annotations": anns,
                       "categories": [{"id": c} for c in labels.THING_IDS]}
    coco_gt.createIndex()
    ev = cocoeval_mod.COCOeval(coco_gt, coco_gt.loadRes(dts), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  acc = instance_ap.InstanceAPAccumulator(amodal=False)
  for gt, d in scenes:
    acc.add(gt, panoptic_fusion.prepare_detections(d))
  ours = acc.ap_table()
  # Known answer: AP = 1 below the class's IoU, 0 above; NaN for absent classes.
  present = np.isin(np.arange(labels.NUM_THINGS),
                    [int(a["category_id"]) - labels.FIRST_THING for a in anns])
  expected = np.where(np.arange(10)[None, :] <= iou_bins[:, None], 1.0, 0.0)
  expected[~present] = np.nan
  np.testing.assert_allclose(ours, expected)
  assert 100 * ev.stats[0] == pytest.approx(acc.result()["mAP"], abs=1e-9)


def test_ignore_rules_match_cityscapesscripts(cityscapes, tmp_path):
  """Hand-built ignore cases: a small *group* region (its pixels count twice, once as
  group and once as small GT), a void overlap ratio exactly at the threshold (``<=``
  keeps it a false positive), and a prediction matching only a small GT (neither TP
  nor FP)."""
  h, w = 40, 200
  ids = np.zeros((h, w), np.int32)
  ids[5:25, 10:40] = 13001            # car, 600 px
  ids[5:13, 60:70] = 13               # car group, 80 px (< 100: also "small")
  ids[30:36, 60:70] = 13002           # small car, 60 px
  ids[5:25, 100:120] = labels.IGNORE  # void
  masks = np.zeros((4, h, w), bool)
  masks[0, 5:13, 60:70] = True        # the group ...
  masks[0, 14:21, 60:70] = True       # ... plus 70 free px: 80/150 = 0.53
  masks[1, 5:6, 110:120] = True       # 10 void px ...
  masks[1, 0:1, 150:160] = True       # ... plus 10 free px: ratio exactly 0.5
  masks[2, 30:36, 60:70] = True       # the small car only
  masks[3, 5:25, 10:40] = True
  masks[3, 5:25, 40:47] = True        # IoU 600/740 with the big car
  pred = {"masks": masks, "classes": np.full(4, 2, np.int32),
          "scores": np.array([0.9, 0.8, 0.7, 0.6], np.float32),
          "valid": np.ones(4, bool), "boxes": np.zeros((4, 4), np.float32)}
  gt_png = tmp_path / "img0_instanceTrainIds.png"
  Image.fromarray(ids.astype(np.uint16)).save(gt_png)
  txt = _write_predictions(tmp_path, "img0", pred)
  with contextlib.redirect_stdout(io.StringIO()):
    gt_instances = cityscapes.getGtInstances([str(gt_png)], cityscapes.args)
    matches = cityscapes.matchGtWithPreds([txt], [str(gt_png)], gt_instances,
                                          cityscapes.args)
    aps = cityscapes.evaluateMatches(matches, cityscapes.args)
  acc = instance_ap.InstanceAPAccumulator()
  acc.add({"instance_ids": ids}, panoptic_fusion.prepare_detections(pred))
  np.testing.assert_allclose(acc.ap_table(), aps[0], rtol=1e-12, atol=1e-12)
  car = labels.THING_IDS.index(13)
  # The void-ratio-0.5 prediction (score 0.8) is a FP above the TP (0.6) from t=0.5
  # on: AP = 0.5 * 0.5. The group prediction (0.9) is ignored at every t thanks to the
  # double count (counted once, 80/150 <= 0.55 would make it a FP: AP 1/6 at t=0.55).
  np.testing.assert_allclose(acc.ap_table()[car, :7], 0.25)
  np.testing.assert_allclose(acc.ap_table()[car, 7:], 0.0)  # IoU 0.81 < t
