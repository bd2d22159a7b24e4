"""RPN proposals, targets and losses, and R-CNN sampling vs plain numpy."""
import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.models.rcnn import anchors as anchor_ops
from unlock_jax.models.rcnn import roi_heads
from unlock_jax.models.rcnn import rpn


def _iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / max(u, 1e-6)


def _decode(p, d, shape):
  px, py = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  mr = abs(np.log(16 / 1000))
  gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
  gw = pw * np.exp(np.clip(d[:, 2], -mr, mr))
  gh = ph * np.exp(np.clip(d[:, 3], -mr, mr))
  b = np.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], -1)
  b[:, 0::2] = np.clip(b[:, 0::2], 0, shape[1])
  b[:, 1::2] = np.clip(b[:, 1::2], 0, shape[0])
  return b


def _np_proposals(logits, deltas, anchors, shape, nms_pre, max_num, thr):
  """mmdet 2.x RPNHead._get_bboxes_single + batched_nms by level."""
  out = []
  for lg, d, a in zip(logits, deltas, anchors):
    s = 1 / (1 + np.exp(-lg))
    order = np.argsort(-s, kind="stable")[:nms_pre]
    b = _decode(a[order], d[order], shape)
    s = s[order]
    ok = (b[:, 2] - b[:, 0] > 0) & (b[:, 3] - b[:, 1] > 0)
    kept = []
    for i in range(len(s)):
      if ok[i] and all(_iou(b[i], b[j]) <= thr for j in kept):
        kept.append(i)
    out += [(s[i], b[i]) for i in kept]
  out.sort(key=lambda t: -t[0])
  return out[:max_num]


def test_rpn_proposals_vs_numpy():
  rs = np.random.RandomState(0)
  shape = (64, 96)
  sizes = [(16, 24), (8, 12), (4, 6)]
  anchors = anchor_ops.multilevel_anchors(sizes, (4, 8, 16))
  logits = [rs.normal(size=len(a)).astype(np.float32) for a in anchors]
  deltas = [rs.normal(0, 0.3, (len(a), 4)).astype(np.float32)
            for a in anchors]
  want = _np_proposals(logits, deltas, anchors, shape, 100, 60, 0.7)
  boxes, scores, valid = jax.jit(
      rpn.rpn_proposals, static_argnums=(3,),
      static_argnames=("nms_pre", "max_num", "iou_thr"))(
          [jnp.asarray(x) for x in logits], [jnp.asarray(x) for x in deltas],
          [jnp.asarray(x) for x in anchors], shape, nms_pre=100, max_num=60,
          iou_thr=0.7)
  valid = np.asarray(valid)
  assert valid.sum() == len(want)
  np.testing.assert_allclose(np.asarray(scores)[valid], [w[0] for w in want],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(boxes)[valid], [w[1] for w in want],
                             rtol=1e-4, atol=1e-3)


def test_rpn_targets_and_losses_vs_numpy():
  rs = np.random.RandomState(1)
  anchors = anchor_ops.multilevel_anchors([(8, 8), (4, 4)], (4, 8))
  anc = np.concatenate(anchors)
  gts = np.array([[4, 4, 20, 30], [12, 2, 30, 14], [0, 0, 0, 0]], np.float32)
  gv = np.array([True, True, False])
  pos, neg, deltas = jax.jit(
      rpn.rpn_targets, static_argnames=("num", "pos_fraction", "pos_iou",
                                        "neg_iou", "min_pos_iou"))(
          jnp.asarray(anc), jnp.asarray(gts), jnp.asarray(gv),
          jax.random.key(0), num=32, pos_fraction=0.5, pos_iou=0.7,
          neg_iou=0.3, min_pos_iou=0.3)
  pos, neg, deltas = map(np.asarray, (pos, neg, deltas))
  iou = np.array([[_iou(g, a) for a in anc] for g in gts[:2]])
  max_iou = iou.max(0)
  # Every sampled positive is >= 0.7 or a GT's (tied) best anchor >= 0.3.
  best = (iou == iou.max(1, keepdims=True)) & (iou.max(1, keepdims=True)
                                               >= 0.3)
  assert np.all((max_iou[pos] >= 0.7) | best.any(0)[pos])
  assert np.all(max_iou[neg] < 0.3) and not np.any(pos & neg)
  assert pos.sum() <= 16 and pos.sum() + neg.sum() == 32
  for i in np.flatnonzero(pos):
    g = iou[:, i].argmax() if not best[:, i].any() else (
        np.flatnonzero(best[:, i])[-1])
    a, t = anc[i], gts[g]
    aw, ah = a[2] - a[0], a[3] - a[1]
    want = [((t[0] + t[2]) - (a[0] + a[2])) / 2 / aw,
            ((t[1] + t[3]) - (a[1] + a[3])) / 2 / ah,
            np.log((t[2] - t[0]) / aw), np.log((t[3] - t[1]) / ah)]
    np.testing.assert_allclose(deltas[i], want, rtol=1e-5, atol=1e-5)
  # Losses: BCE summed over sampled / #sampled; L1 over positives / #sampled.
  logits = rs.normal(size=(1, len(anc))).astype(np.float32)
  reg = rs.normal(size=(1, len(anc), 4)).astype(np.float32)
  lc, lb = rpn.rpn_losses(jnp.asarray(logits), jnp.asarray(reg),
                          jnp.asarray(pos[None]), jnp.asarray(neg[None]),
                          jnp.asarray(deltas[None]))
  p = 1 / (1 + np.exp(-logits[0]))
  bce = -(pos * np.log(p) + (~pos) * np.log(1 - p))
  n = pos.sum() + neg.sum()
  np.testing.assert_allclose(float(lc), bce[pos | neg].sum() / n, rtol=1e-4)
  np.testing.assert_allclose(
      float(lb), np.abs(reg[0] - deltas)[pos].sum() / n, rtol=1e-4)


def test_rcnn_sample_adds_gt_and_respects_padding():
  rs = np.random.RandomState(2)
  xy = rs.uniform(0, 50, (40, 2))
  props = np.concatenate([xy, xy + rs.uniform(5, 30, (40, 2))], -1)
  pv = np.arange(40) < 30
  gts = np.array([[10, 10, 30, 40], [50, 5, 70, 25], [0, 0, 5, 5]], np.float32)
  gv = np.array([True, True, False])
  gc = np.array([4, 1, 6], np.int32)
  s = jax.jit(roi_heads.rcnn_sample, static_argnames=(
      "num", "pos_fraction", "pos_iou_thr", "neg_iou_thr", "min_pos_iou",
      "num_classes"))(
          jnp.asarray(props, jnp.float32), jnp.asarray(pv), jnp.asarray(gts),
          jnp.asarray(gv), jnp.asarray(gc), jax.random.key(0), num=16,
          pos_fraction=0.25, pos_iou_thr=0.5, neg_iou_thr=0.5,
          min_pos_iou=0.5, num_classes=7)
  s = {k: np.asarray(v) for k, v in s.items()}
  cand = np.concatenate([gts, props])
  cand_ok = np.concatenate([gv, pv])
  # Only valid candidates; no invalid GT row; positives first, <= 4.
  rows = [np.flatnonzero(np.all(np.isclose(cand, r), 1) & cand_ok)
          for r in s["rois"][s["valid"]]]
  assert all(len(r) >= 1 for r in rows)
  npos = s["pos"].sum()
  assert 1 <= npos <= 4 and np.all(s["pos"][:npos])
  assert s["valid"].sum() == 16
  for r in range(16):
    if not s["valid"][r]:
      continue
    ious = [_iou(s["rois"][r], g) for g in gts[:2]]
    if s["pos"][r]:
      g = s["gt_index"][r]
      assert ious[g] >= 0.5 and s["labels"][r] == gc[g]
    else:
      assert max(ious) < 0.5 and s["labels"][r] == 7
