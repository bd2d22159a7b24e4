"""MaxIoUAssigner and the static random sampler vs plain numpy."""
import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.models.rcnn import assign
from unlock_jax.models.rcnn import sampling


def _np_iou(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  ar = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  return inter / np.maximum(ar(a)[:, None] + ar(b)[None] - inter, 1e-6)


def _np_assign(boxes, gts, pos_thr, neg_thr, min_pos):
  """mmdet 2.x MaxIoUAssigner.assign_wrt_overlaps, loops as in the source."""
  m = len(boxes)
  if len(gts) == 0:
    return np.zeros(m, int)
  ov = _np_iou(gts, boxes)
  assigned = -np.ones(m, int)
  max_ov, argmax_ov = ov.max(0), ov.argmax(0)
  gt_max = ov.max(1)
  assigned[(max_ov >= 0) & (max_ov < neg_thr)] = 0
  pos = max_ov >= pos_thr
  assigned[pos] = argmax_ov[pos] + 1
  for i in range(len(gts)):
    if gt_max[i] >= min_pos:
      assigned[ov[i] == gt_max[i]] = i + 1
  return assigned


def _boxes(rs, n, size=64.0):
  xy = rs.uniform(0, size * 0.6, (n, 2))
  wh = rs.uniform(4, size * 0.4, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_max_iou_assigner_vs_numpy_with_padding():
  rs = np.random.RandomState(0)
  for trial in range(5):
    boxes = _boxes(rs, 60)
    gts = _boxes(rs, 5)
    boxes[:3] = gts[:3]  # exact ties with GT (IoU 1)
    boxes[10] = boxes[11]  # duplicate boxes: tied best anchors of a GT
    for thr in ((0.7, 0.3, 0.3), (0.5, 0.5, 0.5)):
      want = _np_assign(boxes, gts, *thr)
      # Pad GT with garbage rows that must be ignored.
      pad = np.concatenate([gts[:2], _boxes(rs, 3), gts[2:]], 0)
      valid = np.array([1, 1, 0, 0, 0, 1, 1, 1], bool)
      got, _ = assign.max_iou_assign(
          jnp.asarray(boxes), jnp.ones(60, bool), jnp.asarray(pad),
          jnp.asarray(valid), pos_iou_thr=thr[0], neg_iou_thr=thr[1],
          min_pos_iou=thr[2])
      got = np.asarray(got)
      # Map padded GT index back to the compact index.
      remap = np.array([0, 1, 2, -9, -9, -9, 3, 4, 5])
      got = np.where(got < 0, got, remap[np.maximum(got, 0)])
      np.testing.assert_array_equal(got, want, err_msg=str(trial))


def test_assigner_no_gt_all_negative_and_invalid_boxes_ignored():
  rs = np.random.RandomState(1)
  boxes = _boxes(rs, 10)
  got, _ = assign.max_iou_assign(
      jnp.asarray(boxes), jnp.arange(10) < 8, jnp.asarray(_boxes(rs, 3)),
      jnp.zeros(3, bool), pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
  np.testing.assert_array_equal(np.asarray(got), [0] * 8 + [-1] * 2)


def test_sampler_budget_fraction_and_padding():
  rs = np.random.RandomState(2)
  m, num, frac = 300, 64, 0.25

  @jax.jit
  def run(key, is_pos, is_neg):
    u = sampling.random_keys(key, m)
    pos, neg = sampling.sample_pos_neg(u, is_pos, is_neg, num, frac)
    idx, valid, ip = sampling.gather_selected(pos, neg, num)
    return pos, neg, idx, valid, ip

  for n_pos, n_neg in ((5, 200), (100, 200), (40, 10), (0, 0)):
    label = np.full(m, -1)  # -1: ignored/padded, never sampled
    perm = rs.permutation(m)
    label[perm[:n_pos]] = 1
    label[perm[n_pos:n_pos + n_neg]] = 0
    pos, neg, idx, valid, ip = map(np.asarray, run(
        jax.random.key(n_pos), jnp.asarray(label == 1),
        jnp.asarray(label == 0)))
    exp_pos = min(n_pos, int(num * frac))
    exp_neg = min(n_neg, num - exp_pos)  # RandomSampler fills with negatives
    assert pos.sum() == exp_pos and neg.sum() == exp_neg
    assert np.all(label[pos] == 1) and np.all(label[neg] == 0)
    assert valid.sum() == exp_pos + exp_neg and ip.sum() == exp_pos
    assert np.all(ip[:exp_pos]) and not np.any(ip[exp_pos:])
    np.testing.assert_array_equal(np.sort(idx[valid]),
                                  np.sort(np.flatnonzero(pos | neg)))


def test_sampler_is_uniform():
  m, num = 20, 4
  is_pos = jnp.arange(m) < 10
  f = jax.jit(jax.vmap(lambda k: sampling.sample_pos_neg(
      sampling.random_keys(k, m), is_pos, ~is_pos, num, 0.5)[0]))
  counts = np.asarray(f(jax.random.split(jax.random.key(0), 4000))).sum(0)
  # Each of the 10 positives is drawn with p = 2/10: 800 ± ~4 sigma.
  assert np.all(np.abs(counts[:10] - 800) < 110), counts
  assert np.all(counts[10:] == 0)
