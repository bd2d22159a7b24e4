"""ADCL online paste (docs/method.md §7.3): hand-built pools for each rule, and the whole
output against a literal transcription of the reference loop on full-size
arrays, with the same candidate draws, over many random seeds."""
import numpy as np
import pytest

from tests.support import reference
from tests.support.reference import get_bbox_coord
from unlock_jax.data import adcl_paste
from unlock_jax.data import pool_index
from unlock_jax.pseudo import pool

H, W = 40, 160               # panorama
WIN = (0, 40, 40, 80)        # 40x40 crop window (y1, y2, x1, x2)
CH, CW = 40, 40


# ---------------------------------------------------------------- helpers

def _rect(rows, cols, value=1, shape=(H, W)):
  m = np.zeros(shape, np.uint8)
  m[rows[0]:rows[1], cols[0]:cols[1]] = value
  return m


def _solid(color, shape=(H, W)):
  return np.broadcast_to(np.asarray(color, np.uint8), shape + (3,)).copy()


def _index(objs, size=(H, W)):
  """PoolIndex of ``objs`` = [(class_id, full mask, full source rgb)], one per panorama."""
  recs = [pool.entry_record(f"c/p{i:04d}", rgb, [{"class_id": c, "det_index": 0, "score": 1.0,
                                                   "mask": m, "k": 0}])
          for i, (c, m, rgb) in enumerate(objs)]
  a = {"image_size": np.asarray(size, np.int32),
       "names": np.array([str(r["name"]) for r in recs], dtype=str).reshape(-1)}
  empty = {"classes": np.int32, "det_index": np.int32, "scores": np.float32, "k": np.int32,
           "mask_data": np.uint8, "rgb_data": np.uint8}
  for key, dt in empty.items():
    a[key] = np.concatenate([r[key] for r in recs]) if recs else np.zeros((0,), dt)
  a["extents"] = (np.concatenate([r["extents"] for r in recs]) if recs
                  else np.zeros((0, 4), np.int32))
  for key in ("mask_offsets", "rgb_offsets"):
    sizes = [np.diff(r[key]) for r in recs]
    a[key] = np.cumsum(np.concatenate([[0]] + sizes), dtype=np.int64)
  return pool_index.PoolIndex(a)


def _pl(masks, classes):
  masks = np.asarray(masks, np.uint8).reshape(-1, CH, CW)
  return {"classes": np.asarray(classes, np.int32), "masks": masks}


def _empty_pl():
  return _pl(np.zeros((0, CH, CW)), [])


def _crop_image():
  return (np.arange(CH * CW * 3, dtype=np.int64).reshape(CH, CW, 3) % 200 + 20).astype(np.uint8)


def _run(objs, cands=None, image=None, semantic=None, modal=None, amodal=None, window=WIN,
         **kw):
  idx = _index(objs)
  image = _crop_image() if image is None else image
  semantic = np.zeros((CH, CW), np.uint8) if semantic is None else semantic
  cands = list(range(len(objs))) if cands is None else cands
  return adcl_paste.paste(image, semantic, modal or _empty_pl(), amodal or _empty_pl(),
                          window, idx, None, candidates=cands, **kw)


# ------------------------------------------- the reference, written out

def _is_valid_box(box):
  x1, y1, x2, y2 = box
  return x1 < x2 and y1 < y2


def _reference(img, semantic, instances, ainstances, crop_bbox, pool_masks, pool_imgs,
               pool_classes, hard_label_randoms, *, num_hard_label=8, positive_boxes=False,
               visible_box=False, black=True):
  """gen_amodal_pseudolabels_for_maskformer.py L186-285 on full-size pool arrays.

  ``hard_label_randoms`` is the drawn candidate order (pool indices);
  ``instances``/``ainstances`` are lists of (class, mask). Our images are RGB
  throughout, so the reference's RGB→BGR flip of the pool image is left out.
  Switches for our options: ``positive_boxes`` (PL boxes of the ==1 pixels),
  ``visible_box`` (pasted modal box of the visible mask; dropped if invalid),
  ``black=False`` (no black fill).
  """
  img = img.copy()
  semantic = semantic.astype(np.float32)  # the reference's semantic is float
  instances = [(c, m.copy()) for c, m in instances]
  ainstances = [(c, m.copy()) for c, m in ainstances]
  thing_list = [11, 12, 13, 14, 15, 16, 17]
  (croped_hard_label_list, croped_hard_class_list, croped_hard_img_list, hard_label_sem,
   pasted) = reference.paste_candidates(
       semantic, hard_label_randoms, crop_bbox, pool_masks.__getitem__,
       pool_imgs.__getitem__, lambda name: int(pool_classes[name]) - 11, num_hard_label)

  semantic[hard_label_sem != 0] = hard_label_sem[hard_label_sem != 0]
  for h_img, h_label in zip(croped_hard_img_list, croped_hard_label_list):
    img[h_label == 1] = h_img[h_label == 1]
    if black:
      img[h_label == 255] = 0

  def bbox(mask):
    return get_bbox_coord(mask == 1 if positive_boxes else mask)

  gt_masks, gt_labels, gt_bboxes = [], [], []
  for cat_class, mask in instances:
    mask[hard_label_sem != 0] = 0
    if not (mask == 1).sum() == 0:
      box = bbox(mask)
      if _is_valid_box(box):
        gt_bboxes.append(box)
        gt_masks.append(mask.astype(np.uint8))
        gt_labels.append(cat_class)
  gt_amasks, gt_alabels, gt_abboxes = [], [], []
  for acat_class, amask in ainstances:
    if not (amask[hard_label_sem == 0] == 1).sum() == 0:
      abox = bbox(amask)
      if _is_valid_box(abox):
        gt_abboxes.append(abox)
        gt_amasks.append(amask.astype(np.uint8))
        gt_alabels.append(acat_class)

  hard_ins_mask = np.zeros_like(semantic)
  for h_cls, h_mask in zip(reversed(croped_hard_class_list), reversed(croped_hard_label_list)):
    h_mask = h_mask.copy()
    h_mask[h_mask != 0] = 1
    if not (h_mask != 0).sum() == 0:
      if h_cls in thing_list:
        h_box = get_bbox_coord(h_mask)
        if _is_valid_box(h_box):
          gt_abboxes.append(h_box)
          gt_amasks.append(h_mask.astype(np.uint8))
          gt_alabels.append(h_cls)
          h_mask[hard_ins_mask != 0] = 0
          m_box = get_bbox_coord(h_mask) if visible_box else h_box
          if _is_valid_box(m_box):
            gt_bboxes.append(m_box)
            gt_masks.append(h_mask.astype(np.uint8))
            gt_labels.append(h_cls)
          hard_ins_mask[h_mask != 0] = 1

  def pack(masks, cls, boxes):
    return {"masks": np.asarray(masks, np.uint8).reshape(-1, *semantic.shape),
            "classes": np.asarray(cls, np.int32),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4)}
  return {"image": img, "semantic": semantic.astype(np.uint8),
          "modal": pack(gt_masks, gt_labels, gt_bboxes),
          "amodal": pack(gt_amasks, gt_alabels, gt_abboxes), "pasted": pasted}


def _assert_same(got, want):
  np.testing.assert_array_equal(got["image"], want["image"])
  np.testing.assert_array_equal(got["semantic"], want["semantic"])
  assert list(got["pasted"]) == list(want["pasted"])
  for b in ("modal", "amodal"):
    for k in ("masks", "classes", "boxes"):
      np.testing.assert_array_equal(got[b][k], want[b][k], err_msg=f"{b} {k}")
    assert got[b]["masks"].dtype == np.uint8 and got[b]["classes"].dtype == np.int32
    assert got[b]["boxes"].dtype == np.float32


# --------------------------------------------------------- random scenes

def _blob(rng, shape=(H, W)):
  """A random object: union of 1-3 rectangles/ellipses, some 255, sometimes a sliver."""
  m = np.zeros(shape, bool)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
  for _ in range(rng.integers(1, 4)):
    ry, rx = rng.integers(1, 12), rng.integers(1, 12)
    oy, ox = cy + rng.integers(-4, 5), cx + rng.integers(-4, 5)
    if rng.random() < 0.5:
      m |= (np.abs(yy - oy) < ry) & (np.abs(xx - ox) < rx)
    else:
      m |= ((yy - oy) / ry) ** 2 + ((xx - ox) / rx) ** 2 <= 1
  if rng.random() < 0.1:  # a one-column or one-row object
    m = np.zeros(shape, bool)
    if rng.random() < 0.5:
      m[cy:cy + rng.integers(1, 15), cx] = True
    else:
      m[cy, cx:cx + rng.integers(1, 15)] = True
  out = m.astype(np.uint8)
  if rng.random() < 0.5:  # a shared (255) patch, less than half the object
    sy, sx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
    patch = np.zeros(shape, bool)
    patch[sy:sy + rng.integers(1, 6), sx:sx + rng.integers(1, 6)] = True
    out[m & patch] = 255
  if not out.any():
    out[cy, cx] = 1
  return out


def _random_scene(rng, n_pool):
  objs = [(int(rng.integers(11, 18)), _blob(rng), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
          for _ in range(n_pool)]
  x1 = int(rng.integers(0, W - CW + 1))
  window = (0, CH, x1, x1 + CW)
  image = rng.integers(0, 256, (CH, CW, 3), dtype=np.uint8)
  semantic = rng.integers(0, 18, (CH, CW)).astype(np.uint8)
  semantic[rng.random((CH, CW)) < 0.1] = 255
  branches = []
  for _ in range(2):
    k = int(rng.integers(0, 6))
    uncertain = rng.random((CH, CW)) < 0.05
    masks = np.zeros((0, CH, CW), np.uint8)
    if k:
      masks = np.stack([_blob(rng, (CH, CW)) for _ in range(k)])
    masks = np.where(masks == 1, 1, np.where(uncertain, 255, 0)).astype(np.uint8)
    branches.append(_pl(masks, rng.integers(11, 18, k)))
  return objs, window, image, semantic, branches[0], branches[1]


@pytest.mark.parametrize("mode", ["ours", "reference", "no_black"])
def test_matches_reference_transcription_over_random_seeds(mode):
  kw, ref_kw = {
      "ours": ({}, dict(positive_boxes=True, visible_box=True)),
      "reference": (dict(box_rule="nonzero", modal_box_from_visible=False), {}),
      "no_black": (dict(black_fill=False), dict(positive_boxes=True, visible_box=True,
                                               black=False)),
  }[mode]
  total_pasted = 0
  for seed in range(60):
    rng = np.random.default_rng(seed)
    n_pool = [3, 40, 120][seed % 3]
    objs, window, image, semantic, modal, amodal = _random_scene(rng, n_pool)
    idx = _index(objs)
    cands = adcl_paste.draw_candidates(len(idx), np.random.default_rng(1000 + seed))
    got = adcl_paste.paste(image, semantic, modal, amodal, window, idx,
                           np.random.default_rng(1000 + seed), **kw)
    np.testing.assert_array_equal(got["candidates"], cands)
    want = _reference(image, semantic,
                      list(zip(modal["classes"], modal["masks"])),
                      list(zip(amodal["classes"], amodal["masks"])), window,
                      [o[1] for o in objs], [o[2] for o in objs], [o[0] for o in objs],
                      list(cands), **ref_kw)
    _assert_same(got, want)
    total_pasted += got["num_pasted"]
  assert total_pasted > 60  # the scenes do exercise pasting


# ------------------------------------------------------- rules, by hand

def test_extents_hit_is_half_open():
  objs = [(11, _rect((0, 5), (30, 40)), _solid(9)),    # ends at x=40: misses 40..80
          (11, _rect((0, 5), (30, 41)), _solid(9)),    # one column inside
          (11, _rect((0, 5), (79, 90)), _solid(9)),    # starts at the last column
          (11, _rect((0, 5), (80, 90)), _solid(9)),    # starts right after
          (11, _rect((39, 40), (0, 160)), _solid(9))]  # one row across the whole panorama
  hit = adcl_paste.candidate_extents_hit(_index(objs), WIN)
  assert hit.tolist() == [False, True, True, False, True]
  hit = adcl_paste.candidate_extents_hit(_index(objs), (0, 39, 40, 80))
  assert hit.tolist() == [False, True, True, False, False]


class _CountingIndex(pool_index.PoolIndex):
  def __init__(self, other):
    super().__init__(dict(other._a))
    self.read = []

  def mask(self, j):
    self.read.append(int(j))
    return super().mask(j)


def test_miss_costs_its_draw_but_no_pixels():
  objs = [(11, _rect((0, 5), (0, 10)), _solid(1)),        # outside the window
          (12, _rect((0, 5), (100, 110)), _solid(2)),     # outside
          (13, _rect((10, 20), (50, 60)), _solid(3)),     # inside
          # two bars either side: the extent spans the window, the pixels do not
          (14, np.maximum(_rect((0, 5), (20, 22)), _rect((0, 5), (90, 92))), _solid(4))]
  idx = _CountingIndex(_index(objs))
  out = adcl_paste.paste(_crop_image(), np.zeros((CH, CW), np.uint8), _empty_pl(), _empty_pl(),
                         WIN, idx, None, candidates=[0, 1, 3], max_paste=1)
  assert out["num_pasted"] == 0 and idx.read == [3]  # only the L shape's pixels were read
  # With max_paste=1 the loop stops once something is pasted: 2 then 0 unread.
  idx.read.clear()
  out = adcl_paste.paste(_crop_image(), np.zeros((CH, CW), np.uint8), _empty_pl(), _empty_pl(),
                         WIN, idx, None, candidates=[1, 2, 0], max_paste=1)
  assert out["pasted"].tolist() == [2] and idx.read == [2]
  # 80 draws from a pool of misses: nothing pasted, the crop untouched.
  objs = [(11, _rect((0, 5), (0, 10)), _solid(1))] * 100
  objs.append((12, _rect((0, 5), (50, 60)), _solid(2)))
  out = _run(objs, cands=list(range(80)))
  assert out["num_pasted"] == 0


@pytest.mark.parametrize("n_inside, pasted", [(200, True), (201, False)])
def test_area_rule_at_one_eighth(n_inside, pasted):
  # 1/8 of 40x40 = 200 px, counted inside the window only (a 255 pixel counts too).
  m = _rect((0, 40), (45, 50))                 # 200 px inside
  m[0:10, 45] = 255
  m[0:40, 0:30] = 1                            # far outside the window: not counted
  if n_inside == 201:
    m[0, 50] = 1
  out = _run([(11, m, _solid(7))])
  assert out["num_pasted"] == int(pasted)


@pytest.mark.parametrize("left, pasted", [(25, True), (24, False)])
def test_earlier_object_must_keep_min_visible(left, pasted):
  a = _rect((0, 10), (40, 50))                 # 100 px
  b = _rect((0, 10), (40, 50))
  b.reshape(-1)[np.flatnonzero(a.reshape(-1))[:left]] = 0   # b hides all but `left` px of a
  c = _rect((20, 25), (60, 70))                # independent, still pasted
  out = _run([(11, a, _solid(1)), (12, b, _solid(2)), (13, c, _solid(3))])
  assert out["pasted"].tolist() == ([0, 1, 2] if pasted else [0, 2])
  # The same with a lower bar: min_visible scales the rule.
  out = _run([(11, a, _solid(1)), (12, b, _solid(2))], min_visible=left + 1)
  assert out["pasted"].tolist() == [0]


def test_visibility_counts_only_pixels_outside_the_new_mask_and_needs_presence():
  # a's 100 px: c hides 60 of them, b 20 others; d would hide 15 of the last
  # 20 (5 left < 10) → rejected; e hides 10 (exactly 10 left) → accepted.
  a = _rect((0, 10), (40, 50))
  c = _rect((0, 6), (40, 50))
  b = _rect((6, 8), (40, 50))
  d = _rect((8, 10), (40, 50))
  d.reshape(-1)[np.flatnonzero(d.reshape(-1))[15:]] = 0
  e = _rect((8, 9), (40, 50))
  objs = [(11, a, _solid(1)), (12, c, _solid(2)), (13, b, _solid(3)), (14, d, _solid(4)),
          (15, e, _solid(5))]
  out = _run(objs, min_visible=10)
  assert out["pasted"].tolist() == [0, 1, 2, 4]
  # min_visible=0 still requires every earlier object to stay present.
  out = _run([(11, a, _solid(1)), (12, _rect((0, 10), (40, 50)), _solid(2))], min_visible=0)
  assert out["pasted"].tolist() == [0]


@pytest.mark.parametrize("bg_left, pasted", [(25, True), (24, False)])
def test_background_must_keep_min_visible(bg_left, pasted):
  m = _rect((0, 40), (40, 80))
  m.reshape(-1)[np.flatnonzero(m.reshape(-1))[:bg_left]] = 0
  out = _run([(11, m, _solid(1))], max_area_fraction=1.0)
  assert out["num_pasted"] == int(pasted)
  # With a smaller object first, the background count is what is left after both.
  small = _rect((30, 40), (75, 80))        # 50 px, disjoint from nothing it needs
  big = _rect((0, 40), (40, 80)) * (1 - _rect((30, 40), (75, 80)))
  big.reshape(-1)[np.flatnonzero(big.reshape(-1))[:bg_left]] = 0
  out = _run([(11, small, _solid(1)), (12, big, _solid(2))], max_area_fraction=1.0)
  assert out["pasted"].tolist() == ([0, 1] if pasted else [0])


def test_small_first_object_blocks_all_later_pastes():
  # Reference quirk kept: the ≥ 25 test covers every earlier object, touched
  # or not, so one pasted with fewer than 25 px in the window stops the rest.
  small = _rect((0, 4), (40, 46))            # 24 px
  other = _rect((20, 30), (60, 70))          # disjoint, 100 px
  assert _run([(11, small, _solid(1)), (12, other, _solid(2))])["pasted"].tolist() == [0]
  assert _run([(11, other, _solid(1)), (12, small, _solid(2))])["pasted"].tolist() == [0, 1]


def test_stops_at_max_paste_in_draw_order():
  objs = [(11 + i % 7, _rect((2 * i, 2 * i + 2), (40, 60)), _solid(i)) for i in range(12)]
  cands = [11, 3, 7, 0, 9, 1, 4, 10, 2, 8, 5, 6]
  out = _run(objs, cands=cands)
  assert out["pasted"].tolist() == cands[:8] and out["num_pasted"] == 8
  out = _run(objs, cands=cands, max_paste=3)
  assert out["pasted"].tolist() == cands[:3]


def test_composite_occlusion_and_pasted_labels():
  # a (class 13, bottom) rows 5..15 x cols 45..60; b (class 11, top) rows 10..20 x cols 50..70.
  a = _rect((5, 15), (45, 60))
  b = _rect((10, 20), (50, 70))
  b[19, 69] = 255
  objs = [(13, a, _solid((10, 20, 30))), (11, b, _solid((200, 100, 50)))]
  img = _crop_image()
  out = _run(objs, image=img)
  assert out["num_pasted"] == 2 and out["pasted"].tolist() == [0, 1]
  ca, cb = a[:, 40:80] != 0, b[:, 40:80] != 0
  want = img.copy()
  want[ca] = (10, 20, 30)
  want[cb] = (200, 100, 50)
  want[19, 29] = 0                           # b's shared pixel: black
  np.testing.assert_array_equal(out["image"], want)
  sem = np.zeros((CH, CW), np.uint8)
  sem[ca] = 13
  sem[cb] = 11                               # b's 255 pixel included
  np.testing.assert_array_equal(out["semantic"], sem)
  # Amodal: top-most first, whole masks (255 → 1); modal: a loses b's area.
  am, mo = out["amodal"], out["modal"]
  assert am["classes"].tolist() == [11, 13] and mo["classes"].tolist() == [11, 13]
  np.testing.assert_array_equal(am["masks"], np.stack([cb, ca]).astype(np.uint8))
  np.testing.assert_array_equal(mo["masks"], np.stack([cb, ca & ~cb]).astype(np.uint8))
  # Crop columns: a 5..19, b 10..29; a's visible part still spans a's box.
  np.testing.assert_array_equal(am["boxes"], [[10, 10, 29, 19], [5, 5, 19, 14]])
  np.testing.assert_array_equal(mo["boxes"], [[10, 10, 29, 19], [5, 5, 19, 14]])


def test_modal_box_of_visible_part_vs_reference_amodal_box():
  a = _rect((5, 15), (45, 60))               # crop cols 5..19, rows 5..14
  b = _rect((5, 15), (52, 70))               # hides a's cols 12..19
  objs = [(13, a, _solid(1)), (12, b, _solid(2))]
  ours = _run(objs)
  ref = _run(objs, modal_box_from_visible=False)
  assert ours["modal"]["classes"].tolist() == [12, 13]
  np.testing.assert_array_equal(ours["modal"]["boxes"][1], [5, 5, 11, 14])
  np.testing.assert_array_equal(ref["modal"]["boxes"][1], [5, 5, 19, 14])
  np.testing.assert_array_equal(ours["modal"]["masks"], ref["modal"]["masks"])
  np.testing.assert_array_equal(ours["amodal"]["boxes"], ref["amodal"]["boxes"])
  # A visible part one column wide has no valid box: only its modal entry goes.
  b2 = _rect((5, 15), (46, 60))             # leaves a only its column 5
  out = _run([(13, a, _solid(1)), (12, b2, _solid(2))], min_visible=10)
  assert out["pasted"].tolist() == [0, 1]
  assert out["modal"]["classes"].tolist() == [12] and out["amodal"]["classes"].tolist() == [12, 13]
  ref = _run([(13, a, _solid(1)), (12, b2, _solid(2))], min_visible=10,
             modal_box_from_visible=False)
  assert ref["modal"]["classes"].tolist() == [12, 13]


def test_degenerate_pasted_object_is_painted_but_unlabelled_and_hides_nothing():
  a = _rect((5, 15), (45, 60))
  sliver = _rect((0, 20), (50, 51))          # one column over a
  out = _run([(13, a, _solid(1)), (15, sliver, _solid(9))])
  assert out["pasted"].tolist() == [0, 1]
  assert (out["semantic"][0:20, 10] == 15).all() and (out["image"][0:20, 10] == 9).all()
  assert out["amodal"]["classes"].tolist() == [13] and out["modal"]["classes"].tolist() == [13]
  np.testing.assert_array_equal(out["modal"]["masks"][0], a[:, 40:80])  # not cut by the sliver


def test_pl_instances_under_the_paste():
  p = _rect((10, 20), (50, 60))              # pasted: crop rows 10..19, cols 10..19
  pasted_area = p[:, 40:80] != 0
  unc = np.zeros((CH, CW), bool)
  unc[30:32, 30:38] = True                   # uncertain pixels, carried by every mask as 255
  def mk(rows, cols):
    m = _rect(rows, cols, shape=(CH, CW))
    return np.where(m == 1, 1, np.where(unc, 255, 0)).astype(np.uint8)
  m_inside = mk((12, 16), (12, 16))          # wholly under the paste
  m_part = mk((5, 15), (5, 15))              # partly under
  m_out = mk((25, 28), (0, 5))               # untouched
  masks = np.stack([m_inside, m_part, m_out])
  modal = _pl(masks, [11, 12, 13])
  amodal = _pl(masks, [14, 15, 16])
  out = _run([(17, p, _solid(3))], modal=modal, amodal=amodal)
  mo, am = out["modal"], out["amodal"]
  # modal: inside dropped, partial cut (incl. its 255s under the paste), kept in order, pasted last
  assert mo["classes"].tolist() == [12, 13, 17]
  cut = m_part.copy()
  cut[pasted_area] = 0
  np.testing.assert_array_equal(mo["masks"][:2], np.stack([cut, m_out]))
  # amodal: inside dropped (no 1 outside the paste), partial kept whole
  assert am["classes"].tolist() == [15, 16, 17]
  np.testing.assert_array_equal(am["masks"][:2], np.stack([m_part, m_out]))
  # boxes of the ==1 pixels: modal partial = rows 5..14, cols 5..14 minus the paste (L shape)
  np.testing.assert_array_equal(mo["boxes"][:2], [[5, 5, 14, 14], [0, 25, 4, 27]])
  np.testing.assert_array_equal(am["boxes"][:2], [[5, 5, 14, 14], [0, 25, 4, 27]])
  # the reference's rule takes the uncertain 255 pixels into every box
  ref = _run([(17, p, _solid(3))], modal=modal, amodal=amodal, box_rule="nonzero")
  np.testing.assert_array_equal(ref["modal"]["boxes"][:2], [[5, 5, 37, 31], [0, 25, 37, 31]])
  np.testing.assert_array_equal(ref["amodal"]["boxes"][:2], [[5, 5, 37, 31], [0, 25, 37, 31]])
  # pasted boxes do not depend on the rule (pasted masks are 0/1)
  np.testing.assert_array_equal(ref["modal"]["boxes"][2], out["modal"]["boxes"][2])


def test_pl_instance_with_degenerate_box_is_dropped_by_rule():
  m = np.zeros((CH, CW), np.uint8)
  m[5:15, 3] = 1                             # one column of 1s
  m[30, 30] = 255                            # an uncertain pixel far away
  out = _run([], modal=_pl(m[None], [11]), amodal=_pl(m[None], [11]))
  assert out["modal"]["classes"].size == 0 and out["amodal"]["classes"].size == 0
  ref = _run([], modal=_pl(m[None], [11]), amodal=_pl(m[None], [11]), box_rule="nonzero")
  np.testing.assert_array_equal(ref["modal"]["boxes"], [[3, 5, 30, 30]])


def test_black_fill_option():
  p = _rect((10, 20), (50, 60))
  p[10:12, 50:60] = 255
  img = _crop_image()
  black = _run([(12, p, _solid(77))], image=img)
  keep = _run([(12, p, _solid(77))], image=img, black_fill=False)
  assert (black["image"][10:12, 10:20] == 0).all()
  np.testing.assert_array_equal(keep["image"][10:12, 10:20], img[10:12, 10:20])
  for o in (black, keep):
    assert (o["image"][12:20, 10:20] == 77).all()
    assert (o["semantic"][10:20, 10:20] == 12).all()       # 255 pixels labelled too
    np.testing.assert_array_equal(o["amodal"]["masks"][0], (p[:, 40:80] != 0).astype(np.uint8))
  np.testing.assert_array_equal(black["semantic"], keep["semantic"])


def test_small_pool_drawn_whole_and_large_pool_80():
  c = adcl_paste.draw_candidates(5, np.random.default_rng(0))
  assert sorted(c.tolist()) == [0, 1, 2, 3, 4]
  c = adcl_paste.draw_candidates(2000, np.random.default_rng(0))
  assert c.size == 80 and np.unique(c).size == 80 and c.min() >= 0 and c.max() < 2000
  objs = [(11, _rect((6 * i, 6 * i + 5), (42, 52)), _solid(i)) for i in range(5)]
  out = adcl_paste.paste(_crop_image(), np.zeros((CH, CW), np.uint8), _empty_pl(), _empty_pl(),
                         WIN, _index(objs), np.random.default_rng(3))
  assert sorted(out["candidates"].tolist()) == [0, 1, 2, 3, 4]
  assert out["pasted"].tolist() == out["candidates"].tolist()


def test_empty_pool_changes_nothing():
  rng = np.random.default_rng(5)
  img = rng.integers(0, 256, (CH, CW, 3), dtype=np.uint8)
  sem = rng.integers(0, 18, (CH, CW)).astype(np.uint8)
  masks = np.stack([_rect((2, 9), (3, 12), shape=(CH, CW)),
                    _rect((20, 30), (20, 35), shape=(CH, CW))])
  masks[:, 0, 0] = 255
  modal, amodal = _pl(masks, [11, 17]), _pl(masks[::-1], [12, 13])
  out = adcl_paste.paste(img, sem, modal, amodal, WIN, _index([]), np.random.default_rng(0))
  assert out["num_pasted"] == 0 and out["candidates"].size == 0
  np.testing.assert_array_equal(out["image"], img)
  np.testing.assert_array_equal(out["semantic"], sem)
  for got, src in ((out["modal"], modal), (out["amodal"], amodal)):
    np.testing.assert_array_equal(got["masks"], src["masks"])
    np.testing.assert_array_equal(got["classes"], src["classes"])


def test_flip_pastes_the_unflipped_window():
  rng = np.random.default_rng(1)
  obj = _rect((5, 25), (44, 52))             # crop cols 4..11: asymmetric in the window
  obj[5:8, 44:46] = 255
  src = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  img = _crop_image()
  pl = _pl(_rect((30, 35), (0, 30), shape=(CH, CW))[None], [11])
  plain = _run([(14, obj, src)], image=img, modal=pl, amodal=pl)
  flipped_pl = _pl(pl["masks"][:, :, ::-1], [11])
  flip = _run([(14, obj, src)], image=img[:, ::-1], semantic=np.zeros((CH, CW), np.uint8),
              modal=flipped_pl, amodal=flipped_pl)
  q = obj[:, 40:80]
  for o in (plain, flip):
    np.testing.assert_array_equal(o["image"][q == 1], src[:, 40:80][q == 1])  # not mirrored
    np.testing.assert_array_equal(o["amodal"]["masks"][-1], (q != 0).astype(np.uint8))
    np.testing.assert_array_equal(o["amodal"]["boxes"][-1], [4, 5, 11, 24])
  # The PL crop's own pixels and labels stay flipped around the pasted object.
  np.testing.assert_array_equal(flip["image"][q == 0], img[:, ::-1][q == 0])
  np.testing.assert_array_equal(flip["modal"]["masks"][0], flipped_pl["masks"][0])


def test_deterministic_for_a_seed_and_inputs_untouched():
  rng = np.random.default_rng(11)
  objs, window, image, semantic, modal, amodal = _random_scene(rng, 200)
  idx = _index(objs)
  before = [image.copy(), semantic.copy(), modal["masks"].copy(), amodal["masks"].copy()]
  outs = [adcl_paste.paste(image, semantic, modal, amodal, window, idx, np.random.default_rng(s))
          for s in (7, 7, 8)]
  for a, b in zip(before, [image, semantic, modal["masks"], amodal["masks"]]):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(outs[0]["candidates"], outs[1]["candidates"])
  _assert_same(outs[0], outs[1])
  assert not np.array_equal(outs[0]["candidates"], outs[2]["candidates"])
  replay = adcl_paste.paste(image, semantic, modal, amodal, window, idx, None,
                            candidates=outs[0]["candidates"])
  _assert_same(replay, outs[0])


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="window"):
    _run([(11, _rect((0, 5), (40, 50)), _solid(1))], window=(0, 40, 40, 81))
  with pytest.raises(ValueError, match="panorama"):
    _run([(11, _rect((0, 5), (40, 50)), _solid(1))], window=(0, 40, 130, 170))
  with pytest.raises(ValueError, match="box_rule"):
    _run([], box_rule="any")


def test_pad_instances():
  masks = np.stack([_rect((i, i + 3), (0, 4), shape=(CH, CW)) for i in range(5)])
  branch = {"masks": masks, "classes": np.array([11, 17, 12, 13, 14], np.int32),
            "boxes": np.arange(20, dtype=np.float32).reshape(5, 4)}
  out = adcl_paste.pad_instances(branch, 7)
  assert out["masks"].shape == (7, CH, CW) and out["masks"].dtype == np.uint8
  assert out["classes"].tolist() == [0, 6, 1, 2, 3, 0, 0] and out["classes"].dtype == np.int32
  assert out["valid"].tolist() == [True] * 5 + [False] * 2
  np.testing.assert_array_equal(out["boxes"][:5], branch["boxes"])
  assert not out["boxes"][5:].any() and not out["masks"][5:].any()
  np.testing.assert_array_equal(out["masks"][:5], masks)
  short = adcl_paste.pad_instances(branch, 3)       # keeps the first three
  assert short["classes"].tolist() == [0, 6, 1] and short["valid"].all()
  np.testing.assert_array_equal(short["masks"], masks[:3])
  empty = adcl_paste.pad_instances({"masks": np.zeros((0, CH, CW), np.uint8),
                                    "classes": np.zeros((0,), np.int32),
                                    "boxes": np.zeros((0, 4), np.float32)}, 2)
  assert not empty["valid"].any() and empty["masks"].shape == (2, CH, CW)
  with pytest.raises(ValueError, match="11..17"):
    adcl_paste.pad_instances(dict(branch, classes=np.array([1, 17, 12, 13, 14])), 7)
