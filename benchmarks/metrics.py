"""Evaluation speed: our in-memory metrics vs cityscapesscripts' file pipeline vs COCOeval.

Synthetic 2048x400 panoramas with 20 GT things and 100 modal + 100 amodal detections.
* ours: ``OassMetrics.add`` (fusion + all five metrics) per image, then ``result()``;
  also the AP part alone (modal + amodal ``InstanceAPAccumulator``).
* cityscapesscripts 2.3.0 as the reference runs its copy: per image one PNG per detection
  + a TXT list, the instance-id PNG and the panoptic PNGs/JSON, then the library's
  instance evaluation (mAP) and panoptic evaluation (mPQ). It has no amodal metrics, so
  it is compared with our mAP + mPQ time; it reuses our fused panoptic map (the fusion
  is not charged to it).
* pycocotools COCOeval (segm) on the same modal and amodal detections, RLE-encoded
  beforehand (encoding time reported separately), vs our AP time.
Prints times, ratios and peak RSS. Times are process CPU seconds by default, because the
machine may be shared (other processes inflate wall time unevenly between the phases);
``--wall`` uses wall-clock time. Run: ``python benchmarks/metrics.py [--quick]``.
"""
import argparse
import contextlib
import io
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.support import synthetic  # noqa: E402
from unlock_jax.data import labels  # noqa: E402
from unlock_jax.evaluation import instance_ap  # noqa: E402
from unlock_jax.evaluation import panoptic_fusion  # noqa: E402
from unlock_jax.evaluation import pq  # noqa: E402
from unlock_jax.evaluation import report  # noqa: E402


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup_cityscapes(pred_root):
  """The library's instance evaluation with our label table (as the reference's copy)."""
  from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ev
  from cityscapesscripts.evaluation import instances2dict as i2d
  from cityscapesscripts.helpers import labels as cs_labels
  np.in1d = lambda a, b: np.isin(a, b).ravel()  # removed in numpy 2
  table = [cs_labels.Label("unlabeled", 255, 255, "void", 0, False, True, (0, 0, 0))]
  for i, name in enumerate(labels.CLASS_NAMES):
    thing = bool(labels.is_thing(i))
    table.append(cs_labels.Label(name, i, i, "x", int(thing), thing, False, (0, 0, 0)))
  for mod in (ev, i2d):
    mod.labels = table
    mod.id2label = {lab.id: lab for lab in table}
  a = ev.args
  a.predictionPath = os.path.abspath(pred_root)
  a.gtInstancesFile = os.path.join(pred_root, "gtInstances.json")
  a.quiet, a.distanceAvailable = True, False
  a.minRegionSizes = np.array([100])
  a.distanceThs, a.distanceConfs = np.array([np.inf]), np.array([-np.inf])
  ev.setInstanceLabels(a)
  return ev


def _shift(ids):  # cityscapesscripts' panoptic VOID is 0; ours is 255 and 0 is road
  ids = np.asarray(ids, np.int64)
  return np.where(ids == labels.IGNORE, 0, ids + 1)


def _write_cityscapes_image(root, i, gt, pred, pan):
  """The reference's per-image files: detection PNGs + TXT, GT PNGs, panoptic PNGs."""
  name = f"img{i:04d}"
  Image.fromarray(gt["instance_ids"].astype(np.uint16)).save(
      os.path.join(root, "gt", f"{name}_instanceTrainIds.png"))
  d = pred["modal"]
  lines = []
  for k in np.flatnonzero(d["valid"]):
    cls = labels.FIRST_THING + int(d["classes"][k])
    png = f"{name}_{k}_{cls}.png"
    Image.fromarray(d["masks"][k].astype(np.uint8) * 255).save(os.path.join(root, "mask", png))
    lines.append(f"mask/{png} {cls} {d['scores'][k]}\n")
  with open(os.path.join(root, f"{name}_pred.txt"), "w") as f:
    f.write("".join(lines))
  Image.fromarray(labels.id2rgb(_shift(gt["panoptic"]))).save(
      os.path.join(root, "pan_gt", name + ".png"))
  Image.fromarray(labels.id2rgb(_shift(pan))).save(os.path.join(root, "pan_pred", name + ".png"))
  gt_ann = {"image_id": i, "file_name": name + ".png",
            "segments_info": [dict(s, id=int(_shift(s["id"]))) for s in gt["segments"]]}
  pred_ann = {"image_id": i, "file_name": name + ".png", "segments_info": [
      {"id": int(_shift(v)), "category_id": int(v) // 1000} for v in np.unique(pan)]}
  return (os.path.join(root, "gt", f"{name}_instanceTrainIds.png"),
          os.path.join(root, f"{name}_pred.txt"), (gt_ann, pred_ann))


def _coco_records(mask_utils, i, gt, pred, kind, ann_id):
  """COCO GT annotations and detections of one image (RLE) for ``kind``."""
  anns, dts = [], []
  items = gt["modal"] if kind == "modal" else gt["amodal"]
  for a in items:
    rle = mask_utils.encode(np.asfortranarray(a["mask"].astype(np.uint8)))
    ann_id += 1
    anns.append({"id": ann_id, "image_id": i, "category_id": int(a["category_id"]),
                 "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": 0,
                 "bbox": list(mask_utils.toBbox(rle))})
  d = pred[kind]
  for k in np.flatnonzero(d["valid"]):
    rle = mask_utils.encode(np.asfortranarray(d["masks"][k].astype(np.uint8)))
    dts.append({"image_id": i, "category_id": labels.FIRST_THING + int(d["classes"][k]),
                "segmentation": rle, "score": float(d["scores"][k]),
                "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle))})
  return anns, dts, ann_id


def _coco_eval(coco_mod, cocoeval_mod, images, anns, dts):
  with contextlib.redirect_stdout(io.StringIO()):
    gt = coco_mod.COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c} for c in labels.THING_IDS]}
    gt.createIndex()
    dt = coco_mod.COCO()
    dt.dataset = {"images": images, "annotations": [dict(d, id=j + 1, iscrowd=0)
                                                    for j, d in enumerate(dts)],
                  "categories": gt.dataset["categories"]}
    dt.createIndex()
    ev = cocoeval_mod.COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return ev.stats[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="10 images instead of 100")
  parser.add_argument("--images", type=int, default=None)
  parser.add_argument("--no-cityscapes", action="store_true")
  parser.add_argument("--no-coco", action="store_true")
  parser.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
  args = parser.parse_args()
  clock = time.perf_counter if args.wall else time.process_time
  n_images = args.images or (10 if args.quick else 100)
  from pycocotools import coco as coco_mod
  from pycocotools import cocoeval as cocoeval_mod
  from pycocotools import mask as mask_utils

  rss_start = _rss_mib()
  ours = report.OassMetrics()
  ap_modal = instance_ap.InstanceAPAccumulator(False)
  ap_amodal = instance_ap.InstanceAPAccumulator(True)
  pan_only = pq.PanopticAccumulator()
  t_ours = t_ap = t_map_mpq = t_write = t_rle = t_gen = 0.0
  rss_after_10 = None
  cs_lists = ([], [], [])
  coco = {"modal": ([], []), "amodal": ([], [])}
  images, ann_ids = [], {"modal": 0, "amodal": 0}
  with tempfile.TemporaryDirectory() as root:
    for sub in ("gt", "mask", "pan_gt", "pan_pred"):
      os.makedirs(os.path.join(root, sub))
    for i in range(n_images):
      t = clock()
      rng = np.random.default_rng(1000 + i)
      gt = synthetic.make_gt(rng, h=400, w=2048, n_things=20, max_radius=60)
      pred = synthetic.make_prediction(rng, gt, num_rows=100, max_shift=6, fill_rows=True)
      t_gen += clock() - t

      t = clock()
      fused = ours.add(gt, pred)
      t_ours += clock() - t

      t = clock()
      modal = panoptic_fusion.prepare_detections(pred["modal"])
      amodal = panoptic_fusion.prepare_detections(pred["amodal"])
      t_prep = clock() - t
      t = clock()
      ap_modal.add(gt, modal)
      t_ap_modal = clock() - t
      t = clock()
      ap_amodal.add(gt, amodal)
      t_ap += t_prep + t_ap_modal + clock() - t
      t = clock()
      pan = panoptic_fusion.modal_panoptic(pred["sem"], modal, ours.tau_m)
      pan_only.add(gt["panoptic"], gt["segments"], pan)
      # mAP + mPQ work: modal preparation is shared, amodal is not needed.
      t_map_mpq += t_prep / 2 + t_ap_modal + clock() - t

      if not args.no_cityscapes:
        t = clock()
        gt_png, txt, anns = _write_cityscapes_image(root, i, gt, pred, fused["panoptic"])
        t_write += clock() - t
        cs_lists[0].append(gt_png)
        cs_lists[1].append(txt)
        cs_lists[2].append(anns)
      if not args.no_coco:
        t = clock()
        images.append({"id": i, "height": 400, "width": 2048})
        for kind in ("modal", "amodal"):
          a, d, ann_ids[kind] = _coco_records(mask_utils, i, gt, pred, kind, ann_ids[kind])
          coco[kind][0].extend(a)
          coco[kind][1].extend(d)
        t_rle += clock() - t
      if i == 9:
        rss_after_10 = _rss_mib()
      del gt, pred, fused, modal, amodal, pan
    rss_ours = _rss_mib()
    t = clock()
    res = ours.result()
    t_ours += clock() - t
    t = clock()
    ap_res = (ap_modal.result()["mAP"], ap_amodal.result()["mAAP"])
    t_ap += clock() - t
    t = clock()
    pan_only.result()
    ap_modal.result()
    t_map_mpq += clock() - t
    state = ours.instance.state_bytes() + ours.amodal_instance.state_bytes()

    print(f"images: {n_images} x 2048x400, 20 GT things, 100+100 detections each "
          f"(data generation {t_gen:.1f}s, not timed); clock: "
          f"{'wall' if args.wall else 'process CPU'} seconds")
    print(f"ours, all five metrics (incl. fusion): {t_ours:8.2f}s  "
          f"({1000 * t_ours / n_images:.0f} ms/image)")
    print(f"ours, mAP + mAAP only:                {t_ap:8.2f}s")
    print(f"ours, mAP + mPQ only (incl. fusion):  {t_map_mpq:8.2f}s")
    print("headline: " + ", ".join(f"{k} {res[k]:.2f}" for k in report.HEADLINE))
    print(f"mAP + mAAP accumulator state: {state / 1024:.1f} KiB for {n_images} images "
          f"(no masks kept)")

    if not args.no_cityscapes:
      ev = _setup_cityscapes(root)
      from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_pq
      t = clock()
      with contextlib.redirect_stdout(io.StringIO()):
        gt_inst = ev.getGtInstances(cs_lists[0], ev.args)
        matches = ev.matchGtWithPreds(cs_lists[1], cs_lists[0], gt_inst, ev.args)
        aps = ev.evaluateMatches(matches, ev.args)
        cs_map = ev.computeAverages(aps, ev.args)["allAp"]
        categories = {c["id"]: c for c in pq.default_categories()}
        stat = cs_pq.pq_compute_single_core(
            0, json.loads(json.dumps(cs_lists[2])), os.path.join(root, "pan_gt"),
            os.path.join(root, "pan_pred"), categories)
        cs_mpq = cs_pq.average_pq(stat, categories)["All"]["pq"]
      t_cs = clock() - t + t_write
      print(f"cityscapesscripts, mAP + mPQ (files {t_write:.1f}s + eval "
            f"{t_cs - t_write:.1f}s): {t_cs:8.2f}s  -> ours is {t_cs / t_map_mpq:.1f}x "
            f"faster (target >= 5x)")
      print(f"  same numbers: mAP {100 * cs_map:.4f} vs {res['mAP']:.4f}, "
            f"mPQ {100 * cs_mpq:.4f} vs {res['mPQ']:.4f}")
      print(f"  ours, all five metrics vs cityscapes' two: {t_cs / t_ours:.1f}x faster")
    if not args.no_coco:
      t = clock()
      coco_ap = [_coco_eval(coco_mod, cocoeval_mod, images, *coco[k])
                 for k in ("modal", "amodal")]
      t_coco = clock() - t
      print(f"pycocotools COCOeval segm, modal + amodal: {t_coco:8.2f}s on RLEs encoded "
            f"beforehand (+ RLE encoding of the dense masks {t_rle:.1f}s)")
      print(f"  ours vs COCOeval alone: {t_coco / t_ap:.2f}x; vs encode + COCOeval, both "
            f"starting from the same dense masks: {(t_coco + t_rle) / t_ap:.1f}x "
            f"(target >= 1x)")
      print(f"  COCO AP {100 * coco_ap[0]:.2f}/{100 * coco_ap[1]:.2f} (a different "
            f"definition) vs ours {ap_res[0]:.2f}/{ap_res[1]:.2f}")
  print(f"peak RSS: start {rss_start:.0f} MiB, after 10 images {rss_after_10 or 0:.0f} MiB, "
        f"after ours on all images {rss_ours:.0f} MiB, end {_rss_mib():.0f} MiB")


if __name__ == "__main__":
  main()
