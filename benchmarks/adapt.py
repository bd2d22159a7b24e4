"""Adaptation stage costs: ADCL paste, input pipeline vs step, adapt vs source step, B5.

    python benchmarks/adapt.py [--quick] [--pool 2000] [--samples 40] [--ref-samples 12]
        [--targets 60] [--batches 40] [--steps 5] [--tmp /tmp] [--keep]
    python benchmarks/adapt.py --b5 [--peak_tflops X] [--dtype bfloat16]   # accelerator
    python benchmarks/adapt.py --uda [--tiny] [--steps 5]

(i) ADCL paste per PL crop, 400x400 crops of 400x2048 panoramas, a pool of ~``--pool``
    entries (~10 per panorama), both sides on the same crops and the same draws:
    * ours: ``adcl_paste.paste`` with the adapt config's paste settings on the
      ``PoolIndex`` loaded from the index file (shards -> ``build_index``), then
      ``pad_instances`` of both branches (the stage's max_instances, 32);
    * reference: a faithful port of ``GenBlendPASSAmodalMixedLabelsForMaskFormer.__call__``
      (``gen_amodal_pseudolabels_for_maskformer.py`` L176-309 of yihong-97/UNLOCK): the
      pool list globbed once, then per sample 80 candidate full-size mask PNGs opened with
      PIL and cropped, the panorama JPG of every accepted one opened with PIL, the
      float32 ``np.unique`` visibility test, label lists, the panoptic map and the
      ``BitmapMasks`` stacking (emulated by ``np.stack``; mmdet is not installed).
    The pool is written by this script into a temp dir in both forms: reference PNGs
    (``pool.write_reference``) next to the source panoramas as JPG (quality 90), and our
    shards + index (built from the *decoded* JPGs, so pasted pixels agree bit for bit).
    Files are read through a warm page cache (just written), which favours the reference.
    On every reference crop, ours with the reference switches (``modal_box_from_visible=
    False``, ``box_rule="nonzero"``) must give the reference's output exactly (untimed).
    Synthetic content: panoramas are smooth bands + a low-frequency colour field + noise;
    pool objects car-like ellipse+box unions (half-heights log-uniform 6..60 px, rows in
    the 30..82 % band) through ``pool.pool_entries`` (255 where confident masks overlap);
    PL crops carry ~10 modal / ~15 amodal instances and ~1.5 % uncertain (255) pixels.
(ii) ``pipeline.adapt_iterator`` batches/s at the configs/demo.py sizes (100x512
    panoramas, 100x100 crops, batch 4, max_instances 24, its paste settings,
    num_workers 0 = grain's 2 read threads) on a synthetic target set written into the
    temp dir: ``--targets`` PNG panoramas, packed OPLL labels (``packed_labels.write_packed``,
    ~10 modal / ~15 amodal instances each) and a pool index of ~2 entries per panorama
    (the demo run's pool had 116 entries for 60 panoramas), read through a stub reader
    (``keys``, ``image_size``, ``load_image``). Against it: steps/s of
    ``methods/unlock.make_step`` (configs/demo.py model, random init, the first
    batch of the iterator), compiled, after one warm-up step. Then both in one loop
    (``next`` + ``put_batch`` + step, the training loop's work) for the achieved rate.
(iii) The same adapt step vs ``steps.make_source_step`` (source optimiser groups, same
    model, same PL crops without the unlabelled ones): step-time ratio and XLA's
    cost-analysis FLOP ratio (teacher forward + second student forward + regulariser).
(iv) ``--b5``: ``default.get_config().model`` with instance heads (MiT-B5, 135 M parameters),
    the reference adapt config, 4 PL + 4 unlabelled 400x400 crops, 32 instances per
    branch, synthetic host batch: step time, FLOPs from the compiled step's
    ``cost_analysis``, achieved TFLOP/s vs the device peak (``--peak_tflops``, else a
    table by device kind: bf16 dense peak for bfloat16 compute, TF32 for float32 on
    NVIDIA), and the projected wall time of 10,000 iterations. Without an accelerator it
    only lowers the step (abstract state, nothing allocated) and prints the lowered
    FLOP count; ``--force`` runs it anyway.

(v) ``--uda``: the price of source data in the loop: the source-dependent UDA baseline's
    step (``methods/uda.py``: object erasing, source forward with both R-CNN branches,
    teacher, ClassMix of source into target crops, mixed forward) vs UNLOCK's step
    (``methods/unlock.py``), the same model, crops and instance counts, one synthetic host
    batch (``b5_batch``: the UNLOCK batch's PL crops and instances are UDA's source
    crops), interleaved rounds after one warm-up step each: step-time and XLA-FLOP
    ratios. The configs/demo.py model and sizes (batch 4, 94x94 crops as ``:method=uda``,
    24 instances), or ``--tiny`` configs/synth/tiny.py:full=1's (47x47, 8 instances).

Times are wall-clock and process CPU (user+sys, all threads) unless stated; ratios are
baseline/ours measured in the same run. ``--quick``: pool 400, 8 samples (3 reference),
12 targets, 8 batches, 2 steps (~7 min here, the two compiles dominate).

Measured 2026-11-30 16:36-16:59, `python benchmarks/adapt.py` on the demo config
(configs/demo.py: 2.00 M params, all heads), shared 2-core CPU (AMD EPYC VM, 23 GB)
beside a fresh-clone demo + test run and a helper's tests; load average 4-6, so the
13-minute adapt-step compile and the step times are inflated; ratios are from the same
run. JAX CPU default, 1 device. (An earlier run on the larger configs/synth/unlock.py
model gave 39.3x for (i), 66.6x for (ii), 1.06x wall for (iii).)

(i) pool: 2000 entries from 195 panoramas (10.3 each); reference files 2.2 MiB mask
    PNGs + 40.3 MiB JPGs, our index 22.0 MiB on disk / 35.9 MiB in memory. Ours with the
    reference switches gives the reference port's output exactly (image, semantic, both
    branches' masks, classes, boxes) on all 12 reference crops; 7.75 objects pasted per
    crop (min 4, max 8).

      per 400x400 crop            wall       CPU
      ours paste                  4.56 ms    4.56 ms   (40 crops; median 4.21 ms)
      ours + pad_instances(32)    5.32 ms    5.32 ms
      reference port            167.6 ms   164.4 ms    (12 crops; median 159.3 ms)
      reference / ours           40.7x      40.0x      (34.5x wall with our padding)

    Target >= 20x met. The reference's time is mostly I/O decode: one 400x2048 mask PNG
    1.95 ms (x80 candidates = 156 ms), one 400x2048 JPG panorama 3.6 ms per accepted one.
(ii) 60 panoramas 100x512, pool 119 entries: 40 batches at 36.1 batches/s (27.7 ms per
    batch of 4 pairs). Adapt step (batch 4 x 100x100, 24 instances/branch): 1.59 steps/s
    (median 628 ms). Input 22.7x faster than the step (target >= 2x met). The loop with
    input (next + put_batch + step, 5 steps): 942 ms per step, 1.50x the step alone
    under this load (the input runs on the same 2 busy cores).
(iii) 5 interleaved rounds after warm-up, medians:

      step      compile   wall       CPU        XLA FLOPs
      adapt     803.0 s    628 ms    1089 ms    30.39 G
      source     97.6 s    550 ms     846 ms    23.72 G
      ratio               1.14x      1.29x      1.28x

    The teacher forward, the second (semantic-only) student forward/backward and the
    regulariser add ~6.7 GFLOP (28 %) to this smaller model's step; its R-CNN branches
    are a smaller share than on the larger model. Wall times vary +-20 % run to run here.
(v) `python benchmarks/adapt.py --uda --tiny` (2026-12-07 00:00-00:28, JAX CPU, 1 device,
    load average 9-14 on the 2 shared cores): configs/synth/tiny.py:full=1 (0.18 M
    params), 4+4 crops of 47x47, 8 instances per branch, 5 interleaved rounds, medians:

      step      compile   wall       CPU        XLA FLOPs
      unlock    761.2 s   413.8 ms   121.5 ms   1.43 G
      uda       372.8 s   365.9 ms   118.2 ms   1.42 G
      ratio               0.88x      0.97x      1.00x   (UDA / UNLOCK)

    The same forwards (teacher, labelled forward with both R-CNN branches, mixed
    forward): UDA swaps the regulariser for the erasing, so the source data costs
    nothing in the step at this size; its price is the second input stream.
(iv) not run: no accelerator was lent to this session. On CPU `--b5` only traces and
    lowers the step: MiT-B5 with instance heads, 135.1 M params, lowered in 32 s, XLA's
    lowered-HLO cost analysis 9.13 TFLOP per step (4+4 crops of 400x400, 32 instances per
    branch, float32), i.e. ~91 PFLOP for 10,000 iterations. Step time, TFLOP/s vs peak and
    the 10,000-iteration projection need `python benchmarks/adapt.py --b5` on a device.
"""
import argparse
import dataclasses
import datetime
import glob
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.support import reference  # noqa: E402
from tests.support.reference import get_bbox_coord  # noqa: E402
from unlock_jax.data import adcl_paste  # noqa: E402
from unlock_jax.data import keys  # noqa: E402
from unlock_jax.data import packed_labels  # noqa: E402
from unlock_jax.data import pool_index  # noqa: E402
from unlock_jax.data.layouts import common as layouts_common  # noqa: E402
from unlock_jax.pseudo import pool as pool_lib  # noqa: E402

H, W, CROP = 400, 2048, 400
CITY = "city0"
THING_P = np.array([0.22, 0.05, 0.45, 0.06, 0.04, 0.10, 0.08])  # classes 11..17, car-heavy
TAU0 = {c: {"tau": 0.0} for c in range(11, 18)}


def _now():
  return time.perf_counter(), time.process_time()


def _since(t):
  return time.perf_counter() - t[0], time.process_time() - t[1]


def _log(msg=""):
  print(msg, flush=True)


# ------------------------------------------------------------------ synthetic content


def panorama(rng, h=H, w=W):
  """uint8 [h,w,3]: sky / facade / road bands, a low-frequency colour field, noise."""
  rows = np.arange(h)[:, None]
  base = np.where(rows < 0.35 * h, [150, 180, 220],
                  np.where(rows < 0.62 * h, [120, 100, 90], [80, 80, 85]))[:, None, :]
  small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
  field = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.float32)
  img = 0.6 * base + 0.4 * field + rng.normal(0, 6, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _object(rng, h, w, s):
  """bool [h,w]: a car-like union of an ellipse and a box, at scale ``s``."""
  ry = float(np.exp(rng.uniform(np.log(6), np.log(60)))) * s
  rx = ry * rng.uniform(0.6, 2.5)
  cy, cx = rng.uniform(0.30 * h, 0.82 * h), rng.uniform(0, w)
  y0, y1 = max(int(cy - ry), 0), min(int(np.ceil(cy + ry)) + 1, h)
  x0, x1 = max(int(cx - rx), 0), min(int(np.ceil(cx + rx)) + 1, w)
  m = np.zeros((h, w), bool)
  yy, xx = np.mgrid[y0:y1, x0:x1]
  m[y0:y1, x0:x1] = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1
  if rng.random() < 0.5:  # a box body under the ellipse
    by = int(cy)
    m[by:y1, max(int(cx - 0.9 * rx), 0):min(int(cx + 0.9 * rx) + 1, w)] = True
  m[min(int(cy), h - 1), min(int(cx), w - 1)] = True
  return m


def detections(rng, n, h, w, s):
  classes = 11 + rng.choice(7, n, p=THING_P)
  masks = np.stack([_object(rng, h, w, s) for _ in range(n)]) if n else np.zeros((0, h, w), bool)
  return classes.astype(np.int32), masks


def semantic_map(rng, h, w, things=()):
  """uint8 [h,w]: sky(10) / building(2) / road(0) bands, thing masks on top, ~8 % ignore."""
  rows = np.arange(h)[:, None]
  sem = np.broadcast_to(np.where(rows < 0.35 * h, 10, np.where(rows < 0.62 * h, 2, 0)),
                        (h, w)).astype(np.uint8).copy()
  for c, m in things:
    sem[m] = c
  ign = np.zeros((-(-h // 8), -(-w // 8)), bool)
  ign.flat[rng.choice(ign.size, max(ign.size // 12, 1), replace=False)] = True
  sem[np.kron(ign, np.ones((8, 8), bool))[:h, :w]] = 255
  return sem


def pool_for(rng, image, n_dets, s):
  """Pool entries (docs/method.md §6) of one panorama: ``n_dets`` confident detections,
  semantic = their classes."""
  h, w = image.shape[:2]
  classes, masks = detections(rng, n_dets, h, w, s)
  sem = semantic_map(rng, h, w, zip(classes, masks))
  sem[masks.any(0)] = np.asarray(classes)[np.argmax(masks, 0)][masks.any(0)]
  pred = {"semantic": sem, "amodal": {"classes": classes,
                                      "scores": np.ones(len(classes), np.float32),
                                      "masks": masks}}
  return pool_lib.pool_entries(pred, TAU0)


def pl_instances(rng, h, w, s, n_modal=10, n_amodal=15, unc_frac=0.015):
  """Modal and amodal branches ``{"classes", "masks" uint8 0/1/255}`` of a PL crop."""
  out = {}
  unc = np.zeros((h, w), bool)
  ph, pw = int(10 * s) + 1, int(20 * s) + 1
  for _ in range(int(unc_frac * h * w / (ph * pw)) + 1):
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    unc[cy:cy + ph, cx:cx + pw] = True
  for branch, n in (("modal", n_modal), ("amodal", n_amodal)):
    classes, masks = detections(rng, n, h, w, s)
    m = np.where(masks, np.uint8(1), np.where(unc, np.uint8(255), np.uint8(0)))
    out[branch] = {"classes": classes, "masks": m.astype(np.uint8)}
  return out


# ------------------------------------------------------------------ reference port


def _ref_valid(box):
  x1, y1, x2, y2 = box
  return x1 < x2 and y1 < y2


class RefPaste:
  """``GenBlendPASSAmodalMixedLabelsForMaskFormer`` (L148-309), logging and mmdet dropped.

  ``__call__(results, draw)``: ``draw`` replaces ``random.sample(list, 80)`` so that both
  sides paste from the same candidates (``None`` draws as the reference does).
  """

  def __init__(self, hardlabel_dir, num_hard_label=8):
    self.label_divisor = 1000
    self.thing_list = [11, 12, 13, 14, 15, 16, 17]
    self.thing_list_mapids = {11: 0, 12: 1, 13: 2, 14: 3, 15: 4, 16: 5, 17: 6}
    self.hardlables_list = glob.glob(os.path.join(hardlabel_dir, "*", "*.png"))
    self.hardlables_list.sort()
    self.num_hard_label = num_hard_label

  def _map(self, catid):
    return self.thing_list_mapids[catid]

  def __call__(self, results, draw=None):
    semantic = results["gt_semantic"]
    instances = results["gt_instance"]
    ainstances = results["gt_ainstance"]
    hard_label_randoms = draw if draw is not None else random.sample(
        self.hardlables_list, self.num_hard_label * 10)
    img_path = lambda name: os.path.join(  # noqa: E731
        results["img_prefix"], name.split("/")[-2], name.split("/")[-1].split("_")[0] + ".jpg")
    croped_hard_label_list, croped_hard_class_list, croped_hard_img_list, hard_label_sem, _ = (
        reference.paste_candidates(
            semantic, hard_label_randoms, results["crop_bbox"], Image.open,
            lambda name: np.array(Image.open(img_path(name)), dtype=np.uint8)[:, :, ::-1],
            lambda name: name.split("/")[-1].split("_")[1][3:], self.num_hard_label))

    semantic[hard_label_sem != 0] = hard_label_sem[hard_label_sem != 0]
    for h_img, h_label in zip(croped_hard_img_list, croped_hard_label_list):
      results["img"][h_label == 1] = h_img[h_label == 1]
      results["img"][h_label == 255] = 0
    height, width = semantic.shape[0], semantic.shape[1]

    panoptic_only_thing_classes = np.zeros(semantic.shape)
    max_inst_per_class = np.zeros(len(self.thing_list))
    class_id_tracker = {cid: 1 for cid in self.thing_list}
    gt_masks, gt_labels, gt_bboxes = [], [], []
    for cat_id, mask in instances.items():
      mask[hard_label_sem != 0] = 0
      if not (mask == 1).sum() == 0:
        cat_class = cat_id // self.label_divisor
        if cat_class in self.thing_list:
          box = get_bbox_coord(mask)
          if _ref_valid(box):
            gt_bboxes.append(box)
            gt_masks.append(mask.astype(np.uint8))
            gt_labels.append(self._map(cat_class))
            panoptic_only_thing_classes[mask == 1] = (cat_class * self.label_divisor
                                                      + class_id_tracker[cat_class])
            class_id_tracker[cat_class] += 1
    gt_amasks, gt_alabels, gt_abboxes = [], [], []
    for acat_id, amask in ainstances.items():
      if not (amask[hard_label_sem == 0] == 1).sum() == 0:
        acat_class = acat_id // self.label_divisor
        if acat_class in self.thing_list:
          abox = get_bbox_coord(amask)
          if _ref_valid(abox):
            gt_abboxes.append(abox)
            gt_amasks.append(amask.astype(np.uint8))
            gt_alabels.append(self._map(acat_class))
    hard_ins_mask = np.zeros_like(semantic)
    for h_cls, h_mask in zip(reversed(croped_hard_class_list),
                             reversed(croped_hard_label_list)):
      h_mask[h_mask != 0] = 1
      if not (h_mask != 0).sum() == 0:
        if h_cls in self.thing_list:
          h_box = get_bbox_coord(h_mask)
          if _ref_valid(h_box):
            gt_abboxes.append(h_box)
            gt_amasks.append(h_mask.astype(np.uint8))
            gt_alabels.append(self._map(h_cls))
            h_mask[hard_ins_mask != 0] = 0
            gt_bboxes.append(h_box)
            gt_masks.append(h_mask.astype(np.uint8))
            gt_labels.append(self._map(h_cls))
            panoptic_only_thing_classes[h_mask == 1] = (h_cls * self.label_divisor
                                                        + class_id_tracker[h_cls])
            class_id_tracker[h_cls] += 1
            hard_ins_mask[h_mask != 0] = 1
    for cid in list(class_id_tracker.keys()):
      max_inst_per_class[self._map(cid)] = class_id_tracker[cid]

    def bitmap(ms):  # mmdet BitmapMasks(masks, h, w)
      return np.stack(ms).reshape(-1, height, width) if ms else np.empty((0, height, width),
                                                                          np.uint8)
    results["gt_masks"] = bitmap(gt_masks)
    results["gt_amasks"] = bitmap(gt_amasks)
    results["gt_semantic_seg"] = semantic.astype("long")
    results["gt_panoptic_only_thing_classes"] = panoptic_only_thing_classes.astype("long")
    results["gt_labels"] = np.asarray(gt_labels).astype("long")
    results["gt_alabels"] = np.asarray(gt_alabels).astype("long")
    results["max_inst_per_class"] = max_inst_per_class.astype("long")
    results["gt_bboxes"] = np.asarray(gt_bboxes).astype(np.float32)
    results["gt_abboxes"] = np.asarray(gt_abboxes).astype(np.float32)
    return results


# ------------------------------------------------------------------ (i) paste


def _tmpdir(base, prefix):
  """A temp dir whose path has no "cer" (the reference skips such pool files)."""
  for _ in range(20):
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    if "cer" not in d:
      return d
    shutil.rmtree(d)
  raise RuntimeError("no temp dir name without 'cer'")


def build_pool(root, n_entries, rng):
  """Pool of ~n_entries at 400x2048: reference PNG + JPG layout and our index."""
  ref_root, img_root, shards = (os.path.join(root, d) for d in ("ref", "images", "shards"))
  os.makedirs(os.path.join(img_root, CITY), exist_ok=True)
  t = _now()
  names, decoded, total, p = [], {}, 0, 0
  shard_paths = []
  while total < n_entries:
    name = f"{CITY}/pano{p:05d}"
    img = panorama(rng)
    jpg = os.path.join(img_root, name + ".jpg")
    Image.fromarray(img).save(jpg, quality=90)
    img = np.array(Image.open(jpg), dtype=np.uint8)  # what both sides read
    entries = pool_for(rng, img, 11, 1.0)[:n_entries - total]
    pool_lib.write_reference(ref_root, name, entries)
    path = pool_lib.shard_path(shards, name)
    pool_lib.write_shard(path, pool_lib.entry_record(name, img, entries))
    shard_paths.append(path)
    if len(decoded) < 8:
      decoded[name] = img
    names.append(name)
    total += len(entries)
    p += 1
  index_path = os.path.join(root, "pool_index.npz")
  info = pool_lib.build_index(shard_paths, index_path)
  wall, _ = _since(t)
  index = pool_index.PoolIndex.load(index_path)
  ref_paths = [pool_lib.reference_path(ref_root, index.name(j), index.class_id(j),
                                       int(index._a["k"][j])) for j in range(len(index))]
  png_bytes = sum(os.path.getsize(f) for f in ref_paths)
  jpg_bytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(img_root, "*", "*.jpg")))
  _log(f"pool: {info['entries']} entries from {info['panoramas']} panoramas "
       f"({info['entries'] / info['panoramas']:.1f} each), written in {wall:.1f} s; "
       f"reference files {png_bytes / 2**20:.1f} MiB PNG masks + {jpg_bytes / 2**20:.1f} MiB "
       f"JPG panoramas, our index {os.path.getsize(index_path) / 2**20:.1f} MiB on disk / "
       f"{index.nbytes / 2**20:.1f} MiB in memory")
  e = index.extents
  _log(f"  entry extents: median {np.median(e[:, 1] - e[:, 0]):.0f} x "
       f"{np.median(e[:, 3] - e[:, 2]):.0f} px, largest "
       f"{(e[:, 1] - e[:, 0]).max()} x {(e[:, 3] - e[:, 2]).max()}")
  return index, ref_paths, os.path.join(ref_root, "amodal_instance"), img_root, decoded


def pl_sample(rng, decoded):
  name = list(decoded)[rng.integers(len(decoded))]
  x1 = int(rng.integers(0, W - CROP + 1))
  window = (0, CROP, x1, x1 + CROP)
  image = np.ascontiguousarray(decoded[name][:, x1:x1 + CROP])
  inst = pl_instances(rng, CROP, CROP, 1.0)
  sem = semantic_map(rng, CROP, CROP, [(c, m == 1) for b in ("amodal", "modal")
                                       for c, m in zip(inst[b]["classes"], inst[b]["masks"])])
  if rng.random() < 0.5:  # flipped crop: the window stays the un-flipped one
    image, sem = image[:, ::-1].copy(), sem[:, ::-1].copy()
    for b in inst.values():
      b["masks"] = b["masks"][:, :, ::-1].copy()
  return window, image, sem, inst["modal"], inst["amodal"]


def _ref_results(window, image, sem, modal, amodal, img_prefix):
  def as_dict(branch):
    out, count = {}, {}
    for c, m in zip(branch["classes"], branch["masks"]):
      count[int(c)] = count.get(int(c), 0) + 1
      out[int(c) * 1000 + count[int(c)]] = m.copy()
    return out
  return {"gt_semantic": sem.astype(np.float32), "gt_instance": as_dict(modal),
          "gt_ainstance": as_dict(amodal), "crop_bbox": window,
          "img": np.ascontiguousarray(image[:, :, ::-1]), "img_prefix": img_prefix}


def _check_same(ours, ref):
  np.testing.assert_array_equal(ours["image"], ref["img"][:, :, ::-1])
  np.testing.assert_array_equal(ours["semantic"], ref["gt_semantic_seg"])
  for b, rk in (("modal", ("gt_masks", "gt_labels", "gt_bboxes")),
                ("amodal", ("gt_amasks", "gt_alabels", "gt_abboxes"))):
    np.testing.assert_array_equal(ours[b]["masks"], ref[rk[0]], err_msg=b)
    np.testing.assert_array_equal(ours[b]["classes"] - 11, ref[rk[1]], err_msg=b)
    np.testing.assert_array_equal(ours[b]["boxes"], ref[rk[2]].reshape(-1, 4), err_msg=b)


def bench_paste(args, root, paste_cfg, max_instances):
  _log(f"== (i) ADCL paste per 400x400 crop, pool of ~{args.pool} entries on 400x2048")
  rng = np.random.default_rng(0)
  index, ref_paths, hardlabel_dir, img_prefix, decoded = build_pool(root, args.pool, rng)
  ref = RefPaste(hardlabel_dir, num_hard_label=paste_cfg["max_paste"])
  assert sorted(ref_paths) == ref.hardlables_list, "reference glob != our index entries"
  ours_t, pad_t, ref_t, pasted, checked = [], [], [], [], 0
  srng = np.random.default_rng(1)
  for s in range(args.samples):
    window, image, sem, modal, amodal = pl_sample(srng, decoded)
    t = _now()
    out = adcl_paste.paste(image, sem, modal, amodal, window, index,
                           np.random.default_rng(100 + s), **paste_cfg)
    ours_t.append(_since(t))
    t = _now()
    for b in ("modal", "amodal"):
      adcl_paste.pad_instances(out[b], max_instances)
    pad_t.append(_since(t))
    pasted.append(out["num_pasted"])
    if s < args.ref_samples:
      draw = [ref_paths[j] for j in out["candidates"]]
      results = _ref_results(window, image, sem, modal, amodal, img_prefix)
      t = _now()
      results = ref(results, draw)
      ref_t.append(_since(t))
      same = adcl_paste.paste(image, sem, modal, amodal, window, index, None,
                              candidates=out["candidates"],
                              **(paste_cfg | dict(modal_box_from_visible=False,
                                                  box_rule="nonzero", min_visible=25)))
      _check_same(same, results)
      checked += 1
  ours = np.array(ours_t)
  pad = np.array(pad_t)
  refa = np.array(ref_t)
  _log(f"  outputs identical to the reference port on all {checked} reference crops "
       f"(reference switches); pasted per crop: mean {np.mean(pasted):.2f}, "
       f"min {min(pasted)}, max {max(pasted)}")
  _log(f"  ours paste          {1e3 * ours[:, 0].mean():7.2f} ms wall / "
       f"{1e3 * ours[:, 1].mean():7.2f} ms CPU  (median wall {1e3 * np.median(ours[:, 0]):.2f}, "
       f"{len(ours)} crops)")
  _log(f"  ours + pad_instances{1e3 * (ours + pad)[:, 0].mean():7.2f} ms wall / "
       f"{1e3 * (ours + pad)[:, 1].mean():7.2f} ms CPU  (max_instances {max_instances})")
  _log(f"  reference           {1e3 * refa[:, 0].mean():7.1f} ms wall / "
       f"{1e3 * refa[:, 1].mean():7.1f} ms CPU  (median wall {1e3 * np.median(refa[:, 0]):.1f}, "
       f"{len(refa)} crops)")
  k = len(refa)
  r_w = refa[:, 0].mean() / ours[:k, 0].mean()
  r_c = refa[:, 1].mean() / ours[:k, 1].mean()
  r_wp = refa[:, 0].mean() / (ours + pad)[:k, 0].mean()
  _log(f"  ratio reference/ours on the same {k} crops: {r_w:.1f}x wall, {r_c:.1f}x CPU; "
       f"with our padding {r_wp:.1f}x wall (target >= 20x)")
  # Where the reference's time goes.
  t = _now()
  for f in ref_paths[:80]:
    np.array(Image.open(f), dtype=np.uint8)
  png = _since(t)[0] / min(80, len(ref_paths))
  jpgs = sorted(glob.glob(os.path.join(img_prefix, "*", "*.jpg")))[:10]
  t = _now()
  for f in jpgs:
    np.array(Image.open(f), dtype=np.uint8)
  jpg = _since(t)[0] / len(jpgs)
  _log(f"  reference I/O: one 400x2048 mask PNG read {1e3 * png:.2f} ms (x80 = "
       f"{80e3 * png:.0f} ms), one 400x2048 JPG panorama {1e3 * jpg:.1f} ms")
  return {"ours_ms": 1e3 * ours[:, 0].mean(), "ref_ms": 1e3 * refa[:, 0].mean(),
          "ratio_wall": r_w, "ratio_cpu": r_c}


# ------------------------------------------------------------------ (ii) pipeline


@dataclasses.dataclass(frozen=True)
class StubReader:
  """What ``AdaptPairTransform`` reads from a layout reader."""
  root: str
  keys: tuple
  image_size: tuple

  def __len__(self):
    return len(self.keys)

  def load_image(self, i):
    return layouts_common.read_rgb(os.path.join(self.root, self.keys[i] + ".png"),
                                   "target image", self.image_size)


def build_target_set(root, n, size, rng):
  """``n`` PNG panoramas, packed OPLL labels, a pool index; returns (reader, packed, pool)."""
  h, w = size
  s = h / H
  img_root, packed, shards = (os.path.join(root, d) for d in ("images", "packed", "shards"))
  t = _now()
  names, shard_paths, n_entries = [], [], 0
  for p in range(n):
    name = f"{CITY}/tgt{p:05d}"
    img = panorama(rng, h, w)
    path = os.path.join(img_root, name + ".png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)
    inst = pl_instances(rng, h, w, s)
    sem = semantic_map(rng, h, w, [(c, m == 1) for b in ("amodal", "modal")
                                   for c, m in zip(inst[b]["classes"], inst[b]["masks"])])
    branches = {}
    for b, v in inst.items():
      k = len(v["classes"])
      branches[b] = {"masks": v["masks"] == 1, "classes": v["classes"],
                     "scores": np.ones(k, np.float32), "det_index": np.arange(k, dtype=np.int32),
                     "uncertain": (v["masks"] == 255).any(0)}
    packed_labels.write_packed(os.path.join(packed, name + ".npz"), name, sem,
                           branches["modal"], branches["amodal"])
    entries = pool_for(rng, img, 2, s)
    sp = pool_lib.shard_path(shards, name)
    pool_lib.write_shard(sp, pool_lib.entry_record(name, img, entries))
    shard_paths.append(sp)
    n_entries += len(entries)
    names.append(name)
  pool_path = os.path.join(root, "pool_index.npz")
  pool_lib.build_index(shard_paths, pool_path)
  _log(f"target set: {n} panoramas {h}x{w}, packed labels, pool of {n_entries} entries, "
       f"written in {_since(t)[0]:.1f} s")
  return StubReader(img_root, tuple(names), (h, w)), packed, pool_path


def bench_pipeline(args, root, cfg):
  from unlock_jax.data import pipeline
  a = cfg.adapt
  size = tuple(cfg.data.target.image_size)
  _log(f"== (ii) input pipeline: adapt_iterator, {size[0]}x{size[1]} panoramas, "
       f"{tuple(a.crop_size)} crops, batch {a.batch_size}, max_instances {a.max_instances}, "
       f"num_workers {a.num_workers}")
  reader, packed, pool_path = build_target_set(root, args.targets, size,
                                               np.random.default_rng(2))
  it = pipeline.adapt_iterator(
      reader, packed_dir=packed, pool_path=pool_path, batch_size=a.batch_size,
      crop_size=tuple(a.crop_size), seed=0, cat_max_ratio=a.cat_max_ratio, flip=a.flip,
      max_instances=a.max_instances, paste=a.paste.to_dict(), num_workers=a.num_workers)
  t = _now()
  first = next(it)
  first_s = _since(t)[0]
  t = _now()
  for _ in range(args.batches):
    next(it)
  wall, cpu = _since(t)
  rate = args.batches / wall
  _log(f"  first batch {first_s:.2f} s (threads, pool index load); then {args.batches} "
       f"batches in {wall:.2f} s wall / {cpu:.2f} s CPU: {rate:.1f} batches/s "
       f"({1e3 * wall / args.batches:.1f} ms, {1e3 * cpu / args.batches:.1f} ms CPU per batch)")
  shapes = {k: v.shape for k, v in first.items()}
  _log(f"  batch: {shapes}")
  return it, first, rate


# ------------------------------------------------------------------ (ii)/(iii) steps


def _cost_flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _time_steps(compiled, state, args_rest, n, warm=True):
  """(state, [(wall, cpu)] * n), after one warm-up call if ``warm``."""
  import jax
  if warm:
    state, m = compiled(state, *args_rest)
    jax.block_until_ready(m)
  times = []
  for _ in range(n):
    t = _now()
    state, m = compiled(state, *args_rest)
    jax.block_until_ready(m)
    times.append(_since(t))
  return state, times


def _runs(times):
  return ", ".join(f"{1e3 * w:.0f}" for w, _ in times)


def bench_steps(args, cfg, it, first, input_rate):
  import jax
  from unlock_jax import sharding as shd
  from unlock_jax.models import amodalpass
  from unlock_jax.models import variables as variables_lib
  from unlock_jax.methods import unlock
  from unlock_jax.train import adapt as adapt_lib
  from unlock_jax.train import optim, steps

  mesh = shd.make_mesh()
  model = amodalpass.build(cfg.model)
  crop = tuple(cfg.adapt.crop_size)
  shape = (1, *crop, 3)
  variables = jax.jit(lambda r: variables_lib.init_variables(model, r, shape))(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  _log(f"== (ii)/(iii) steps: configs/demo.py model ({n_params / 1e6:.2f} M params), "
       f"batch {cfg.adapt.batch_size} x {crop}, devices {jax.devices()}")
  repl = shd.replicated(mesh)
  base = jax.device_put(jax.random.key(1), repl)
  batch = shd.put_batch(first, mesh)

  tx, sched = optim.make(cfg.adapt.optim, cfg.adapt.total_steps, variables["params"])
  state = adapt_lib.init_state(variables, tx, mesh)
  src = jax.device_put(variables["params"], repl)
  step = unlock.make_step(model, tx, sched, mesh, state, cfg=cfg.adapt)
  t = time.perf_counter()
  compiled = step.lower(state, batch, src, base).compile()
  a_compile = time.perf_counter() - t
  a_flops = _cost_flops(compiled)

  tx_s, sched_s = optim.make(cfg.optim, cfg.total_steps, variables["params"])
  state_s = steps.init_state(model, tx_s, jax.random.key(0), shape, mesh)
  s_step_fn = steps.make_source_step(model, tx_s, sched_s, mesh, state_s, loss_cfg=cfg.loss)
  s_batch = {k: v for k, v in batch.items() if k != keys.UNLABELED_IMAGE}
  t = time.perf_counter()
  s_compiled = s_step_fn.lower(state_s, s_batch, base).compile()
  s_compile = time.perf_counter() - t
  s_flops = _cost_flops(s_compiled)

  # Interleaved (adapt, source) rounds: load changes on the shared machine hit both.
  state, _ = _time_steps(compiled, state, (batch, src, base), 0)
  state_s, _ = _time_steps(s_compiled, state_s, (s_batch, base), 0)
  a_times, s_times = [], []
  for _ in range(args.steps):
    state, t_a = _time_steps(compiled, state, (batch, src, base), 1, warm=False)
    state_s, t_s = _time_steps(s_compiled, state_s, (s_batch, base), 1, warm=False)
    a_times += t_a
    s_times += t_s
  del state_s
  a_step, a_cpu = (statistics.median(x) for x in zip(*a_times))
  s_step, s_cpu = (statistics.median(x) for x in zip(*s_times))

  # The training loop's work with input: next + put_batch + step (grain's threads prefetch).
  t = _now()
  for _ in range(args.steps):
    b = shd.put_batch(next(it), mesh)
    state, m = compiled(state, b, src, base)
    jax.block_until_ready(m)
  loop_step = _since(t)[0] / args.steps
  del state

  _log(f"  adapt step   compile {a_compile:6.1f} s  median {1e3 * a_step:7.1f} ms wall / "
       f"{1e3 * a_cpu:7.1f} ms CPU (runs {_runs(a_times)})  {a_flops / 1e9:6.2f} GFLOP")
  _log(f"  source step  compile {s_compile:6.1f} s  median {1e3 * s_step:7.1f} ms wall / "
       f"{1e3 * s_cpu:7.1f} ms CPU (runs {_runs(s_times)})  {s_flops / 1e9:6.2f} GFLOP")
  step_rate = 1.0 / a_step
  _log(f"  (ii) input {input_rate:.1f} batches/s vs adapt step {step_rate:.2f} steps/s: "
       f"input {input_rate / step_rate:.1f}x faster than the step (target >= 2x)")
  _log(f"      loop with input (next + put_batch + step, {args.steps} steps): "
       f"{1e3 * loop_step:.1f} ms per step = {loop_step / a_step:.2f}x the step alone")
  _log(f"  (iii) adapt / source step {a_step / s_step:.2f}x wall, {a_cpu / s_cpu:.2f}x CPU, "
       f"{a_flops / s_flops:.2f}x FLOPs (same model, batch, crop; {args.steps} interleaved "
       f"rounds)")
  return {"adapt_ms": 1e3 * a_step, "source_ms": 1e3 * s_step,
          "input_over_step": input_rate / step_rate, "adapt_over_source": a_step / s_step}


# ------------------------------------------------------------------ (v) UDA vs UNLOCK


def bench_uda(args):
  import jax
  from unlock_jax import methods
  from unlock_jax import sharding as shd
  from unlock_jax.models import amodalpass
  from unlock_jax.models import variables as variables_lib

  if args.tiny:
    from configs.synth import tiny
    cfg, name = tiny.get_config("full=1"), "configs/synth/tiny.py:full=1"
  else:
    from configs import demo as demo_cfg
    cfg, name = demo_cfg.get_config("method=uda"), "configs/demo.py:method=uda"
  a = cfg.adapt
  b, crop, n_inst = a.batch_size, tuple(cfg.input.crop_size), a.max_instances
  a.crop_size = crop
  mesh = shd.make_mesh()
  model = amodalpass.build(cfg.model)
  variables = jax.jit(lambda r: variables_lib.init_variables(model, r, (1, *crop, 3)))(
      jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  _log(f"== (v) UDA vs UNLOCK step: {name} model ({n_params / 1e6:.2f} M params), batch "
       f"{b}+{b} x {crop}, {n_inst} instances/branch, devices {jax.devices()}")
  host = b5_batch(np.random.default_rng(0), b, crop[0], n_inst)
  src = {f"source_{k}": v for k, v in host.items() if k != keys.UNLABELED_IMAGE}
  batches = {"unlock": host, "uda": src | {keys.UNLABELED_IMAGE: host[keys.UNLABELED_IMAGE]}}
  repl = shd.replicated(mesh)
  base = jax.device_put(jax.random.key(1), repl)
  runs = {}
  for method_name in ("unlock", "uda"):
    method = methods.get(method_name)
    tx, sched = method.optimizer(model, a, a.total_steps, variables["params"])
    state = method.init_state(variables, tx, mesh)
    frozen = jax.device_put(method.frozen(cfg, "", variables, mesh), repl)
    batch = shd.put_batch(batches[method_name], mesh)
    step = method.make_step(model, tx, sched, mesh, state, cfg=a)
    t = time.perf_counter()
    compiled = step.lower(state, batch, frozen, base).compile()
    compile_s = time.perf_counter() - t
    state, _ = _time_steps(compiled, state, (batch, frozen, base), 0)
    runs[method_name] = dict(compiled=compiled, state=state, args=(batch, frozen, base),
                             compile_s=compile_s, flops=_cost_flops(compiled), times=[])
  for _ in range(args.steps):  # interleaved: load changes on the shared machine hit both
    for r in runs.values():
      r["state"], t_r = _time_steps(r["compiled"], r["state"], r["args"], 1, warm=False)
      r["times"] += t_r
  med = {}
  for method_name, r in runs.items():
    med[method_name] = [statistics.median(x) for x in zip(*r["times"])]
    _log(f"  {method_name:6s} step  compile {r['compile_s']:6.1f} s  median "
         f"{1e3 * med[method_name][0]:7.1f} ms wall / {1e3 * med[method_name][1]:7.1f} ms CPU "
         f"(runs {_runs(r['times'])})  {r['flops'] / 1e9:6.2f} GFLOP")
  u, s_ = med["uda"], med["unlock"]
  _log(f"  (v) UDA / UNLOCK step {u[0] / s_[0]:.2f}x wall, {u[1] / s_[1]:.2f}x CPU, "
       f"{runs['uda']['flops'] / runs['unlock']['flops']:.2f}x FLOPs ({args.steps} interleaved "
       f"rounds)")
  return {"uda_over_unlock": u[0] / s_[0]}


# ------------------------------------------------------------------ (iv) B5

# Dense per-chip peaks, TFLOP/s: (bfloat16, float32 as executed: TF32 on NVIDIA,
# bf16 passes on TPU).
PEAKS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0),
         "L4": (121.0, 60.0), "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0),
         "TPU v5e": (197.0, 197.0), "TPU v5p": (459.0, 459.0), "TPU v6": (918.0, 918.0)}


def _peak(device, dtype):
  kind = device.device_kind
  for name, (bf16, f32) in PEAKS.items():
    if name.lower() in kind.lower():
      return (bf16 if dtype == "bfloat16" else f32), kind
  return 0.0, kind


def b5_batch(rng, b, size, n_inst):
  h = w = size
  masks = np.zeros((b, n_inst, h, w), np.uint8)
  boxes = np.zeros((b, n_inst, 4), np.float32)
  big = min(60, size // 3)  # objects 12..59 px at 400 (the B5 run), scaled below
  for i in range(b):
    for j in range(n_inst):
      y, x = rng.integers(0, h - big), rng.integers(0, w - big)
      hh, ww = rng.integers(max(2, big // 5), big, 2)
      masks[i, j, y:y + hh, x:x + ww] = 1
      boxes[i, j] = (x, y, x + ww - 1, y + hh - 1)
  out = {keys.IMAGE: rng.standard_normal((b, h, w, 3)).astype(np.float32),
         keys.SEMANTIC: rng.integers(0, 18, (b, h, w)).astype(np.int32),
         keys.UNLABELED_IMAGE: rng.standard_normal((b, h, w, 3)).astype(np.float32)}
  for p in ("modal", "amodal"):
    out[f"{p}_masks"] = masks
    out[f"{p}_classes"] = rng.integers(0, 7, (b, n_inst)).astype(np.int32)
    out[f"{p}_boxes"] = boxes
    out[f"{p}_valid"] = np.ones((b, n_inst), bool)
  return out


def bench_b5(args):
  import jax
  from configs import default
  from unlock_jax import sharding as shd
  from unlock_jax.models import amodalpass
  from unlock_jax.models import variables as variables_lib
  from unlock_jax.methods import unlock
  from unlock_jax.train import adapt as adapt_lib
  from unlock_jax.train import optim

  c = default.get_config()
  m = c.model
  m.instance_heads = True
  if args.dtype:
    m.compute_dtype = args.dtype
  a = c.adapt
  b, size, n_inst, total = a.batch_size, a.crop_size[0], a.max_instances, a.total_steps
  dev = jax.devices()[0]
  accel = dev.platform != "cpu"
  _log(f"== (iv) B5 adapt step: {m.backbone}, compute {m.compute_dtype}, batch {b}+{b} x "
       f"{size}x{size}, {n_inst} instances/branch, device {dev.device_kind} "
       f"({jax.device_count()} devices)")
  mesh = shd.make_mesh()
  repl, data = shd.replicated(mesh), shd.data_sharding(mesh)
  model = amodalpass.build(m)
  shape = (1, size, size, 3)
  init = jax.jit(lambda r: variables_lib.init_variables(model, r, shape))
  abstract_vars = jax.eval_shape(init, jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(abstract_vars["params"]))
  tx, sched = optim.make(a.optim, total, abstract_vars["params"])
  host = b5_batch(np.random.default_rng(0), b, size, n_inst)

  def sds(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  abstract_state = jax.tree.map(lambda x: sds(x, repl), jax.eval_shape(
      lambda v: adapt_lib.init_state(v, tx, mesh), abstract_vars))
  step = unlock.make_step(model, tx, sched, mesh, abstract_state, cfg=a)
  base = jax.device_put(jax.random.key(1), repl)
  t = time.perf_counter()
  lowered = step.lower(abstract_state, {k: sds(v, data) for k, v in host.items()},
                       jax.tree.map(lambda x: sds(x, repl), abstract_vars["params"]), base)
  lower_s = time.perf_counter() - t
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  lflops = float(cost.get("flops", 0.0)) if cost else 0.0
  _log(f"  {n_params / 1e6:.1f} M params; traced + lowered in {lower_s:.1f} s; "
       f"lowered-HLO cost analysis {lflops / 1e12:.2f} TFLOP per step")
  if not (accel or args.force):
    _log("  no accelerator: not compiled or timed (--force runs it on CPU anyway)")
    return
  variables = init(jax.random.key(0))
  state = adapt_lib.init_state(variables, tx, mesh)
  src = jax.device_put(variables["params"], repl)
  batch = shd.put_batch(host, mesh)
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  flops = _cost_flops(compiled)
  state, times = _time_steps(compiled, state, (batch, src, base), args.b5_runs)
  st = statistics.median(w for w, _ in times)
  peak, kind = _peak(dev, m.compute_dtype)
  peak = args.peak_tflops or peak
  rate = flops / st / 1e12
  util = f", {100 * rate / peak:.1f}% of {peak:.0f} TFLOP/s peak" if peak else ""
  mem = ""
  stats = getattr(dev, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    mem = f", peak device memory {stats['peak_bytes_in_use'] / 2**30:.1f} GiB"
  _log(f"  compile {compile_s:.1f} s; step median {1e3 * st:.1f} ms "
       f"(runs {_runs(times)}); {flops / 1e12:.2f} TFLOP/step "
       f"(compiled cost analysis), {rate:.1f} TFLOP/s{util}{mem}")
  _log(f"  projected {total} iterations: {total * st / 3600:.2f} h of steps "
       f"(input pipeline and checkpoints not included)")


# ------------------------------------------------------------------ main


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="small sizes; the compiles still take minutes on CPU")
  ap.add_argument("--pool", type=int, default=2000, help="(i) pool entries")
  ap.add_argument("--samples", type=int, default=40, help="(i) crops timed for ours")
  ap.add_argument("--ref-samples", type=int, default=12, help="(i) crops timed for the reference")
  ap.add_argument("--targets", type=int, default=60, help="(ii) target panoramas")
  ap.add_argument("--batches", type=int, default=40, help="(ii) batches timed")
  ap.add_argument("--steps", type=int, default=5, help="(ii)/(iii) steps timed per step kind")
  ap.add_argument("--skip", default="", help="comma list of parts to skip: paste,steps")
  ap.add_argument("--tmp", default=None, help="parent of the temp dir (default: system temp)")
  ap.add_argument("--keep", action="store_true", help="keep the temp dir")
  ap.add_argument("--b5", action="store_true", help="(iv) only: the B5 adapt step")
  ap.add_argument("--uda", action="store_true",
                  help="(v) only: the UDA baseline's step vs UNLOCK's (demo sizes)")
  ap.add_argument("--tiny", action="store_true", help="--uda: configs/synth/tiny.py's sizes")
  ap.add_argument("--force", action="store_true", help="--b5: compile and time even on CPU")
  ap.add_argument("--b5-runs", type=int, default=10)
  ap.add_argument("--dtype", default="", help="--b5: model compute_dtype (default config's)")
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="--b5: device peak TFLOP/s (default: table by device kind)")
  args = ap.parse_args()
  if args.quick:
    args.pool, args.samples, args.ref_samples = 400, 8, 3
    args.targets, args.batches, args.steps = 12, 8, 2
  args.ref_samples = min(args.ref_samples, args.samples)
  _log(f"benchmarks/adapt.py {' '.join(sys.argv[1:])}  "
       f"{datetime.datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} CPUs, "
       f"load average {os.getloadavg()[0]:.1f}")
  if args.b5:
    bench_b5(args)
    return
  if args.uda:
    bench_uda(args)
    return
  from configs import demo as demo_cfg
  cfg = demo_cfg.get_config()
  skip = set(filter(None, args.skip.split(",")))
  root = _tmpdir(args.tmp, "adapt_bench_")
  try:
    if "paste" not in skip:
      ref_paste = default.get_config().adapt.paste.to_dict()  # the 400x400 (reference) settings
      bench_paste(args, os.path.join(root, "paste"), ref_paste,
                  default.get_config().adapt.max_instances)
    if "steps" not in skip:
      it, first, rate = bench_pipeline(args, os.path.join(root, "target"), cfg)
      bench_steps(args, cfg, it, first, rate)
  finally:
    if args.keep:
      _log(f"kept {root}")
    else:
      shutil.rmtree(root, ignore_errors=True)
  _log(f"done {datetime.datetime.now().isoformat(timespec='seconds')}, "
       f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
