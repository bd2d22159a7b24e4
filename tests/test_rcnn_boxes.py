"""Anchors, box coder, IoU and mask-derived boxes vs plain-numpy formulas."""
import math

import jax.numpy as jnp
import numpy as np

from unlock_jax.models.rcnn import anchors
from unlock_jax.models.rcnn import boxes as box_ops


def _np_anchors(h, w, stride, scale=8.0, ratios=(0.5, 1.0, 2.0)):
  """mmdet 2.x AnchorGenerator written out element by element."""
  out = []
  for y in range(h):
    for x in range(w):
      for r in ratios:
        hr = math.sqrt(r)
        wr = 1.0 / hr
        aw, ah = stride * wr * scale, stride * hr * scale
        cx, cy = x * stride, y * stride  # center_offset = 0
        out.append([cx - 0.5 * aw, cy - 0.5 * ah, cx + 0.5 * aw, cy + 0.5 * ah])
  return np.asarray(out, np.float32)


def test_anchors_match_mmdet_formula():
  sizes = [(5, 7), (3, 4), (2, 2), (1, 1), (1, 1)]
  got = anchors.multilevel_anchors(sizes)
  for (h, w), stride, a in zip(sizes, anchors.DEFAULT_STRIDES, got):
    np.testing.assert_allclose(a, _np_anchors(h, w, stride), rtol=1e-6,
                               atol=1e-4)
  # Ratio 0.5 (first) is the wide anchor: h/w = 0.5.
  a0 = got[0][0]
  np.testing.assert_allclose((a0[3] - a0[1]) / (a0[2] - a0[0]), 0.5, rtol=1e-6)


def _np_encode(p, g, stds):
  px, py = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  gx, gy = (g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2
  gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  d = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw),
                np.log(gh / ph)], -1)
  return d / np.asarray(stds)


def _np_decode(p, d, stds, max_shape, clip=16 / 1000):
  d = d * np.asarray(stds)
  px, py = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  mr = abs(np.log(clip))
  dw, dh = np.clip(d[:, 2], -mr, mr), np.clip(d[:, 3], -mr, mr)
  gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
  gw, gh = pw * np.exp(dw), ph * np.exp(dh)
  b = np.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], -1)
  h, w = max_shape
  b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
  b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
  return b


def _rand_boxes(rs, n, size=100.0):
  xy = rs.uniform(0, size * 0.7, (n, 2))
  wh = rs.uniform(2, size * 0.3, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_encode_decode_vs_numpy_and_round_trip():
  rs = np.random.RandomState(0)
  p, g = _rand_boxes(rs, 50), _rand_boxes(rs, 50)
  for stds in (box_ops.RPN_STDS, box_ops.RCNN_STDS):
    d = np.asarray(box_ops.encode(jnp.asarray(p), jnp.asarray(g), stds))
    np.testing.assert_allclose(d, _np_encode(p, g, stds), rtol=1e-5,
                               atol=1e-5)
    back = np.asarray(box_ops.decode(jnp.asarray(p), jnp.asarray(d), stds,
                                     (1000, 1000)))
    np.testing.assert_allclose(back, g, rtol=1e-5, atol=1e-3)
  # Large deltas: wh clip and border clip, vs numpy.
  d = rs.normal(0, 3, (50, 4)).astype(np.float32)
  got = np.asarray(box_ops.decode(jnp.asarray(p), jnp.asarray(d),
                                  box_ops.RCNN_STDS, (60, 80)))
  np.testing.assert_allclose(got, _np_decode(p, d, box_ops.RCNN_STDS,
                                             (60, 80)), rtol=1e-5, atol=1e-3)


def test_pairwise_iou_vs_numpy():
  rs = np.random.RandomState(1)
  a, b = _rand_boxes(rs, 7), _rand_boxes(rs, 9)
  b[0] = [5, 5, 5, 9]  # zero area
  want = np.zeros((7, 9))
  for i in range(7):
    for j in range(9):
      iw = max(0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
      ih = max(0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
      inter = iw * ih
      ua = ((a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
            + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter)
      want[i, j] = inter / max(ua, 1e-6)
  got = np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
