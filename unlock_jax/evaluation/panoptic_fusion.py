"""Fuses semantic and instance predictions into modal and amodal panoptic predictions.

docs/method.md §8.3 (modal) and §8.7 (amodal); reference
``tools/panoptic_deeplab/post_processing/evaluation_format.py`` L156-238,
``instance_post_processing.py`` L156-212 and ``amodal_post_processing.py`` L156-234.
Every step runs on bincounts and on masks cropped to their boxes; nothing loops over pixels.
"""
import dataclasses

import numpy as np

from unlock_jax import constants
from unlock_jax.data import labels
from unlock_jax.evaluation import masks as masks_lib

VOID_LABEL = labels.LABEL_DIVISOR * labels.IGNORE  # 255000, "no confident prediction"
STUFF_AREA = constants.STUFF_AREA


@dataclasses.dataclass
class Detections:
  """Valid detections in the reference's order: class ascending, then score descending.

  ``classes`` are instance classes 0..6, ``scores`` keep their input dtype (the reference
  compares float32 scores with the thresholds), ``crops`` are the masks cropped to boxes.
  """
  classes: np.ndarray
  scores: np.ndarray
  crops: list
  shape: tuple


def prepare_detections(dets: dict) -> Detections:
  """Sorts the valid rows of a padded detection dict and crops their masks once.

  mmdet stores detections per class in descending score order; the padded arrays we
  receive may be in any order, so that order is rebuilt here (stable for equal scores).
  """
  valid = np.asarray(dets["valid"], bool)
  idx = np.flatnonzero(valid)
  classes = np.asarray(dets["classes"])[idx].astype(np.int64)
  scores = np.asarray(dets["scores"])[idx]
  order = np.lexsort((-scores.astype(np.float64), classes))
  idx = idx[order]
  masks = np.asarray(dets["masks"])
  if masks.dtype != bool:
    masks = masks != 0
  # One pass over all rows of the stack (padding rows included: cheaper than a gather).
  occupancy = masks_lib.row_occupancy(masks) if idx.size else None
  return Detections(classes=classes[order], scores=scores[order],
                    crops=[masks_lib.crop_mask(masks[i], occupancy[i]) for i in idx],
                    shape=tuple(masks.shape[1:]))


def _mode(values: np.ndarray, num_classes: int) -> int:
  """Most frequent value; ties go to the smallest (torch.mode leaves this unspecified)."""
  return int(np.argmax(np.bincount(values, minlength=num_classes)))


def _stuff_lut(sem: np.ndarray, free: np.ndarray, num_classes: int, stuff_area: int):
  """Per class id: ``cls*1000`` if it is stuff and covers >= stuff_area free pixels."""
  area = np.bincount(sem[free], minlength=num_classes)
  keep = (area >= stuff_area) & (area > 0) & ~labels.is_thing(np.arange(num_classes))
  return np.where(keep, np.arange(num_classes) * labels.LABEL_DIVISOR,
                  VOID_LABEL).astype(np.int32)


def _check_sem(sem: np.ndarray, num_classes: int) -> np.ndarray:
  sem = np.asarray(sem).astype(np.int64)
  if sem.size and (sem.min() < 0 or sem.max() >= num_classes):
    raise ValueError("semantic prediction outside [0, num_classes)")
  return sem


def modal_instance_map(dets: Detections, tau_m: float) -> np.ndarray:
  """Instance id map ``(11+c)*1000 + k`` of detections with score >= tau_m.

  k counts every detection of the class, kept or not. Later detections (lower scores)
  overwrite earlier ones where masks overlap: the reference's QUIRK, kept on purpose.
  """
  ins = np.zeros(dets.shape, np.int32)
  counters = {}
  for c, s, crop in zip(dets.classes, dets.scores, dets.crops):
    k = counters.get(int(c), 1)
    counters[int(c)] = k + 1
    if s >= tau_m and crop.area:
      ins[crop.window][crop.mask] = (labels.FIRST_THING + c) * labels.LABEL_DIVISOR + k
  return ins


def merge_semantic_and_instance(sem: np.ndarray, ins: np.ndarray,
                                stuff_area: int = STUFF_AREA,
                                num_classes: int = labels.NUM_CLASSES,
                                void_to_road: bool = True) -> np.ndarray:
  """Modal panoptic map (§8.3): things by semantic majority vote, then stuff.

  The detector class is ignored: an instance takes the most frequent *semantic* thing
  class under it, and only its thing-predicted pixels. Stuff regions smaller than
  ``stuff_area`` become void. With ``void_to_road`` (the reference evaluator's update)
  void becomes id 0, i.e. it is scored as road (QUIRK).
  """
  sem = _check_sem(sem, num_classes)
  uniq, idx, _ = masks_lib.compact_ids(ins)
  sem_thing = labels.is_thing(sem)
  thing_seg = ins > 0
  sel = thing_seg & sem_thing
  hist = np.bincount(idx[sel].astype(np.int64) * num_classes + sem[sel],
                     minlength=uniq.size * num_classes).reshape(uniq.size, num_classes)
  ins_pan = np.full(uniq.size, VOID_LABEL, np.int64)
  counters = {}
  for k in np.flatnonzero((uniq > 0) & (hist.sum(axis=1) > 0)):  # ascending ids
    cls = int(np.argmax(hist[k]))  # torch.mode tie-break unspecified: smallest value
    n = counters.get(cls, 1)
    counters[cls] = n + 1
    ins_pan[k] = cls * labels.LABEL_DIVISOR + n
  pan = np.full(sem.shape, VOID_LABEL, np.int64)
  pan[sel] = ins_pan[idx[sel]]
  free = ~thing_seg
  lut = _stuff_lut(sem, free, num_classes, stuff_area)
  stuff = free & ~sem_thing
  pan[stuff] = lut[sem[stuff]]
  if void_to_road:
    pan[pan == VOID_LABEL] = 0
  return pan.astype(np.int32)


def modal_panoptic(sem: np.ndarray, dets: Detections, tau_m: float,
                   stuff_area: int = STUFF_AREA) -> np.ndarray:
  """Semantic + modal detections → the panoptic map the reference scores (void as road)."""
  return merge_semantic_and_instance(sem, modal_instance_map(dets, tau_m), stuff_area)


@dataclasses.dataclass
class AmodalPanoptic:
  """Layered amodal panoptic prediction (§8.7).

  ``layer0`` [H,W] int32: stuff ids ``cls*1000`` (void already turned into 0 = road) with
  VOID_LABEL on every instance pixel. ``ids``/``categories`` [K] and ``crops``: one
  instance layer each, its mask clipped to semantic-thing pixels.
  """
  layer0: np.ndarray
  ids: np.ndarray
  categories: np.ndarray
  crops: list

  def layers(self) -> list:
    """The reference's list of full HxW layers (VOID_LABEL outside each segment)."""
    out = [self.layer0]
    for seg_id, crop in zip(self.ids, self.crops):
      layer = np.full(self.layer0.shape, VOID_LABEL, np.int32)
      layer[crop.window][crop.mask] = seg_id
      out.append(layer)
    return out


def amodal_panoptic(sem: np.ndarray, dets: Detections, tau_a: float,
                    stuff_area: int = STUFF_AREA,
                    num_classes: int = labels.NUM_CLASSES) -> AmodalPanoptic:
  """Semantic + amodal detections → layered amodal panoptic prediction (§8.7).

  QUIRKs kept: each kept amodal mask is clipped to pixels predicted as a thing class;
  stuff under any kept (unclipped) mask and every other void pixel become road (id 0).
  """
  sem = _check_sem(sem, num_classes)
  kept = [crop for s, crop in zip(dets.scores, dets.crops) if s >= tau_a]
  cover = np.zeros(sem.shape, np.int32)
  for crop in kept:
    cover[crop.window] += crop.mask
  thing_seg = cover > 0
  sem_thing = labels.is_thing(sem)
  layer0 = np.full(sem.shape, VOID_LABEL, np.int64)
  free = ~thing_seg
  lut = _stuff_lut(sem, free, num_classes, stuff_area)
  stuff = free & ~sem_thing
  layer0[stuff] = lut[sem[stuff]]
  layer0[layer0 == VOID_LABEL] = 0
  ids, cats, crops, counters = [], [], [], {}
  for crop in kept:
    if not crop.area:
      continue
    window = crop.window
    tm = crop.mask & sem_thing[window]
    if not tm.any():
      continue
    sem_w = sem[window]
    alone = tm & (cover[window] <= 1)
    cls = _mode(sem_w[alone] if alone.any() else sem_w[tm], num_classes)
    n = counters.get(cls, 1)
    counters[cls] = n + 1
    layer0[window][tm] = VOID_LABEL
    ids.append(cls * labels.LABEL_DIVISOR + n)
    cats.append(cls)
    crops.append(masks_lib.Crop(crop.y0, crop.y1, crop.x0, crop.x1, tm,
                                int(np.count_nonzero(tm))))
  return AmodalPanoptic(layer0=layer0.astype(np.int32), ids=np.array(ids, np.int64),
                        categories=np.array(cats, np.int64), crops=crops)
