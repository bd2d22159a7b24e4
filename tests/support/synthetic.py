"""Random panoramic GT/prediction pairs in the evaluator's input format (tests, benchmarks).

A scene has stuff bands, occluding elliptical thing objects (amodal = whole ellipse,
modal = what later objects leave visible), crowd and void regions; the prediction is a
perturbed copy plus false positives, padded to a fixed number of detection rows.
"""
import numpy as np

from unlock_jax.data import labels


def _ellipse(h, w, cy, cx, ry, rx):
  """Bool HxW ellipse, computed only inside its box."""
  out = np.zeros((h, w), bool)
  y0, y1 = max(0, int(cy - ry)), min(h, int(cy + ry) + 1)
  x0, x1 = max(0, int(cx - rx)), min(w, int(cx + rx) + 1)
  if y0 >= y1 or x0 >= x1:
    return out
  yy, xx = np.mgrid[y0:y1, x0:x1]
  out[y0:y1, x0:x1] = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1
  return out


def _box(mask):
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return None
  return ys.min(), ys.max(), xs.min(), xs.max()


def make_gt(rng, h=64, w=256, n_things=6, crowd=True, void=True, max_radius=None):
  """One GT image dict: semantic, panoptic, segments, instance_ids, modal, amodal."""
  max_radius = max_radius or max(4, h // 4)
  sem = np.zeros((h, w), np.int64)
  bands = np.sort(rng.integers(1, h, size=3))
  sem[:bands[0]] = 10
  sem[bands[0]:bands[1]] = rng.choice([2, 8])
  sem[bands[1]:bands[2]] = rng.choice([1, 9])
  for _ in range(3):  # small stuff patches (poles, signs...)
    y, x = rng.integers(0, h), rng.integers(0, w)
    sem[y:y + rng.integers(2, h // 3 + 3), x:x + rng.integers(2, 12)] = rng.choice([3, 4, 5, 6, 7])
  pan = sem.copy()
  segments, amodal_masks = [], []
  counters = {}
  for k in range(n_things):
    cls = int(rng.integers(11, 18))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    am = _ellipse(h, w, cy, cx, rng.uniform(1, max_radius), rng.uniform(1, 2 * max_radius))
    n = counters.get(cls, 1)
    counters[cls] = n + 1
    seg_id = cls * labels.LABEL_DIVISOR + n
    pan[am] = seg_id  # later objects occlude earlier ones
    amodal_masks.append((seg_id, cls, am, k + 1))
  if crowd:  # a crowd region of one thing class: id = class id, iscrowd 1
    cls = int(rng.integers(11, 18))
    y, x = rng.integers(0, h - 4), rng.integers(0, w - 12)
    pan[y:y + 4, x:x + 12] = cls
  if void:
    y, x = rng.integers(0, h - 3), rng.integers(0, w - 10)
    pan[y:y + 3, x:x + 10] = labels.IGNORE
  semantic = np.full((h, w), labels.IGNORE, np.uint8)
  ids, counts = np.unique(pan, return_counts=True)
  amodal_of = {seg_id: a_id for seg_id, _, _, a_id in amodal_masks}
  for seg_id, area in zip(ids, counts):
    seg_id = int(seg_id)
    if seg_id == labels.IGNORE:
      continue
    is_crowd = seg_id < labels.LABEL_DIVISOR and labels.is_thing(seg_id)
    cat = seg_id if seg_id < labels.LABEL_DIVISOR else seg_id // labels.LABEL_DIVISOR
    segments.append({"id": seg_id, "category_id": cat, "iscrowd": int(is_crowd),
                     "area": int(area), "amodal_id": amodal_of.get(seg_id, 0)})
    if not is_crowd:
      semantic[pan == seg_id] = cat
  instance_ids = pan.astype(np.int32)  # stuff=class, thing=class*1000+k, group, 255 void
  modal, amodal = [], []
  for seg_id, cls, am, a_id in amodal_masks:
    mm = pan == seg_id
    bm, ba = _box(mm), _box(am)
    if bm is None or ba is None:
      continue
    modal.append({"mask": mm.astype(np.uint8), "category_id": cls, "seg_id": seg_id})
    # The reader's filter (docs/method.md §8.1): boxes at least 2 px wide and high.
    if bm[0] < bm[1] and bm[2] < bm[3] and ba[0] < ba[1] and ba[2] < ba[3]:
      amodal.append({"mask": am.astype(np.uint8), "category_id": cls, "seg_id": seg_id,
                     "amodal_id": a_id})
  return {"semantic": semantic, "panoptic": pan.astype(np.int32), "segments": segments,
          "instance_ids": instance_ids, "modal": modal, "amodal": amodal,
          "amodal_masks_all": [(s, c, a) for s, c, a, _ in amodal_masks]}


def _perturb(rng, mask, max_shift):
  dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
  out = np.roll(mask, (dy, dx), axis=(0, 1))
  if rng.random() < 0.3:  # grow a little
    out = out | np.roll(out, 1, axis=0) | np.roll(out, 1, axis=1)
  return out


def _pack(rng, masks, classes, h, w, num_rows):
  d = len(masks)
  if d > num_rows:
    raise ValueError(f"{d} detections do not fit in {num_rows} rows")
  out_masks = np.zeros((num_rows, h, w), bool)
  boxes = np.zeros((num_rows, 4), np.float32)
  for i, m in enumerate(masks):
    out_masks[i] = m
    b = _box(m)
    if b is not None:
      boxes[i] = (b[2], b[0], b[3] + 1, b[1] + 1)
  scores = np.zeros(num_rows, np.float32)
  scores[:d] = rng.uniform(0.05, 1.0, size=d).astype(np.float32)
  cls = np.zeros(num_rows, np.int32)
  cls[:d] = classes
  valid = np.zeros(num_rows, bool)
  valid[:d] = True
  perm = rng.permutation(num_rows)  # arbitrary order: the fusion must sort them
  return {"boxes": boxes[perm], "scores": scores[perm], "classes": cls[perm],
          "masks": out_masks[perm], "valid": valid[perm]}


def make_prediction(rng, gt, num_rows=16, n_false=3, max_shift=2, sem_noise=4,
                    fill_rows=False):
  """Perturbed prediction for ``gt``: sem, modal and amodal detection dicts.

  With ``fill_rows`` false positives are added until all ``num_rows`` rows are valid.
  """
  h, w = gt["semantic"].shape
  sem = gt["semantic"].astype(np.int64).copy()
  sem[sem == labels.IGNORE] = rng.integers(0, labels.NUM_CLASSES)
  for _ in range(sem_noise):
    y, x = rng.integers(0, h), rng.integers(0, w)
    sem[y:y + rng.integers(1, h // 4 + 2), x:x + rng.integers(1, w // 8 + 2)] = rng.integers(
        0, labels.NUM_CLASSES)
  out = {"sem": sem.astype(np.int32)}
  for kind in ("modal", "amodal"):
    masks, classes = [], []
    for seg_id, cls, am in gt["amodal_masks_all"]:
      src = (gt["panoptic"] == seg_id) if kind == "modal" else am
      if rng.random() < 0.15:
        continue  # missed object
      masks.append(_perturb(rng, src, max_shift))
      classes.append(cls - labels.FIRST_THING if rng.random() < 0.85
                     else rng.integers(0, labels.NUM_THINGS))
      if rng.random() < 0.2:  # a duplicate detection
        masks.append(_perturb(rng, src, max_shift + 1))
        classes.append(classes[-1])
    if fill_rows:
      n_false = max(n_false, num_rows - len(masks))
    for _ in range(n_false):
      masks.append(_ellipse(h, w, rng.uniform(0, h), rng.uniform(0, w),
                            rng.uniform(2, h / 4), rng.uniform(2, h / 2)))
      classes.append(rng.integers(0, labels.NUM_THINGS))
    out[kind] = _pack(rng, masks[:num_rows], classes[:num_rows], h, w, num_rows)
  return out
