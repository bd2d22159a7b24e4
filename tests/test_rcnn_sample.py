"""R-CNN assignment order (mmdet 2.x): MaxIoUAssigner with low-quality
matching on the proposals only, then the GT boxes added as proposals, vs a
numpy port of ``MaxIoUAssigner.assign_wrt_overlaps`` + ``add_gt_``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models.rcnn import roi_heads

NUM_CLASSES = 7


def _np_iou(a, b):
  """mmdet bbox_overlaps (iou, no +1), [len(a), len(b)]."""
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-6)


def _np_max_iou_assign(props, gts, pos_thr, neg_thr, min_pos):
  """MaxIoUAssigner(match_low_quality=True, gt_max_assign_all=True), with the
  per-GT loop of the mmdet source; -1 ignore, 0 negative, i + 1 → GT i."""
  m = len(props)
  if len(gts) == 0:
    return np.zeros(m, int)
  ov = _np_iou(gts, props)
  assigned = -np.ones(m, int)
  max_ov, argmax_ov = ov.max(0), ov.argmax(0)
  assigned[(max_ov >= 0) & (max_ov < neg_thr)] = 0
  pos = max_ov >= pos_thr
  assigned[pos] = argmax_ov[pos] + 1
  gt_max = ov.max(1)
  for i in range(len(gts)):
    if gt_max[i] >= min_pos:
      assigned[ov[i] == gt_max[i]] = i + 1
  return assigned


def _np_sample_all(props, prop_valid, gts, gt_valid, classes, thr):
  """Assignment of the proposals, then ``add_gt_as_proposals`` (GT i → i+1).
  Returns the RoIs a sampler keeping every positive and negative yields, in
  the kernel's order (positives, then negatives, each by candidate index):
  ``(rois, pos, gt_index into the padded GT array, labels)``."""
  gt_ids = np.flatnonzero(gt_valid)
  p_ids = np.flatnonzero(prop_valid)
  a = _np_max_iou_assign(props[p_ids], gts[gt_ids], *thr)
  cand = [(gts[g], j + 1) for j, g in enumerate(gt_ids)]
  cand += [(props[p], a[i]) for i, p in enumerate(p_ids)]
  order = ([c for c in cand if c[1] > 0] + [c for c in cand if c[1] == 0])
  rois = np.array([c[0] for c in order], np.float32)
  pos = np.array([c[1] > 0 for c in order])
  gi = np.array([gt_ids[c[1] - 1] if c[1] > 0 else -1 for c in order])
  labels = np.where(pos, classes[np.maximum(gi, 0)], NUM_CLASSES)
  return rois, pos, gi, labels


def _run(props, prop_valid, gts, gt_valid, classes, thr):
  num = len(props) + len(gts)  # every candidate fits: nothing is dropped
  fn = jax.jit(roi_heads.rcnn_sample, static_argnames=(
      "num", "pos_fraction", "pos_iou_thr", "neg_iou_thr", "min_pos_iou",
      "num_classes"))
  s = fn(jnp.asarray(props, jnp.float32), jnp.asarray(prop_valid),
         jnp.asarray(gts, jnp.float32), jnp.asarray(gt_valid),
         jnp.asarray(classes, jnp.int32), jax.random.key(0), num=num,
         pos_fraction=1.0, pos_iou_thr=thr[0], neg_iou_thr=thr[1],
         min_pos_iou=thr[2], num_classes=NUM_CLASSES)
  return {k: np.asarray(v) for k, v in s.items()}


def _check(props, prop_valid, gts, gt_valid, classes, thr):
  want_rois, want_pos, want_gi, want_labels = _np_sample_all(
      props, prop_valid, gts, gt_valid, classes, thr)
  s = _run(props, prop_valid, gts, gt_valid, classes, thr)
  n = len(want_rois)
  assert s["valid"][:n].all() and not s["valid"][n:].any()
  np.testing.assert_array_equal(s["rois"][:n], want_rois)
  np.testing.assert_array_equal(s["pos"][:n], want_pos)
  np.testing.assert_array_equal(s["gt_index"][:n][want_pos], want_gi[want_pos])
  np.testing.assert_array_equal(s["labels"][:n], want_labels)
  return want_pos, want_gi


def _box(cx, cy, w, h):
  return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@pytest.mark.parametrize("thr", [(0.5, 0.5, 0.5), (0.6, 0.4, 0.3)])
def test_low_quality_matches_ties_and_padding_vs_numpy(thr):
  # Padded GT array: rows 1 and 3 are padding (garbage boxes).
  gts = np.array([_box(20, 20, 20, 20), [0, 0, 50, 50], _box(60, 20, 20, 20),
                  _box(40, 40, 8, 8), _box(20, 60, 16, 30),
                  _box(70, 70, 20, 20)], np.float32)
  gt_valid = np.array([1, 0, 1, 0, 1, 1], bool)
  classes = np.array([3, 6, 1, 5, 0, 2], np.int32)
  props = np.array([
      _box(22, 20, 20, 20),   # IoU ~0.82 with GT0
      _box(30, 20, 24, 20),   # GT0 ~0.38 and GT2 — a mid-IoU box
      _box(52, 20, 20, 20),   # IoU ~0.43 with GT2 = GT2's best: low quality
      _box(52, 20, 20, 20),   # a tie for GT2's best: both are re-assigned
      _box(20, 64, 16, 16),   # GT4's best, IoU 0.53
      _box(20, 52, 16, 16),   # second for GT4
      _box(78, 78, 20, 20),   # GT5's best, IoU ~0.39 (< min_pos 0.5)
      _box(40, 40, 30, 30),   # overlaps several GTs a little
      _box(90, 10, 10, 10),   # background
      _box(5, 90, 10, 10),    # background
      _box(60, 20, 20, 20),   # invalid proposal that equals GT2
      [0, 0, 0, 0]], np.float32)
  prop_valid = np.array([1] * 10 + [0, 0], bool)
  pos, gi = _check(props, prop_valid, gts, gt_valid, classes, thr)
  n_gt = gt_valid.sum()
  # The GT rows come first among the positives, each with its own index.
  np.testing.assert_array_equal(gi[:n_gt], np.flatnonzero(gt_valid))
  if thr[2] <= 0.43:
    # GT2's best proposals (a tie, IoU < pos_iou) are positives of GT2.
    assert (gi[pos] == 2).sum() == 1 + 2


def test_gt_best_proposal_is_reassigned_to_it():
  """A proposal above pos_iou for GT0 that is GT1's best match belongs to GT1
  (mmdet's low-quality pass, last GT wins); with the GT boxes among the
  candidates, GT1's best match would be GT1 itself and the proposal GT0's."""
  gts = np.array([_box(20, 20, 20, 20), _box(28, 20, 20, 20)], np.float32)
  props = np.array([_box(23, 20, 20, 20), _box(10, 20, 20, 20),
                    _box(80, 80, 10, 10)], np.float32)
  iou = _np_iou(gts, props)
  assert iou[0, 0] > iou[1, 0] >= 0.5 and iou[1, 0] == iou[1].max()
  pos, gi = _check(props, np.ones(3, bool), gts, np.ones(2, bool),
                   np.array([4, 2], np.int32), (0.5, 0.5, 0.5))
  s = _run(props, np.ones(3, bool), gts, np.ones(2, bool),
           np.array([4, 2], np.int32), (0.5, 0.5, 0.5))
  row = np.flatnonzero(np.all(s["rois"] == props[0], 1))[0]
  assert s["pos"][row] and s["gt_index"][row] == 1 and s["labels"][row] == 2


def test_random_boxes_vs_numpy():
  rs = np.random.RandomState(0)
  for trial in range(4):
    xy = rs.uniform(0, 60, (30, 2))
    props = np.concatenate([xy, xy + rs.uniform(4, 30, (30, 2))], -1)
    gxy = rs.uniform(0, 60, (5, 2))
    gts = np.concatenate([gxy, gxy + rs.uniform(6, 30, (5, 2))], -1)
    props[3] = props[4]                      # duplicate proposals (ties)
    props[7] = gts[1] + 0.5                  # near-copies of GTs
    gt_valid = rs.uniform(size=5) < 0.8
    gt_valid[0] = True
    prop_valid = np.arange(30) < 26
    classes = rs.randint(0, NUM_CLASSES, 5).astype(np.int32)
    for thr in ((0.5, 0.5, 0.5), (0.7, 0.3, 0.3)):
      _check(props.astype(np.float32), prop_valid, gts.astype(np.float32),
             gt_valid, classes, thr)
