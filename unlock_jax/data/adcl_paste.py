"""ADCL online paste (docs/method.md §7.3): position-locked copy-paste of pool objects.

Runs per PL crop in the grain workers, after crop and flip (§7.2.2 step 4).
Up to ``max_paste`` objects from the ADCL pool (``pseudo/pool.py``) are
pasted at exactly the panorama pixels they occupied in their own panorama,
inside the crop's window, and the crop's semantic, modal and amodal labels are
rebuilt around them. The reference (``GenBlendPASSAmodalMixedLabelsForMaskFormer``,
``gen_amodal_pseudolabels_for_maskformer.py`` L148-309) does this by opening
80 full-size mask PNGs and the panoramas of the accepted ones per sample; here
the pool index already holds every entry's extent, mask crop and RGB crop, so
a candidate outside the window is rejected from its extent alone and the
accepted ones touch only their own pixels. The accept/reject sequence, and so
the distribution of pastes, is the reference's (docs/reference_differences.md item 13).

Flip: ``window`` is the crop's box in *un-flipped* panorama coordinates (the
reference's ``crop_bbox``), and the pool crop taken at that window is written
at the same crop rows and columns whether or not the PL crop was flipped: the
reference flips image and labels before the paste and never flips the pool
mask or pool image (L200-227). A pasted object thus keeps its own orientation
and its column offset inside the window while the PL content around it is
mirrored; image and labels of the object agree, and its row (latitude) is
preserved, which is what matters on a panorama.

Seam: a crop of a full 360° panorama may straddle its seam (``wrap=True``,
``config.adapt.wrap_crops``); its window is then columns ``[x1, x2)`` modulo
the width ``W`` with ``x2 > W``. Columns of the window and of the pool
entries' extents are matched modulo ``W``, so an object is pasted at its
panorama position in such a window, and an entry whose extent wraps (an
object kept whole across the seam) puts its pixels from both ends of the
panorama where they fall. The result equals the flat paste on the panorama
rolled so that the window is contiguous (tests/test_wrap_crops.py).

Boxes are ``[x1, y1, x2, y2]`` float32 with x2/y2 the *inclusive* last
column/row (the reference's ``get_bbox_coord``), and an instance is kept only
if ``x1 < x2 and y1 < y2`` (``isValidBox``), so a one-pixel-wide or
one-pixel-high object has no label.

Deliberate choices, each with a switch back to the reference:
  * ``box_rule="positive"``: PL instance boxes from the ``== 1`` pixels, not
    from every non-zero pixel; the reference's ``"nonzero"`` stretches every
    box over all uncertain (255) pixels of the crop
    (docs/reference_differences.md item 1). Pasted masks
    are 0/1, so for them both rules agree.
  * ``modal_box_from_visible=True``: a pasted object's modal box is the box of
    its visible mask; the reference reuses the amodal box (item 3). If the
    visible box is degenerate the modal entry alone is dropped.
  * ``black_fill=False`` keeps the PL crop's own pixels where the pool mask
    is 255 instead of painting them black (item 4); the default is the
    reference's black.
Not reproduced: the reference skips every candidate whose path contains
"cer" (meant for ``_uncertain.png``, item 11; the pool has none), and it fails
on a pool of fewer than 80 entries (item 13) where this draws all of them.
"""
from __future__ import annotations

import logging

import numpy as np

from unlock_jax.data import labels
from unlock_jax.data.layouts.common import boxes_from_masks
from unlock_jax.data import maskcodec

_log = logging.getLogger(__name__)
_warned_truncation = False

SHARED = 255  # pool pixel shared with another object in its source panorama


def candidate_extents_hit(index, window) -> np.ndarray:
  """bool [P]: which pool entries' extents intersect ``window`` = (y1, y2, x1, x2).

  A necessary condition for an entry to put a pixel in the window; no pixels
  are read. Columns are compared modulo the panorama's width, so wrapped
  windows and extents (``x2`` past the width: across the seam) meet too.
  """
  return _extents_hit(index.extents, window, index.image_size[1])


def _extents_hit(extents: np.ndarray, window, width: int) -> np.ndarray:
  y1, y2, x1, x2 = window
  e = np.asarray(extents).reshape(-1, 4)
  cols = (e[:, 2] < x2) & (e[:, 3] > x1)
  # Both spans lie in [0, 2W), so one period either way finds any overlap;
  # with neither wrapped these terms are all False.
  for shift in (-width, width):
    cols |= (e[:, 2] + shift < x2) & (e[:, 3] + shift > x1)
  return (e[:, 0] < y2) & (e[:, 1] > y1) & cols


def _pieces(ex0: int, ex1: int, x1: int, x2: int, width: int) -> list:
  """Where entry columns ``[ex0, ex1)`` show in window columns ``[x1, x2)``
  (either may pass ``width``: columns modulo it).

  ``[(c0, c1, o0)]`` in window order: window columns ``[c0, c1)`` (relative
  to ``x1``) show entry columns ``[o0, o0 + c1 - c0)`` (relative to
  ``ex0``). One piece, unless a window as wide as the panorama meets an
  object across the seam (two).
  """
  out = []
  for shift in (0, -width, width):
    a, b = max(ex0 + shift, x1), min(ex1 + shift, x2)
    if a < b:
      out.append((a - x1, b - x1, a - ex0 - shift))
  return sorted(out)


def _take(crop: np.ndarray, rows: slice, pieces: list) -> np.ndarray:
  """An entry's mask or RGB ``crop`` at window columns ``[pieces[0].c0,
  pieces[-1].c1)``: a slice for one piece, zeros between two."""
  if len(pieces) == 1:
    c0, c1, o0 = pieces[0]
    return crop[rows, o0:o0 + c1 - c0]
  base = pieces[0][0]
  sub = crop[rows]
  out = np.zeros((sub.shape[0], pieces[-1][1] - base) + sub.shape[2:], crop.dtype)
  for c0, c1, o0 in pieces:
    out[:, c0 - base:c1 - base] = sub[:, o0:o0 + c1 - c0]
  return out


def draw_candidates(num_entries: int, rng: np.random.Generator,
                    num_candidates: int = 80) -> np.ndarray:
  """``min(num_candidates, num_entries)`` distinct pool indices, in random order.

  The reference's ``random.sample(pool, 80)``: uniform over the whole pool,
  any panorama (the PL image's own included). A smaller pool is drawn whole,
  shuffled; the reference raises there.
  """
  n = min(int(num_candidates), int(num_entries))
  if n <= 0:
    return np.zeros((0,), np.int64)
  return rng.choice(int(num_entries), size=n, replace=False).astype(np.int64)


def _valid(boxes: np.ndarray) -> np.ndarray:
  """``isValidBox``: x1 < x2 and y1 < y2."""
  return (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])


def _box_of(mask: np.ndarray, dy: int, dx: int) -> np.ndarray | None:
  """Inclusive box of a bool crop placed at (dy, dx); None if empty."""
  y0, y1, x0, x1 = maskcodec.tight_extent(mask)
  if y1 == y0:
    return None
  return np.array([x0 + dx, y0 + dy, x1 - 1 + dx, y1 - 1 + dy], np.float32)


def _select(index, window, shape, candidates, *, max_paste, max_area_fraction,
            min_visible):
  """§7.3 (a): the accepted candidates, bottom-most first.

  Returns ``(pasted, index_map)``: ``pasted`` lists ``(pool index, rows,
  cols, q, pieces)`` with ``q`` the pool mask inside the window at crop
  rows/cols (``pieces``: :func:`_pieces`, to read the RGB the same way);
  ``index_map`` int32 [h,w] holds k+1 where the k-th pasted object is on top
  (0: none). Per-id pixel counts of the map are kept up to date, so the
  background/earlier-object visibility test only histograms the new mask's
  footprint.
  """
  h, w = shape
  y1, y2, x1, x2 = window
  index_map = np.zeros((h, w), np.int32)
  counts = np.zeros(max_paste + 2, np.int64)
  counts[0] = h * w
  need = max(int(min_visible), 1)  # the reference also needs each id present
  width = index.image_size[1] if len(index) else 0
  hit = (_extents_hit(index.extents[candidates], window, width) if len(candidates)
         else [])
  pasted = []
  for j, inside in zip(candidates, hit):
    if len(pasted) >= max_paste:
      break
    if not inside:
      continue  # misses the window: costs its draw, nothing else
    ey0, ey1, ex0, ex1 = index.extent(j)
    iy0, iy1 = max(ey0, y1), min(ey1, y2)
    pieces = _pieces(ex0, ex1, x1, x2, width)
    q = _take(index.mask(j), slice(iy0 - ey0, iy1 - ey0), pieces)
    on = q != 0
    n = int(np.count_nonzero(on))
    if n == 0:
      continue  # extent meets the window, the mask does not
    if n > max_area_fraction * h * w:
      continue  # larger than 1/8 of the crop
    k = len(pasted)
    rows, cols = slice(iy0 - y1, iy1 - y1), slice(pieces[0][0], pieces[-1][1])
    sub = index_map[rows, cols]
    under = np.bincount(sub[on], minlength=k + 1)
    if (counts[:k + 1] - under).min() < need:
      continue  # would hide the background or an earlier object
    counts[:k + 1] -= under
    counts[k + 1] = n
    sub[on] = k + 1
    pasted.append((int(j), rows, cols, q, pieces))
  return pasted, index_map


def _pl_instances(branch: dict, pasted_area: np.ndarray, box_rule: str,
                  modal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """§7.3 (c) for one branch of the PL crop's own instances."""
  masks = np.asarray(branch["masks"], np.uint8)
  classes = np.asarray(branch["classes"], np.int32).reshape(-1)
  if masks.shape[0] != classes.size:
    raise ValueError(f"{masks.shape[0]} masks but {classes.size} classes")
  if modal:
    masks = masks * ~pasted_area  # occluded by the pasted objects (a new array)
    keep = (masks == 1).any((1, 2))
  else:
    keep = ((masks == 1) & ~pasted_area).any((1, 2))
  boxes = boxes_from_masks(masks, box_rule)
  keep &= _valid(boxes)
  return masks[keep], classes[keep], boxes[keep]


def paste(image: np.ndarray, semantic: np.ndarray, modal: dict, amodal: dict,
          window, index, rng: np.random.Generator | None, *,
          num_candidates: int = 80, max_paste: int = 8,
          max_area_fraction: float = 1 / 8, min_visible: int = 25,
          black_fill: bool = True, modal_box_from_visible: bool = True,
          box_rule: str = "positive", candidates=None, wrap: bool = False) -> dict:
  """Pastes up to ``max_paste`` pool objects into one PL crop (docs/method.md §7.3).

  Args:
    image: uint8 [h,w,3] RGB, the PL crop after crop and flip.
    semantic: uint8 [h,w] (255 = ignore).
    modal, amodal: ``{"classes" int [K] in 11..17, "masks" uint8 [K,h,w]
      in {0,1,255}}``, the crop's pseudo-labelled instances.
    window: ``(y1, y2, x1, x2)``, the crop in un-flipped panorama
      coordinates; ``(y2-y1, x2-x1)`` must be ``(h, w)``.
    index: a ``pool_index.PoolIndex``; empty → nothing is pasted.
    rng: draws the candidates (unused when ``candidates`` is given).
    candidates: optional explicit candidate order (pool indices), to replay
      a draw.
    wrap: the panorama is a full 360° one and ``x2`` may pass its width
      ``W`` (a crop across the seam, ``0 <= x1 < W``): the window is then
      columns ``[x1, x2)`` modulo ``W``. Pool entries are placed by their
      columns modulo ``W`` in any case, so an object whose extent wraps
      (pixels at both ends) lands on both sides of the seam.

  Selection (a): candidates in draw order; one is skipped if its mask misses
  the window, if more than ``max_area_fraction`` of the crop, or if the
  background or any earlier pasted object would keep fewer than
  ``min_visible`` pixels outside it; stop at ``max_paste`` pasted.
  Composite (b): semantic takes each object's class over its whole mask
  (1 and 255), the image its pool RGB on 1 and black on 255 (or, with
  ``black_fill=False``, the crop's own pixels). Labels (c, d): the PL modal
  masks lose the pasted area and must keep a 1-pixel; the PL amodal masks
  stay whole and must keep a 1-pixel outside the pasted area; then the
  pasted objects from top-most to bottom-most, amodal = whole pool mask (0/1),
  modal = the part not covered by objects pasted later.

  Returns ``{"image" uint8 [h,w,3], "semantic" uint8 [h,w], "modal",
  "amodal": {"masks" uint8 [N,h,w], "classes" int32 [N] (11..17), "boxes"
  float32 [N,4]}, "num_pasted" int, "pasted" int64 (pool indices, paste
  order = bottom to top), "candidates" int64 (the draw)}``, PL instances
  first in each branch. Inputs are not modified.
  """
  image = np.asarray(image)
  semantic = np.asarray(semantic)
  h, w = semantic.shape
  if image.shape != (h, w, 3) or image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 [{h},{w},3], got {image.dtype} {image.shape}")
  if box_rule not in ("positive", "nonzero"):
    raise ValueError(f"box_rule must be 'positive' or 'nonzero', got {box_rule!r}")
  y1, y2, x1, x2 = (int(v) for v in window)
  window = (y1, y2, x1, x2)
  if (y2 - y1, x2 - x1) != (h, w):
    raise ValueError(f"window {window} is not the crop's size {h}x{w}")
  if len(index):
    ph, pw = index.image_size
    if not (0 <= y1 and y2 <= ph and 0 <= x1 < pw and x2 <= (x1 + pw if wrap else pw)):
      raise ValueError(f"window {window} leaves the {ph}x{pw} panorama of the pool"
                       + ("" if wrap else " (a window across the seam needs wrap=True)"))

  if candidates is None:
    candidates = draw_candidates(len(index), rng, num_candidates)
  candidates = np.asarray(candidates, np.int64).reshape(-1)
  pasted, index_map = _select(index, window, (h, w), candidates, max_paste=max_paste,
                              max_area_fraction=max_area_fraction,
                              min_visible=min_visible)

  # (b) composite, bottom to top: later objects overwrite earlier ones.
  image_out = image.copy()
  sem_out = semantic.copy()
  for j, rows, cols, q, pieces in pasted:
    ey0 = index.extent(j)[0]
    rgb = _take(index.rgb(j), slice(rows.start + y1 - ey0, rows.stop + y1 - ey0), pieces)
    img_sub, sem_sub = image_out[rows, cols], sem_out[rows, cols]
    one = q == 1
    img_sub[one] = rgb[one]
    if black_fill:
      img_sub[q == SHARED] = 0
    sem_sub[q != 0] = index.class_id(j)
  pasted_area = index_map != 0

  # (c) the PL crop's own instances.
  out_m = _pl_instances(modal, pasted_area, box_rule, modal=True)
  out_a = _pl_instances(amodal, pasted_area, box_rule, modal=False)

  # (d) pasted objects, top-most first. An object with a degenerate amodal box
  # gets no label and does not hide the ones below (reference L273-285).
  covered = np.zeros((h, w), bool)
  pm, pa = [], []  # (mask, class, box) per branch
  for j, rows, cols, q, _ in reversed(pasted):
    on = q != 0
    box = _box_of(on, rows.start, cols.start)
    if box is None or box[0] >= box[2] or box[1] >= box[3]:
      continue
    c = index.class_id(j)
    seen = on & ~covered[rows, cols]  # not hidden by objects pasted later
    covered[rows, cols] |= on
    amask = np.zeros((h, w), np.uint8)
    amask[rows, cols] = on
    visible = np.zeros((h, w), np.uint8)
    visible[rows, cols] = seen
    pa.append((amask, c, box))
    mbox = box
    if modal_box_from_visible:
      mbox = _box_of(seen, rows.start, cols.start)
      if mbox is None or mbox[0] >= mbox[2] or mbox[1] >= mbox[3]:
        continue
    pm.append((visible, c, mbox))

  def branch(pl, extra):
    masks, classes, boxes = pl
    if extra:
      em, ec, eb = zip(*extra)
      masks = np.concatenate([masks, np.stack(em)])
      classes = np.concatenate([classes, np.asarray(ec, np.int32)])
      boxes = np.concatenate([boxes, np.stack(eb)])
    return {"masks": np.ascontiguousarray(masks, np.uint8),
            "classes": classes.astype(np.int32),
            "boxes": boxes.astype(np.float32).reshape(-1, 4)}

  return {"image": image_out, "semantic": sem_out,
          "modal": branch(out_m, pm), "amodal": branch(out_a, pa),
          "num_pasted": len(pasted),
          "pasted": np.asarray([p[0] for p in pasted], np.int64),
          "candidates": candidates}


def pad_instances(branch: dict, max_instances: int) -> dict:
  """One branch of :func:`paste` as static-shape arrays for batching.

  Returns ``{"masks" uint8 [N,h,w], "classes" int32 [N] (0..6 = id - 11),
  "boxes" float32 [N,4], "valid" bool [N]}`` with N = ``max_instances``;
  padding rows are zeros with ``valid`` False. With more instances than N
  the *first* N are kept: PL instances come first and pasted objects last,
  so pasted objects are dropped first (a warning is logged once per process).
  """
  global _warned_truncation
  masks = np.asarray(branch["masks"], np.uint8)
  classes = np.asarray(branch["classes"]).reshape(-1)
  boxes = np.asarray(branch["boxes"], np.float32).reshape(-1, 4)
  k, h, w = masks.shape
  if classes.size != k or boxes.shape[0] != k:
    raise ValueError(f"{k} masks, {classes.size} classes, {boxes.shape[0]} boxes")
  if not labels.is_thing(classes).all():
    raise ValueError(f"instance classes outside 11..17: {np.unique(classes)}")
  if k > max_instances and not _warned_truncation:
    _log.warning("%d instances in a crop, more than max_instances=%d; keeping the first "
                 "(pasted objects are dropped first). Further truncations are not reported.",
                 k, max_instances)
    _warned_truncation = True
  n = min(k, max_instances)
  out = {"masks": np.zeros((max_instances, h, w), np.uint8),
         "classes": np.zeros((max_instances,), np.int32),
         "boxes": np.zeros((max_instances, 4), np.float32),
         "valid": np.zeros((max_instances,), bool)}
  out["masks"][:n] = masks[:n]
  out["classes"][:n] = classes[:n] - labels.FIRST_THING
  out["boxes"][:n] = boxes[:n]
  out["valid"][:n] = True
  return out
