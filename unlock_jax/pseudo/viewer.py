"""Pictures of pseudo-labels and of predictions, for a human to judge them at a glance.

Panels are stacked vertically, each under a text strip (``pictures.label_panel``),
and end with the class-colour legend of the classes shown (``pictures.legend``).
Conventions shared by both pictures:

* Semantic overlays are ``(image + class colour) // 2``; an unlabelled pixel (255)
  shows the image at 35 % with white hatch stripes, so it never reads as a class.
* Instances keep their class hue with a stable per-instance shade
  (``pictures.shade(class * 1000 + k)``) and a white outline where an instance meets
  anything else.
* Occlusion rule: modal and amodal masks come from separate lists, so an amodal mask
  is paired with the same-class instance of the modal id map (highest score on top)
  that covers most of its pixels. Its *visible* part is the amodal mask on that
  instance's pixels and is drawn solid; the rest is *occluded* and hatched (all of it
  when no same-class modal instance lies under it). Drawing is ``pictures.colour_amodal``.
"""
from __future__ import annotations

import numpy as np

from unlock_jax.data import labels
from unlock_jax.evaluation import pictures

WHITE = np.array([255, 255, 255], np.uint8)
UNCERTAIN_MODAL = np.array([255, 150, 0], np.uint8)  # orange
UNCERTAIN_AMODAL = np.array([0, 220, 255], np.uint8)  # cyan
_UNPAIRED = 500  # shade offset of amodal instances without a modal twin


def _dim(image: np.ndarray) -> np.ndarray:
  return (image.astype(np.float32) * 0.35).astype(np.uint8)


def _outline(ids: np.ndarray) -> np.ndarray:
  """Pixels of an instance (id >= 0) with a 4-neighbour of another id."""
  edge = np.zeros(ids.shape, bool)
  diff_x, diff_y = ids[:, 1:] != ids[:, :-1], ids[1:, :] != ids[:-1, :]
  edge[:, 1:] |= diff_x
  edge[:, :-1] |= diff_x
  edge[1:, :] |= diff_y
  edge[:-1, :] |= diff_y
  return edge & (ids >= 0)


def semantic_overlay(image: np.ndarray, semantic: np.ndarray) -> np.ndarray:
  """``(image + palette) // 2`` on labelled pixels; unlabelled: dimmed, white hatch."""
  sem = np.asarray(semantic)
  out = ((image.astype(np.uint16) + pictures.colour_semantic(sem)) // 2).astype(np.uint8)
  none = sem == labels.IGNORE
  out[none] = _dim(image)[none]
  out[none & pictures.hatch(sem.shape)] = WHITE
  return out


def instance_map(masks, scores, shape, keep=None) -> np.ndarray:
  """int32 ``shape``: index of the highest-scoring kept mask on each pixel, -1 elsewhere."""
  ids = np.full(shape, -1, np.int32)
  scores = np.asarray(scores, np.float64).reshape(-1)
  for j in np.argsort(scores, kind="stable"):  # ascending: the best one is painted last
    if keep is None or keep[j]:
      ids[np.asarray(masks[j]) != 0] = j
  return ids


def amodal_instances(amodal_masks, amodal_classes, ids, modal_classes, keep=None) -> list:
  """``(seg_id, amodal, visible)`` per kept amodal mask for ``pictures.colour_amodal``
  (the occlusion rule of the module docstring). A paired mask takes its modal twin's
  shade id ``class * 1000 + twin + 1``; an unpaired one ``class * 1000 + 501 + j``."""
  out = []
  modal_classes = np.asarray(modal_classes).reshape(-1)
  for j, (mask, cls) in enumerate(zip(amodal_masks, np.asarray(amodal_classes).reshape(-1))):
    if keep is not None and not keep[j]:
      continue
    mask = np.asarray(mask) != 0
    under = ids[mask]
    under = under[under >= 0]
    under = under[modal_classes[under] == cls]
    if under.size:
      vals, counts = np.unique(under, return_counts=True)
      twin = int(vals[np.argmax(counts)])
      out.append((int(cls) * labels.LABEL_DIVISOR + twin + 1, mask, mask & (ids == twin)))
    else:
      out.append((int(cls) * labels.LABEL_DIVISOR + _UNPAIRED + 1 + j, mask,
                  np.zeros_like(mask)))
  return out


def _instances_on(background: np.ndarray, ids: np.ndarray, classes) -> np.ndarray:
  """Modal instances of ``ids`` in their shades over ``background``, white outlines."""
  out = background.copy()
  classes = np.asarray(classes).reshape(-1)
  for j in np.unique(ids[ids >= 0]):
    out[ids == j] = pictures.shade(int(classes[j]) * labels.LABEL_DIVISOR + int(j) + 1)
  out[_outline(ids)] = WHITE
  return out


def _empty(h, w):
  return {"masks": np.zeros((0, h, w), bool), "classes": np.zeros(0, np.int32),
          "scores": np.zeros(0, np.float32)}


def _stack(panels, scale: float, ids) -> np.ndarray:
  rows = [pictures.label_panel(pictures.resize_panel(p, scale), text) for p, text in panels]
  rows.append(pictures.legend_rows(ids, rows[0].shape[1], "instances in shades of their class"))
  return np.concatenate(rows, 0)


def render_pseudo_labels(image: np.ndarray, variant: dict, title: str = "",
                         scale: float = 1.0) -> np.ndarray:
  """Five labelled panels and the legend, uint8 ``[5 * (14 + H*scale) + legend rows,
  W*scale, 3]``: semantic labels
  over the image, kept modal masks, kept amodal masks (occluded part hatched), the
  uncertain maps (orange modal, cyan amodal, striped both) and the pool entries
  (1 pixels in the entry's shade, 255 pixels white-hatched).

  ``variant``: ``semantic`` uint8 [H,W]; ``modal`` / ``amodal`` ``{"masks", "classes",
  "scores"}``; ``uncertain_modal`` / ``uncertain_amodal`` bool [H,W]; ``pool`` list of
  ``{"class_id", "mask"}`` (values 0/1/255). Missing parts draw as empty.
  """
  image = np.asarray(image, np.uint8)[..., :3]
  h, w = image.shape[:2]
  dim = _dim(image)
  stripes = pictures.hatch((h, w))
  sem = np.asarray(variant.get("semantic", np.full((h, w), labels.IGNORE, np.uint8)))
  modal = variant.get("modal") or _empty(h, w)
  amodal = variant.get("amodal") or _empty(h, w)
  ids = instance_map(modal["masks"], modal["scores"], (h, w))
  # Uncertain: orange modal, cyan amodal; where both, cyan on the hatch stripes.
  um = np.asarray(variant.get("uncertain_modal", np.zeros((h, w), bool))).astype(bool)
  ua = np.asarray(variant.get("uncertain_amodal", np.zeros((h, w), bool))).astype(bool)
  uncertain = dim.copy()
  uncertain[um] = UNCERTAIN_MODAL
  uncertain[ua & (stripes | ~um)] = UNCERTAIN_AMODAL
  # Pool: solid shade on 1 pixels, then white hatch on 255 pixels (dimmed between).
  pool = variant.get("pool") or []
  pooled = dim.copy()
  for k, e in enumerate(pool):
    pooled[np.asarray(e["mask"]) == 1] = pictures.shade(
        int(e["class_id"]) * labels.LABEL_DIVISOR + k + 1)
  for e in pool:
    pooled[(np.asarray(e["mask"]) == 255) & stripes] = WHITE
  labelled = 100.0 * float((sem != labels.IGNORE).mean()) if sem.size else 0.0
  panels = [
      (semantic_overlay(image, sem),
       f"{title + ': ' if title else ''}semantic, {labelled:.1f} % labelled "
       "(white hatch = no label)"),
      (_instances_on(dim, ids, modal["classes"]), f"modal: {len(modal['classes'])} kept"),
      (pictures.colour_amodal(image, amodal_instances(amodal["masks"], amodal["classes"], ids,
                                                      modal["classes"])),
       f"amodal: {len(amodal['classes'])} kept (hatched = occluded)"),
      (uncertain, "uncertain: orange modal, cyan amodal, striped both"),
      (pooled, f"pool: {len(pool)} entries (solid = 1, white hatch = 255)"),
  ]
  ids = pictures.class_ids(sem, instance_classes=[
      *np.asarray(modal["classes"]).reshape(-1), *np.asarray(amodal["classes"]).reshape(-1),
      *[e["class_id"] for e in pool]])
  return _stack(panels, scale, ids)


def render_prediction(image: np.ndarray, pred: dict, tau_m: float = 0.5, tau_a: float = 0.5,
                      title: str = "", scale: float = 1.0) -> np.ndarray:
  """Four labelled panels and the legend, uint8 ``[4 * (14 + H*scale) + legend rows,
  W*scale, 3]``, for a user's own
  panoramas: the image, the semantic overlay, a panoptic-like overlay (semantic colours
  with modal instances of score >= ``tau_m`` in their own shades on top) and the amodal
  instances of score >= ``tau_a`` (occluded part = amodal minus its own visible pixels in
  the panoptic overlay, hatched).

  ``pred``: ``semantic`` uint8 [H,W], optional ``confidence`` float32 [H,W], ``modal`` /
  ``amodal`` ``{"classes", "scores", "boxes", "masks"}`` (boxes unused).
  """
  image = np.asarray(image, np.uint8)[..., :3]
  h, w = image.shape[:2]
  sem = np.asarray(pred["semantic"])
  modal = pred.get("modal") or _empty(h, w)
  amodal = pred.get("amodal") or _empty(h, w)
  keep_m = np.asarray(modal["scores"]).reshape(-1) >= tau_m
  keep_a = np.asarray(amodal["scores"]).reshape(-1) >= tau_a
  ids = instance_map(modal["masks"], modal["scores"], (h, w), keep_m)
  overlay = semantic_overlay(image, sem)
  panoptic = overlay.copy()
  classes = np.asarray(modal["classes"]).reshape(-1)
  for j in np.unique(ids[ids >= 0]):
    colour = pictures.shade(int(classes[j]) * labels.LABEL_DIVISOR + int(j) + 1)
    on = ids == j
    panoptic[on] = ((image[on].astype(np.uint16) + colour) // 2).astype(np.uint8)
  panoptic[_outline(ids)] = WHITE
  conf = pred.get("confidence")
  sem_text = "semantic" + ("" if conf is None else f" (mean confidence {float(np.mean(conf)):.2f})")
  panels = [
      (image, f"image {title}".strip()),
      (overlay, sem_text),
      (panoptic, f"panoptic: {int(keep_m.sum())} instances with score >= {tau_m:g}"),
      (pictures.colour_amodal(image, amodal_instances(amodal["masks"], amodal["classes"], ids,
                                                      classes, keep_a)),
       f"amodal: {int(keep_a.sum())} instances with score >= {tau_a:g} (hatched = occluded)"),
  ]
  ids = pictures.class_ids(sem, instance_classes=[
      *classes[keep_m], *np.asarray(amodal["classes"]).reshape(-1)[keep_a]])
  return _stack(panels, scale, ids)
