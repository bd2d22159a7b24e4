"""One instance per object across the 360° seam: wrapped boxes and the merge rule.

A full-width panorama's first and last columns are neighbours, so an object
across the cut is one object (docs/formats.md, "Wrapped boxes"). Its mask is
an ordinary full-image [H, W] mask with pixels at both ends; its box uses the
**wrapped convention**: ``(x1, y1, x2, y2)`` with ``0 <= x1 < W`` and
``x1 < x2 <= x1 + W``; ``x2 > W`` means the box covers the columns
``[x1, W)`` and ``[0, x2 - W)``. A box with ``x2 <= W`` is an ordinary box.

:func:`merge_seam_instances` turns the detections of a seam-aware forward
(``config.seam.mode != "flat"``) into one instance per object:

1. **Merge across the seam.** A *right piece* ``i`` has pixels in column
   ``W - 1``, a *left piece* ``j`` pixels in column 0. The pair is one object
   when ``i != j``, both have the same class and the rows their masks occupy
   in those two columns (the two sides of the cut) overlap: the rows both
   occupy are at least ``edge_overlap`` (0.5) of the shorter side's rows
   (not their IoU: a piece that ends in a sliver, one or two rows at the cut,
   is still the same object; synthpass's ground truth has such objects).
   Pairs are taken greedily by that overlap (then the rows' IoU, then the
   higher score), each piece's right end and left end joining at most one
   pair; pairs sharing a piece form one group (a whole object predicted
   across the seam and a stray piece of it join too). A group becomes one
   instance: its masks' union; the **maximum** score (the confidence of the
   best-seen piece: a thresholded merge keeps an object whenever any of its
   pieces would be kept, and the per-class score thresholds of OPLL and
   fusion, calibrated on single detections, keep their meaning; an
   area-weighted mean would let a sliver the padded model barely sees veto a
   confident detection); the class; and the wrapped box from the pieces'
   boxes: x1 of the right piece, ``W + x2`` of the left piece (rows: the
   union), at most ``x1 + W`` wide.
2. **Remove duplicates.** A seam-aware forward can see one object twice (the
   wrap-extended panorama holds the columns near the seam twice; folded
   back, both copies are the same mask). Within a class, in descending score
   order, an instance whose mask IoU with a kept one exceeds ``dup_iou``
   (0.5) is dropped: the higher score survives.

Instances that touch neither end and duplicate nothing are returned
unchanged. The rule runs on host numpy arrays, after the forward, wherever
instances of a full panorama are kept: the prediction store, the OPLL
labels, the ADCL pool, the evaluators (fusion and AP/AAP).
"""
from __future__ import annotations

import numpy as np

EDGE_OVERLAP = 0.5  # shared rows at the cut / the shorter side's rows: one object from this on
DUP_IOU = 0.5  # mask IoU above which two same-class instances are one (the lower score goes)


def crosses_seam(mask: np.ndarray) -> bool:
  """True iff an [H, W] mask has pixels in both its first and its last column."""
  mask = np.asarray(mask)
  return bool(mask[:, 0].any() and mask[:, -1].any())


def wrapped_columns(x1: float, x2: float, width: int) -> list[tuple[float, float]]:
  """The column ranges ``[a, b)`` a wrapped box's ``x1, x2`` covers: one, or two across the seam."""
  if x2 <= width:
    return [(x1, x2)]
  return [(x1, float(width)), (0.0, x2 - width)]


def column_extent(cols: np.ndarray) -> tuple[int, int]:
  """``(x0, x1)``, half-open, of the occupied columns ``cols`` bool [W] in the wrapped convention.

  Columns that do not occupy both the first and the last column (an object
  that does not cross the seam) get their ordinary extent. Across the seam:
  the shortest arc that holds every occupied column, the complement of the
  longest run of empty columns, ending at ``x1 > W``. No occupied column
  gives ``(0, 0)``, no empty one ``(0, W)``.
  """
  cols = np.asarray(cols, bool)
  w = cols.size
  on = np.flatnonzero(cols)
  if on.size == 0:
    return (0, 0)
  if on.size == w or not (cols[0] and cols[-1]):
    return (int(on[0]), int(on[-1]) + 1)
  gaps = np.diff(np.append(on, on[0] + w))  # to the next occupied column, around the seam
  k = int(np.argmax(gaps))  # the longest empty run follows on[k]
  x0 = int(on[(k + 1) % on.size])
  return (x0, int(on[k]) + 1 + (w if on[k] < x0 else 0))


def wrapped_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
  """``(y0, y1, x0, x1)`` half-open tight extent of an [H, W] mask, columns by :func:`column_extent`."""
  mask = np.asarray(mask) != 0
  rows = np.flatnonzero(mask.any(axis=1))
  if rows.size == 0:
    return (0, 0, 0, 0)
  x0, x1 = column_extent(mask.any(axis=0))
  return (int(rows[0]), int(rows[-1]) + 1, x0, x1)


def take_columns(a: np.ndarray, x0: int, x1: int, axis: int = 1) -> np.ndarray:
  """Columns ``x0 .. x1 - 1`` of ``a`` along ``axis``, modulo its width (a crop across the seam)."""
  a = np.asarray(a)
  w = a.shape[axis]
  if x1 <= w:
    return a[(slice(None),) * axis + (slice(x0, x1),)]
  return np.take(a, np.arange(x0, x1) % w, axis=axis)


def _mask_iou(masks: np.ndarray, rows: np.ndarray, cols: np.ndarray, area: np.ndarray,
              i: int, j: int) -> float:
  """IoU of masks ``i`` and ``j``, counted on the rows and columns both occupy."""
  r = np.flatnonzero(rows[i] & rows[j])
  c = np.flatnonzero(cols[i] & cols[j])
  inter = 0
  if r.size and c.size:
    sub = (slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1))
    inter = int(np.count_nonzero(masks[i][sub] & masks[j][sub]))
  union = int(area[i] + area[j]) - inter
  return inter / union if union else 0.0


def _duplicates_kept(masks, classes, scores, dup_iou: float) -> np.ndarray:
  """Sorted indices kept of ``masks`` (a sequence of [H, W]): by descending
  score, one whose IoU with a kept one of its class exceeds ``dup_iou`` is dropped."""
  if not len(masks):
    return np.zeros((0,), np.int64)
  rows = np.array([m.any(axis=1) for m in masks])
  cols = np.array([m.any(axis=0) for m in masks])
  area = np.array([np.count_nonzero(m) for m in masks], np.int64)
  kept = []
  for i in np.argsort(-np.asarray(scores, np.float64), kind="stable").tolist():
    if any(classes[k] == classes[i] and (rows[k] & rows[i]).any() and (cols[k] & cols[i]).any()
           and _mask_iou(masks, rows, cols, area, k, i) > dup_iou for k in kept):
      continue
    kept.append(i)
  return np.sort(np.asarray(kept, np.int64))


def _merge_groups(masks, classes, scores, edge_overlap):
  """Groups of indices (lists, each sorted) that are one object across the seam."""
  n = masks.shape[0]
  left = [np.flatnonzero(m[:, 0]) for m in masks]
  right = [np.flatnonzero(m[:, -1]) for m in masks]
  cand = []
  for i in range(n):
    if not right[i].size:
      continue
    for j in range(n):
      if i == j or classes[i] != classes[j] or not left[j].size:
        continue
      inter = np.intersect1d(right[i], left[j], assume_unique=True).size
      overlap = inter / min(right[i].size, left[j].size)
      if overlap >= edge_overlap:
        iou = inter / (right[i].size + left[j].size - inter)
        cand.append((-overlap, -iou, -max(float(scores[i]), float(scores[j])), i, j))
  parent = list(range(n))

  def root(a):
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a

  used_right, used_left = set(), set()
  for *_, i, j in sorted(cand):
    if i in used_right or j in used_left:
      continue
    used_right.add(i)
    used_left.add(j)
    parent[root(j)] = root(i)
  groups = {}
  for a in range(n):
    groups.setdefault(root(a), []).append(a)
  return sorted(groups.values()), used_right, used_left


def _group_box(boxes, group, used_right, used_left, width):
  """The wrapped box of a merged group from its members' boxes."""
  b = boxes[group].astype(np.float64)
  x1, x2 = b[:, 0].copy(), b[:, 2].copy()
  # A left piece (joined by its left end only) lies after the seam: shift it one turn.
  left_only = np.array([g in used_left and g not in used_right and x2[k] <= width
                        for k, g in enumerate(group)])
  x1[left_only] += width
  x2[left_only] += width
  lo, hi = float(x1.min()), float(x2.max())
  if lo >= width:
    lo, hi = lo - width, hi - width
  hi = min(hi, lo + width)
  return np.array([lo, b[:, 1].min(), hi, b[:, 3].max()], np.float32)


def merge_seam_instances(dets: dict, *, edge_overlap: float = EDGE_OVERLAP,
                         dup_iou: float = DUP_IOU) -> dict:
  """One instance per object of a full panorama's detections (module docstring).

  ``dets``: one branch, ``{"masks" bool [N,H,W], "boxes" [N,4] (x1, y1,
  x2, y2), "scores" [N], "classes" [N]}`` and optionally ``"valid"`` bool
  [N] (the padded form of the predict functions: rows with ``valid`` False
  are ignored). Returns the same keys and dtypes: without ``valid``, the
  surviving instances in their first member's order; with ``valid``, the same
  N rows, each merged instance in its highest-scoring member's row and the
  rows merged into it or dropped as duplicates marked invalid. Other keys
  are passed through (indexed like the rows when they are [N]-leading).
  """
  for k in ("masks", "boxes", "scores", "classes"):
    if k not in dets:
      raise ValueError(f"merge_seam_instances: the detections have no '{k}'")
  masks_in = np.asarray(dets["masks"])
  n_rows = masks_in.shape[0] if masks_in.ndim == 3 else -1
  boxes_in = np.asarray(dets["boxes"])
  scores_in, classes_in = np.asarray(dets["scores"]), np.asarray(dets["classes"])
  if (masks_in.ndim != 3 or boxes_in.shape != (n_rows, 4) or scores_in.shape != (n_rows,)
      or classes_in.shape != (n_rows,)):
    raise ValueError(f"merge_seam_instances: masks {masks_in.shape}, boxes {boxes_in.shape}, "
                     f"scores {scores_in.shape}, classes {classes_in.shape}; expected "
                     "[N,H,W], [N,4], [N], [N]")
  padded = "valid" in dets
  rows = (np.flatnonzero(np.asarray(dets["valid"], bool)) if padded
          else np.arange(n_rows))
  width = masks_in.shape[2]
  masks = masks_in if masks_in.dtype == bool else masks_in != 0
  # The valid rows as a view where they are a prefix (the usual padded form).
  masks = masks[:rows.size] if np.array_equal(rows, np.arange(rows.size)) else masks[rows]
  classes, scores, boxes = classes_in[rows], scores_in[rows], boxes_in[rows]

  groups, used_right, used_left = _merge_groups(masks, classes, scores, edge_overlap)
  keep_row = np.array([g[int(np.argmax(scores[g]))] for g in groups], np.int64)
  # Each group in its first member's place; a lone member's mask is a view.
  m = [np.any(masks[g], axis=0) if len(g) > 1 else masks[g[0]] for g in groups]
  if len(groups) == rows.size:
    b, s, c = boxes, scores, classes
  else:
    b = np.stack([_group_box(boxes, g, used_right, used_left, width) if len(g) > 1
                  else boxes[g[0]] for g in groups]).astype(boxes_in.dtype)
    s = np.array([scores[g].max() for g in groups], scores_in.dtype)
    c = classes[keep_row]

  sel = _duplicates_kept(m, c, s, dup_iou)
  if len(groups) == rows.size and sel.size == rows.size:
    return dict(dets)  # every instance stands alone: unchanged

  if not padded:
    out = {k: v for k, v in dets.items() if k not in ("masks", "boxes", "scores", "classes")}
    src = rows[keep_row[sel]]
    for k, v in out.items():
      if np.ndim(v) and np.shape(v)[0] == n_rows:
        out[k] = np.asarray(v)[src]
    masks_out = (np.stack([m[k] for k in sel.tolist()]) if sel.size
                 else np.zeros((0,) + masks_in.shape[1:], bool))
    out.update(masks=masks_out.astype(masks_in.dtype, copy=False), boxes=b[sel],
               scores=s[sel], classes=c[sel].astype(classes_in.dtype))
    return out
  out = dict(dets)
  valid = np.zeros(n_rows, bool)
  new_masks = np.array(masks_in, copy=True)  # the caller's arrays stay as they were
  new_boxes = np.array(boxes_in, copy=True)
  new_scores = np.array(scores_in, copy=True)
  for k in sel.tolist():
    r = rows[keep_row[k]]
    valid[r] = True
    new_masks[r] = m[k]
    new_boxes[r] = b[k]
    new_scores[r] = s[k]
  out.update(masks=new_masks, boxes=new_boxes, scores=new_scores,
             valid=valid.astype(np.asarray(dets["valid"]).dtype))
  return out
