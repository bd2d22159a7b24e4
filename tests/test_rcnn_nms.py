"""Static NMS vs plain greedy numpy NMS (ties, padding, per class)."""
import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.models.rcnn import nms


def _np_iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / max(u, 1e-6)


def _np_greedy(boxes, scores, valid, thr):
  """Greedy NMS; ties by lower index (stable sort). Returns kept indices."""
  order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
  kept = []
  for i in order:
    if all(_np_iou(boxes[i], boxes[j]) <= thr for j in kept):
      kept.append(i)
  return kept


def _clustered_boxes(rs, n):
  centres = rs.uniform(10, 90, (4, 2))
  c = centres[rs.randint(0, 4, n)] + rs.normal(0, 3, (n, 2))
  wh = rs.uniform(8, 20, (n, 2))
  return np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)


def test_nms_matches_greedy_numpy():
  rs = np.random.RandomState(0)
  f = jax.jit(nms.nms_topk, static_argnums=(3, 4))
  for trial in range(6):
    n = 80
    boxes = _clustered_boxes(rs, n)
    scores = rs.uniform(size=n).astype(np.float32)
    scores[5:15] = scores[4]  # score ties
    boxes[20] = boxes[21]  # identical boxes
    valid = rs.uniform(size=n) > 0.2  # padding rows
    boxes[~valid] = rs.uniform(0, 100, (np.sum(~valid), 4))  # garbage
    thr = (0.3, 0.5, 0.7)[trial % 3]
    want = _np_greedy(boxes, scores, valid, thr)
    idx, ok = f(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid),
                thr, 100)
    idx, ok = np.asarray(idx), np.asarray(ok)
    assert ok.sum() == len(want)
    np.testing.assert_array_equal(idx[ok], want)
    assert not np.any(ok[len(want):])


def test_nms_truncates_and_handles_all_invalid():
  rs = np.random.RandomState(1)
  boxes = _clustered_boxes(rs, 30)
  scores = rs.uniform(size=30).astype(np.float32)
  want = _np_greedy(boxes, scores, np.ones(30, bool), 0.5)
  idx, ok = nms.nms_topk(jnp.asarray(boxes), jnp.asarray(scores),
                         jnp.ones(30, bool), 0.5, 3)
  np.testing.assert_array_equal(np.asarray(idx), want[:3])
  assert np.all(np.asarray(ok))
  idx, ok = nms.nms_topk(jnp.asarray(boxes), jnp.asarray(scores),
                         jnp.zeros(30, bool), 0.5, 40)
  assert not np.any(np.asarray(ok)) and idx.shape == (40,)


def test_multiclass_nms_vs_numpy():
  rs = np.random.RandomState(2)
  n, c = 40, 3
  boxes = np.stack([_clustered_boxes(rs, n) for _ in range(c)], 1)
  scores = rs.uniform(size=(n, c)).astype(np.float32)
  valid = np.arange(n) < 35
  thr_s, thr_iou, max_out = 0.3, 0.5, 12
  cands = []
  for k in range(c):
    ok = valid & (scores[:, k] > thr_s)
    for i in _np_greedy(boxes[:, k], scores[:, k], ok, thr_iou):
      cands.append((scores[i, k], i * c + k))
  # Sort by score desc, ties by flat index (stable).
  cands.sort(key=lambda t: (-t[0], t[1]))
  cands = cands[:max_out]
  b, s, cls, roi, ok = map(np.asarray, jax.jit(
      nms.multiclass_nms, static_argnums=(3, 4, 5))(
          jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid),
          thr_s, thr_iou, max_out))
  assert ok.sum() == len(cands)
  np.testing.assert_allclose(s[ok], [t[0] for t in cands])
  np.testing.assert_array_equal(roi[ok] * c + cls[ok], [t[1] for t in cands])
  np.testing.assert_allclose(b[ok], boxes[roi[ok], cls[ok]])
