"""The R-CNN branches on a full 360° panorama (``circular=True``).

Oracles written here: boxes rasterised onto a circle (IoU, greedy NMS), the
flat mmcv RoIAlign port of ``test_rcnn_roi_align`` on an explicitly
wrap-padded map, a per-pixel ``grid_sample`` paste on an extended canvas
folded back modulo W, and the detections of the un-rolled panorama shifted
by the roll (the full tiny network).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_rcnn_roi_align import np_roi_align
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models.rcnn import anchors as anchor_ops
from unlock_jax.models.rcnn import boxes as box_ops
from unlock_jax.models.rcnn import branch as rcnn_branch
from unlock_jax.models.rcnn import nms as nms_ops
from unlock_jax.models.rcnn import roi_align
from unlock_jax.models.rcnn import roi_heads
from unlock_jax.models.rcnn import rpn


# --- circular IoU and NMS vs boxes rasterised onto a circle ----------------

def _cells(box, w):
  """Integer box → (set of columns on the circle, set of rows)."""
  x1, y1, x2, y2 = (int(round(v)) for v in box)
  return {c % w for c in range(x1, x2)}, set(range(y1, y2))


def _raster_iou(a, b, w):
  ca, ra = _cells(a, w)
  cb, rb = _cells(b, w)
  inter = len(ca & cb) * len(ra & rb)
  union = len(ca) * len(ra) + len(cb) * len(rb) - inter
  return inter / union if union else 0.0


def _random_boxes(rs, n, w, h):
  """Integer wrapped boxes: 0 <= x1 < W, width 1..W (many cross the seam)."""
  x1 = rs.randint(0, w, n)
  width = rs.randint(1, w + 1, n)
  y1 = rs.randint(0, h - 1, n)
  y2 = y1 + 1 + (rs.randint(0, h, n) % (h - y1))
  return np.stack([x1, y1, x1 + width, y2], -1).astype(np.float32)


def test_circular_iou_matches_rasterised_circle():
  w, h = 40, 12
  rs = np.random.RandomState(0)
  a = _random_boxes(rs, 30, w, h)
  b = _random_boxes(rs, 25, w, h)
  # Hand-picked: the halves of a crossing box, the same box written from the
  # other end, the full circle.
  a[:4] = [[35, 2, 45, 8], [35, 2, 45, 8], [0, 0, 40, 12], [39, 0, 41, 12]]
  b[:4] = [[0, 2, 5, 8], [-5, 2, 5, 8], [13, 3, 20, 5], [0, 0, 1, 12]]
  want = np.array([[_raster_iou(p, q, w) for q in b] for p in a])
  assert np.sum((want > 0) & (a[:, 2:3] > w)) > 20  # crossing boxes overlap
  got = np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b),
                                        period=w))
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Any representative modulo W is the same box.
  for s in (-w, w, 2 * w):
    moved = b + np.float32([s, 0, s, 0])
    np.testing.assert_allclose(
        np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(moved),
                                        period=w)), want, atol=1e-6)
  # The flat IoU sees the halves of a crossing object as disjoint.
  flat = np.asarray(box_ops.pairwise_iou(jnp.asarray(a[:1]),
                                         jnp.asarray(b[:1])))
  assert flat[0, 0] == 0 and want[0, 0] == pytest.approx(0.5)


def test_circular_nms_matches_greedy_on_the_circle():
  w, h = 40, 12
  rs = np.random.RandomState(1)
  boxes = _random_boxes(rs, 60, w, h)
  scores = rs.permutation(60).astype(np.float32)
  valid = rs.uniform(size=60) > 0.1
  keep_want = np.zeros(60, bool)
  for i in np.argsort(-scores):
    if valid[i] and not any(
        _raster_iou(boxes[i], boxes[j], w) > 0.3
        for j in np.flatnonzero(keep_want)):
      keep_want[i] = True
  got = np.asarray(nms_ops.nms_keep(jnp.asarray(boxes), jnp.asarray(scores),
                                    jnp.asarray(valid), 0.3, period=w))
  np.testing.assert_array_equal(got, keep_want)
  flat = np.asarray(nms_ops.nms_keep(jnp.asarray(boxes), jnp.asarray(scores),
                                     jnp.asarray(valid), 0.3))
  assert not np.array_equal(flat, keep_want)


def test_decode_circular_wraps_columns_and_clips_rows():
  h, w = 30, 64
  rs = np.random.RandomState(2)
  rois = np.stack([rs.uniform(-20, 70, 50), rs.uniform(0, 20, 50)], -1)
  rois = np.concatenate([rois, rois + rs.uniform(2, 40, (50, 2))], -1)
  deltas = rs.normal(0, 0.5, (50, 4)).astype(np.float32)
  raw = np.asarray(box_ops.decode(jnp.asarray(rois, jnp.float32),
                                  jnp.asarray(deltas), box_ops.RCNN_STDS))
  got = np.asarray(box_ops.decode(jnp.asarray(rois, jnp.float32),
                                  jnp.asarray(deltas), box_ops.RCNN_STDS,
                                  (h, w), circular=True))
  assert np.all((got[:, 0] >= 0) & (got[:, 0] < w))
  np.testing.assert_allclose(got[:, 2] - got[:, 0],
                             np.minimum(raw[:, 2] - raw[:, 0], w), atol=1e-4)
  off = (got[:, 0] - raw[:, 0]) / w
  np.testing.assert_allclose(off, np.round(off), atol=1e-5)
  np.testing.assert_allclose(got[:, [1, 3]], np.clip(raw[:, [1, 3]], 0, h),
                             atol=1e-5)
  assert np.any(got[:, 2] > w)  # some cross the seam
  # A roll by 64 px of the RoIs is the same wrapped box (W = 64 here).
  moved = np.asarray(box_ops.decode(jnp.asarray(rois + [w, 0, w, 0],
                                                jnp.float32),
                                    jnp.asarray(deltas), box_ops.RCNN_STDS,
                                    (h, w), circular=True))
  np.testing.assert_allclose(np.asarray(box_ops.pairwise_iou(
      jnp.asarray(got), jnp.asarray(moved), period=w)).diagonal(), 1.0,
                             atol=1e-4)


# --- circular RoIAlign vs the flat one on a wrap-padded map ----------------

def _wrap_padded(f):
  """[h, w, C] → [h, 4w, C]: one copy on the left, two on the right, so a
  wrapped box moved right by one copy never reaches the padded map's ends."""
  return np.concatenate([f, f, f, f], axis=1)


def _oracle(f, box, stride, out, ratio):
  w_px = f.shape[1] * stride
  moved = np.asarray(box, np.float64) + [w_px, 0, w_px, 0]
  return np_roi_align(_wrap_padded(f), moved, 1.0 / stride, out, ratio)


_CROSSING = np.array([
    [230.0, 3.0, 270.0, 40.0],     # crosses the seam
    [255.3, 10.2, 257.9, 30.5],    # tiny box straddling column W-1 | 0
    [1.2, 0.0, 40.0, 63.0],        # starts in the first half-cell: wraps
    [100.0, 5.0, 356.0, 60.0],     # the full circle
    [180.5, 50.0, 300.7, 64.0],    # wide and crossing, at the bottom
], np.float32)


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_circular_roi_align_equals_flat_on_wrap_padded_map(stride):
  h, w, c = 64, 256, 3
  rs = np.random.RandomState(stride)
  f = rs.normal(size=(h // stride, w // stride, c)).astype(np.float32)
  boxes = jnp.asarray(_CROSSING)
  align = jax.jit(lambda x, b, **kw: roi_align.multilevel_roi_align(
      [x], b, 7, strides=(stride,), **kw),
                  static_argnames=("chunk", "sampling_ratio", "circular"))
  for ratio, kw in ((0, {}), (0, dict(chunk=2)), (2, dict(sampling_ratio=2))):
    got = np.asarray(align(jnp.asarray(f), boxes, circular=True, **kw))
    want = np.stack([_oracle(f, b, stride, 7, ratio) for b in _CROSSING])
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=str(kw))
  flat = np.asarray(align(jnp.asarray(f), boxes))
  assert np.abs(flat[0] - got[0]).max() > 1e-2  # the seam matters


def test_circular_roi_align_multilevel_mapping():
  h, w, c = 128, 512, 2
  strides = roi_align.ROI_STRIDES
  rs = np.random.RandomState(7)
  feats = [rs.normal(size=(h // s, w // s, c)).astype(np.float32)
           for s in strides]
  boxes = np.array([[500.0, 10.0, 530.0, 50.0],     # level 0
                    [450.0, 0.0, 600.0, 100.0],     # level 1
                    [300.0, 4.0, 780.0, 124.0]],    # level 2
                   np.float32)
  got = np.asarray(jax.jit(lambda fs, b: roi_align.multilevel_roi_align(
      fs, b, 7, circular=True))([jnp.asarray(x) for x in feats],
                                jnp.asarray(boxes)))
  lvls = np.asarray(roi_align.map_roi_levels(jnp.asarray(boxes)))
  np.testing.assert_array_equal(lvls, [0, 1, 2])
  for b, lvl, g in zip(boxes, lvls, got):
    np.testing.assert_allclose(g, _oracle(feats[lvl], b, strides[lvl], 7, 0),
                               atol=2e-5)


def test_window_budget_circular_covers_full_width_rois():
  sizes = [(16, 64), (8, 32), (4, 16), (2, 8)]
  flat = roi_align.window_budget(sizes, roi_align.ROI_STRIDES)
  circ = roi_align.window_budget(sizes, roi_align.ROI_STRIDES, circular=True)
  # A full-circle box on the last level: 2 rows x (8 + 2) unwrapped columns.
  assert circ >= max(flat, 2 * 10)


# --- mask paste folded back modulo W ---------------------------------------

def _grid_sample_1d(probs_axis_len, lo, hi, pix):
  """grid_sample(align_corners=False, zero padding) source coordinates and
  corner weights along one axis for pixel centres ``pix``."""
  g = (pix - lo) / (hi - lo) * 2 - 1
  ix = ((g + 1) * probs_axis_len - 1) / 2
  i0 = np.floor(ix).astype(int)
  t = ix - i0
  return i0, t


def _np_paste_extended(p, box, h, w):
  """Soft mask on columns -W .. 2W-1 (per pixel, grid_sample's definition)."""
  s = p.shape[0]
  ys = np.arange(h) + 0.5
  xs = np.arange(-w, 2 * w) + 0.5
  y0, ty = _grid_sample_1d(s, box[1], box[3], ys)
  x0, tx = _grid_sample_1d(s, box[0], box[2], xs)
  out = np.zeros((h, 3 * w))
  for dy, wy in ((0, 1 - ty), (1, ty)):
    for dx, wx in ((0, 1 - tx), (1, tx)):
      yi = y0 + dy
      xi = x0 + dx
      ok = ((yi >= 0) & (yi < s))[:, None] & ((xi >= 0) & (xi < s))[None]
      val = p[np.clip(yi, 0, s - 1)][:, np.clip(xi, 0, s - 1)]
      out += np.where(ok, val * wy[:, None] * wx[None], 0.0)
  return out


def test_circular_paste_folds_the_extended_canvas():
  h, w, s = 20, 60, 28
  rs = np.random.RandomState(3)
  probs = rs.uniform(size=(5, s, s)).astype(np.float32)
  boxes = np.array([[50.3, 2.5, 71.7, 17.2],    # crosses the seam
                    [59.6, 0.0, 61.4, 20.0],    # thin, on the seam
                    [5.0, 3.0, 64.0, 15.0],     # almost the full circle
                    [10.0, 0.0, 70.0, 20.0],    # the full circle
                    [3.2, 4.0, 30.7, 18.0]],    # an ordinary box
                   np.float32)
  got = np.asarray(roi_heads.paste_masks(jnp.asarray(probs),
                                         jnp.asarray(boxes), (h, w), 0.5,
                                         chunk=2, circular=True))
  for p, b, g in zip(probs, boxes, got):
    soft = _np_paste_extended(p.astype(np.float64), b, h, w).reshape(h, 3, w)
    want = np.any(soft >= 0.5, axis=1)
    close = np.any(np.abs(soft - 0.5) < 1e-5, axis=1)
    np.testing.assert_array_equal(g[~close], want[~close])
  assert got[0][:, 0].any() and got[0][:, -1].any()  # pixels at both ends
  flat = np.asarray(roi_heads.paste_masks(jnp.asarray(probs),
                                          jnp.asarray(boxes), (h, w), 0.5))
  np.testing.assert_array_equal(got[4], flat[4])
  assert not flat[0][:, :5].any()  # the flat paste loses the part past W


# --- one object across the seam: one proposal, one detection, one mask -----

def test_object_across_the_seam_gives_one_detection():
  h, w = 64, 256
  strides = (4, 8, 16, 32, 64)
  sizes = [(h // s, w // s) for s in strides]
  anchors = anchor_ops.multilevel_anchors(sizes, strides)
  obj = np.array([240.0, 16.0, 272.0, 48.0])  # 32×32, centred on the seam
  # Stride-4 square anchors (32×32, index 1 of 3) at row 8 (y centre 32):
  # the last column's (x centre 252) and the first column's (x centre 0)
  # both regress onto the object.
  logits = [np.full(a.shape[0], -10.0, np.float32) for a in anchors]
  reg = [np.zeros(a.shape, np.float32) for a in anchors]
  for col, dx in ((63, (256.0 - 252.0) / 32), (0, 0.0)):
    i = (8 * 64 + col) * 3 + 1
    logits[0][i] = 5.0 - 0.1 * (col == 0)
    reg[0][i] = [dx, 0, 0, 0]
    np.testing.assert_allclose(anchors[0][i], [col * 4.0 - 16, 16,
                                               col * 4.0 + 16, 48])
  out = {}
  for circular in (False, True):
    propose = jax.jit(functools.partial(
        rpn.rpn_proposals, image_shape=(h, w), nms_pre=50, max_num=40,
        iou_thr=0.7, circular=circular))
    props, scores, valid = map(np.asarray, propose(
        [jnp.asarray(x) for x in logits], [jnp.asarray(x) for x in reg],
        [jnp.asarray(a) for a in anchors]))
    sure = valid & (scores > 0.9)
    out[circular] = props[sure]
  assert len(out[False]) == 2  # two clipped halves
  np.testing.assert_allclose(out[False], [[240, 16, 256, 48], [0, 16, 16, 48]])
  np.testing.assert_allclose(out[True], [obj], atol=1e-4)

  # R-CNN: the two halves (flat) / the two representatives of the crossing
  # box (-16..16 and 240..272) all classified as class 2.
  props = np.array([obj, obj - [256, 0, 256, 0], [100, 10, 140, 50]],
                   np.float32)
  cls = np.full((3, 8), -5.0, np.float32)
  cls[:2, 2] = 5.0
  cls[2, 7] = 5.0  # background
  reg = np.zeros((3, 7, 4), np.float32)
  dets = {}
  for circular in (False, True):
    detect = jax.jit(functools.partial(
        roi_heads.detect, image_shape=(h, w), score_thr=0.5, iou_thr=0.5,
        max_dets=5, circular=circular))
    b, s, c, ok = map(np.asarray, detect(
        jnp.asarray(cls), jnp.asarray(reg), jnp.asarray(props),
        jnp.ones(3, bool)))
    dets[circular] = (b[ok], c[ok])
  assert len(dets[False][0]) == 2
  boxes, classes = dets[True]
  np.testing.assert_allclose(boxes, [obj], atol=1e-4)
  np.testing.assert_array_equal(classes, [2])
  mask = np.asarray(roi_heads.paste_masks(
      jnp.ones((1, 28, 28)), jnp.asarray(boxes), (h, w), 0.5,
      circular=True))[0]
  cols = np.flatnonzero(mask.any(0))
  np.testing.assert_array_equal(cols, np.r_[0:16, 240:256])
  assert mask.sum() == 32 * 32


def test_branch_rejects_circular_training_and_odd_widths():
  model = rcnn_branch.MaskRCNNBranch(defaults.tiny_rcnn_config())
  fpn = [jnp.zeros((1, 64 // s, 256 // s, 16)) for s in (4, 8, 16, 32, 64)]
  with pytest.raises(ValueError, match="test-time"):
    model.apply({"params": {}}, fpn, (64, 256), train=True, targets={},
                circular=True)
  fpn = [jnp.zeros((1, 2, 240 // s, 16)) for s in (4, 8, 16, 32, 64)]
  with pytest.raises(ValueError, match="multiple of 64"):
    model.apply({"params": {}}, fpn, (64, 240), train=False, circular=True)


# --- the full network: detections of a rolled panorama ---------------------

H, W = 64, 256
MIN_DETS = 10


def _net_cfg():
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = True
  # A random network's class scores are low and alike: a low threshold and
  # more slots keep enough detections for the comparison to mean something.
  cfg.rcnn.score_thr = 0.01
  cfg.rcnn.max_dets = 20
  return cfg


@functools.cache
def _network():
  cfg = _net_cfg()
  model = amodalpass.build(cfg)
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros((1, H, W, 3)), train=False))
  rng = np.random.default_rng(0)

  def fill(path, s):  # numpy randoms: compiling init is not under test
    if "'var'" in jax.tree_util.keystr(path):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    return jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype)

  return cfg, model, jax.tree_util.tree_map_with_path(fill, shapes)


def _circ_close(a, b, w, tol):
  dx = (a[0] - b[0] + w / 2) % w - w / 2
  return (abs(dx) < tol and abs((a[2] - a[0]) - (b[2] - b[0])) < tol
          and abs(a[1] - b[1]) < tol and abs(a[3] - b[3]) < tol)


def _matched(base, rolled, shift, w):
  """How many of ``base``'s detections, shifted by ``shift`` columns, appear
  in ``rolled`` (same class, score within 1e-4, wrapped box within 1e-2 px,
  mask rolled with at most 0.1% of its pixels flipped by rounding)."""
  used = set()
  n = 0
  for i in np.flatnonzero(base["valid"]):
    want = base["boxes"][i] + [shift, 0, shift, 0]
    for j in np.flatnonzero(rolled["valid"]):
      if (j in used or rolled["classes"][j] != base["classes"][i]
          or abs(rolled["scores"][j] - base["scores"][i]) > 1e-4
          or not _circ_close(rolled["boxes"][j], want, w, 1e-2)):
        continue
      m = np.roll(base["masks"][i], shift, axis=1)
      if np.mean(m != rolled["masks"][j]) <= 1e-3:
        used.add(j)
        n += 1
        break
  return n


def test_detections_of_a_rolled_panorama_are_the_rolled_detections():
  cfg, model, variables = _network()
  img = np.random.default_rng(1).normal(size=(H, W, 3)).astype(np.float32)
  shifts = (64, 128)
  batch = jnp.asarray(np.stack([img] + [np.roll(img, s, 1) for s in shifts]))
  out = jax.device_get(jax.jit(lambda v, x: model.apply(
      v, x, train=False, circular=True))(variables, batch))
  for br in ("modal", "amodal"):
    d = {k: np.asarray(v) for k, v in out[br].items()}
    per = [{k: v[b] for k, v in d.items()} for b in range(len(batch))]
    n = int(per[0]["valid"].sum())
    assert n >= MIN_DETS, (br, n)
    x1, x2 = per[0]["boxes"][:, 0], per[0]["boxes"][:, 2]
    ok = per[0]["valid"]
    assert np.all((x1[ok] >= 0) & (x1[ok] < W) & (x2[ok] <= x1[ok] + W))
    crossing = 0
    for b, s in enumerate(shifts, 1):
      assert per[b]["valid"].sum() == n, (br, s)
      assert _matched(per[0], per[b], s, W) == n, (br, s)
      crossing += np.sum(per[b]["valid"] & (per[b]["boxes"][:, 2] > W))
    assert crossing > 0, br  # the roll moves detections across the seam

  # The flat R-CNN on the same (roll-equivariant) FPN maps is not.
  flat = jax.device_get(jax.jit(lambda p, f: rcnn_branch.MaskRCNNBranch(
      cfg.rcnn).apply({"params": p}, f, (H, W), train=False))(
          variables["params"]["modal"], out["fpn"]))
  per = [{k: np.asarray(v)[b] for k, v in flat.items()}
         for b in range(len(batch))]
  assert per[0]["valid"].sum() >= MIN_DETS
  assert any(_matched(per[0], per[b], s, W) < per[0]["valid"].sum()
             for b, s in enumerate(shifts, 1))
