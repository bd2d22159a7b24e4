"""Turns a rendered scene into exact ground truth: panoptic ids, segments, amodal polygons, stats.

Rules (mirroring how the real data sets are labelled):
* stuff segment id = class id (road = 0); thing id = class*1000 + k, k ≥ 1;
* things with no visible pixel are dropped; tiny visible things (modal area
  below ``crowd_area``) become one crowd segment per class (id = class id,
  ``iscrowd=1``, no amodal annotation);
* the ego vehicle is void: id 255 in the panoptic map, not listed in segments;
* each non-crowd thing gets an amodal annotation (polygons of its mask
  rendered alone) whose id is ``image_id*1000 + j``; stuff and crowd segments
  carry ``amodal_id = 0`` (annotation ids start at 1001, so 0 points nowhere).
"""
import numpy as np

from unlock_jax.data import labels
from unlock_jax.data.synthpass import polygons as poly

VOID_ID = 255


def crowd_area(scale: float) -> int:
  """Visible-area threshold (pixels) below which a thing is labelled crowd."""
  return max(3, int(round(150 * scale * scale)))


def _bbox_xywh(mask: np.ndarray) -> list:
  ys, xs = np.nonzero(mask)
  if xs.size == 0:
    return [0, 0, 0, 0]
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def annotate(rendering: dict, thing_cls: list, image_id: int, min_area: int) -> dict:
  """Ground truth of one rendered image.

  Returns:
    dict with ``panoptic`` int32 [H,W], ``semantic`` uint8 [H,W] (train ids;
    crowd pixels keep their class, void 255), ``instance`` uint16 [H,W]
    (Cityscapes-style instance ids), ``segments`` (COCO ``segments_info``),
    ``amodal`` (COCO annotations without ``image_id``), ``stats``.
  """
  sem = rendering["semantic"]
  thing = rendering["thing"]
  h, w = sem.shape
  panoptic = np.where(sem == labels.IGNORE, VOID_ID, sem).astype(np.int32)
  instance = panoptic.astype(np.uint16)
  segments, amodal_anns = [], []
  counters = {c: 0 for c in labels.THING_IDS}
  stats = dict(instances=0, crowd=0, occluded=0, occluded_by_thing=0, occluded_by_stuff=0,
               visible_fraction=[], per_class={labels.CLASS_NAMES[c]: 0 for c in labels.THING_IDS})
  for c in labels.STUFF_IDS:
    m = (sem == c) & (thing < 0)
    if m.any():
      segments.append(dict(id=int(c), category_id=int(c), iscrowd=0, area=int(m.sum()),
                           bbox=_bbox_xywh(m), amodal_id=0))
  crowd = {}
  j = 0
  for t, cls in enumerate(thing_cls):
    modal = thing == t
    area = int(modal.sum())
    if area == 0:
      continue
    if area < min_area:
      crowd[cls] = crowd.get(cls, np.zeros_like(modal)) | modal
      continue
    counters[cls] += 1
    sid = cls * labels.LABEL_DIVISOR + counters[cls]
    amask = rendering["amodal"][t]
    j += 1
    ann_id = image_id * 1000 + j
    panoptic[modal] = sid
    instance[modal] = sid
    segments.append(dict(id=int(sid), category_id=int(cls), iscrowd=0, area=area,
                         bbox=_bbox_xywh(modal), amodal_id=int(ann_id)))
    amodal_anns.append(dict(id=int(ann_id), category_id=int(cls),
                            segmentation=poly.mask_to_polygons(amask),
                            area=int(amask.sum()), bbox=_bbox_xywh(amask), iscrowd=0))
    hidden = amask & ~modal
    stats["instances"] += 1
    stats["per_class"][labels.CLASS_NAMES[cls]] += 1
    stats["visible_fraction"].append(area / max(int(amask.sum()), 1))
    if hidden.any():
      stats["occluded"] += 1
      stats["occluded_by_thing"] += int((thing[hidden] >= 0).any())
      by_stuff = (thing[hidden] < 0) & (sem[hidden] != labels.IGNORE)
      stats["occluded_by_stuff"] += int(by_stuff.any())
  for cls in sorted(crowd):
    m = crowd[cls]
    panoptic[m] = cls
    instance[m] = cls
    segments.append(dict(id=int(cls), category_id=int(cls), iscrowd=1, area=int(m.sum()),
                         bbox=_bbox_xywh(m), amodal_id=0))
    stats["crowd"] += 1
  return dict(panoptic=panoptic, semantic=sem.astype(np.uint8), instance=instance,
              segments=segments, amodal=amodal_anns, stats=stats)
