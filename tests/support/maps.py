"""Synthetic softmax maps and detections, as ``predict`` writes them to the store.

The maps imitate a segmentation head's output: smooth stride-4 logits,
bilinearly upsampled 4x, with sharp-edged class blobs, so most pixels are
confident (median max probability ≈ 0.99) with soft transitions. The store's
size test and benchmarks/opll.py use the same maps.
"""
import numpy as np


def bilinear_up4(x):
  """x [..., h, w] → [..., 4h, 4w], half-pixel centres (align_corners=False)."""
  def axis(n):
    c = np.clip((np.arange(4 * n) + 0.5) / 4 - 0.5, 0, n - 1)
    i0 = np.floor(c).astype(int)
    return i0, np.minimum(i0 + 1, n - 1), (c - i0).astype(np.float32)
  y0, y1, wy = axis(x.shape[-2])
  x0, x1, wx = axis(x.shape[-1])
  a = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
  return a[..., x0] * (1 - wx) + a[..., x1] * wx


def softmax_map(rng, h, w, classes=18):
  """float32 [classes, h, w]: the softmax of bilinearly upsampled smooth stride-4 logits.

  Class regions are sky/building/road bands broken by 40 sharp-edged blobs;
  the winning margin and a per-class perturbation vary smoothly (over 16 px).
  """
  hs, ws = h // 4, w // 4
  yy, xx = np.mgrid[0:hs, 0:ws]
  lab = np.where(yy < hs * 0.3, 10, np.where(yy < hs * 0.6, 2, 0))
  for _ in range(40):
    cy, cx = rng.integers(0, hs), rng.integers(0, ws)
    ry, rx = rng.integers(2, 15), rng.integers(2, 40)
    lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(0, classes)

  def field(*lead):
    g = rng.standard_normal(lead + (hs // 4 + 2, ws // 4 + 2)).astype(np.float32)
    return bilinear_up4(g)[..., :hs, :ws]
  logits = 0.5 * field(classes)
  logits[lab, yy, xx] += 14 * (0.55 + 0.45 * np.tanh(field()))
  up = bilinear_up4(logits)
  up -= up.max(0)
  np.exp(up, out=up)
  up /= up.sum(0)
  return up


def ellipse_dets(rng, h, w, n, empty=()):
  """``n`` detections with elliptical masks (indices in ``empty`` get an empty mask)."""
  yy, xx = np.mgrid[0:h, 0:w]
  masks = np.zeros((n, h, w), bool)
  for j in range(n):
    if j in empty:
      continue
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(1, h / 6), rng.uniform(1, w / 12)
    masks[j] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    masks[j, int(cy), int(cx)] = True  # never empty by accident
  return {"classes": rng.integers(11, 18, n), "scores": rng.random(n).astype(np.float32),
          "boxes": rng.uniform(0, w, (n, 4)).astype(np.float32), "masks": masks}


def no_dets(h, w):
  """A branch without detections."""
  return {"classes": np.zeros((0,), np.int32), "scores": np.zeros((0,), np.float32),
          "boxes": np.zeros((0, 4), np.float32), "masks": np.zeros((0, h, w), bool)}
