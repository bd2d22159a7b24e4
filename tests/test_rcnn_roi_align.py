"""RoIAlign vs a numpy port of mmcv's aligned RoIAlign kernel."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.models.rcnn import roi_align


def _bilinear(f, y, x):
  """mmcv ``bilinear_interpolate`` (CPU kernel), f: [H, W, C]."""
  h, w = f.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(f.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  yl, xl = int(y), int(x)
  if yl >= h - 1:
    yh = yl = h - 1
    y = float(yl)
  else:
    yh = yl + 1
  if xl >= w - 1:
    xh = xl = w - 1
    x = float(xl)
  else:
    xh = xl + 1
  ly, lx = y - yl, x - xl
  hy, hx = 1 - ly, 1 - lx
  return (hy * hx * f[yl, xl] + hy * lx * f[yl, xh] + ly * hx * f[yh, xl]
          + ly * lx * f[yh, xh])


def np_roi_align(f, box, scale, out, sampling_ratio):
  """mmcv roi_align_forward, aligned=True, avg pooling; f: [H, W, C]."""
  x1, y1 = box[0] * scale - 0.5, box[1] * scale - 0.5
  rw, rh = (box[2] - box[0]) * scale, (box[3] - box[1]) * scale
  bh, bw = rh / out, rw / out
  gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out)
  gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out)
  count = max(gh * gw, 1)
  res = np.zeros((out, out, f.shape[-1]))
  for ph in range(out):
    for pw in range(out):
      acc = np.zeros(f.shape[-1])
      for iy in range(gh):
        y = y1 + ph * bh + (iy + 0.5) * bh / gh
        for ix in range(gw):
          x = x1 + pw * bw + (ix + 0.5) * bw / gw
          acc += _bilinear(f, y, x)
      res[ph, pw] = acc / count
  return res


def _np_level(box):
  s = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
  return int(min(max(math.floor(math.log2(s / 56 + 1e-6)), 0), 3))


def _levels(rs, sizes, c):
  return [rs.normal(size=(h, w, c)).astype(np.float32) for h, w in sizes]


def test_multilevel_roi_align_matches_mmcv_fixed_ratio():
  rs = np.random.RandomState(0)
  img = (128, 160)
  sizes = [(img[0] // s, img[1] // s) for s in (4, 8, 16, 32)]
  feats = _levels(rs, sizes, 3)
  boxes = np.array([[3.2, 5.1, 30.7, 25.0],       # level 0
                    [10, 12, 110.5, 95.3],        # level 1
                    [0, 0, 160, 128],             # level 2
                    [-8, -6, 20, 14],             # crosses the border
                    [150.3, 120.2, 170.0, 140.0],  # partly outside
                    [40, 40, 40.5, 41],           # tiny
                    [0, 0, 600, 500]], np.float32)  # level 3 (clipped lvl)
  # Fixed ratios 1 and 2, and the adaptive rule with enough slots (exact).
  for sr, slots in ((1, 1), (2, 2), (0, 16)):
    got = np.asarray(jax.jit(
        roi_align.multilevel_roi_align, static_argnums=(2, 3, 4, 5, 6))(
            [jnp.asarray(f) for f in feats], jnp.asarray(boxes), 7,
            (4, 8, 16, 32), sr, 56, slots))
    for r, b in enumerate(boxes):
      lvl = _np_level(b)
      want = np_roi_align(feats[lvl], b, 1.0 / (4 * 2 ** lvl), 7, sr)
      np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-5,
                                 err_msg=f"roi {r} sr {sr}")
  np.testing.assert_array_equal(
      np.asarray(roi_align.map_roi_levels(jnp.asarray(boxes))),
      [_np_level(b) for b in boxes])


def test_separable_adaptive_matches_mmcv_sampling_ratio_0():
  rs = np.random.RandomState(1)
  h, w = 40, 56
  imgs = (rs.uniform(size=(5, h, w)) > 0.5).astype(np.float32)
  boxes = np.array([[0, 0, 56, 40], [3.3, 4.7, 20.1, 33.9], [10, 10, 11, 30],
                    [20, 5, 20, 9], [50.5, 30.2, 56, 40]], np.float32)
  got = np.asarray(roi_align.separable_roi_align(jnp.asarray(imgs),
                                                 jnp.asarray(boxes), 6))
  for r in range(5):
    want = np_roi_align(imgs[r][..., None], boxes[r], 1.0, 6, 0)[..., 0]
    np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-6)


def test_capped_adaptive_vs_exact_adaptive_gap():
  """Quantifies the static choice (adaptive count capped at 2 slots/axis)
  against mmcv's unbounded adaptive sampling (``sampling_ratio=0``).

  Feature: bilinearly upsampled noise (correlation ~2 cells, rougher than
  typical FPN maps). 7×7 RoIAlign of near-square RoIs of 20..250 px: mean
  |diff| ≈ 3 % of the feature std with cap 2 (≈ 18 % with 1 fixed sample);
  14×14 mask features ≈ 0.4 % (only the few RoIs whose long side needs 3
  samples differ).
  """
  rs = np.random.RandomState(2)
  img = (256, 256)
  feats = []
  for s in (4, 8, 16, 32):
    h, w = img[0] // s, img[1] // s
    coarse = rs.normal(size=(h // 2 + 2, w // 2 + 2, 2))
    fine = np.asarray(jax.image.resize(coarse, (h, w, 2), "bilinear"))
    feats.append(fine.astype(np.float32))
  n = 16
  xy = rs.uniform(0, 120, (n, 2))
  wh = np.exp(rs.uniform(np.log(20), np.log(250), (n, 1)))
  wh = wh * np.exp(rs.uniform(-0.3, 0.3, (n, 2)))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  jf = [jnp.asarray(f) for f in feats]
  rel = {}
  for name, out, sr, slots in (("cap2", 7, 0, 2), ("sr1", 7, 1, 1),
                               ("mask14", 14, 0, 2)):
    got = np.asarray(roi_align.multilevel_roi_align(
        jf, jnp.asarray(boxes), out, (4, 8, 16, 32), sr, 56, slots))
    d = []
    for r, b in enumerate(boxes):
      lvl = _np_level(b)
      want = np_roi_align(feats[lvl], b, 1.0 / (4 * 2 ** lvl), out, 0)
      d.append(np.abs(got[r] - want).mean() / feats[lvl].std())
    rel[name] = float(np.mean(d))
  print("mean |diff|/std vs adaptive:", rel)
  assert rel["mask14"] < 0.01
  assert rel["cap2"] < 0.06
  assert rel["cap2"] < 0.5 * rel["sr1"]


def test_exact_mode_matches_mmcv_adaptive_on_large_and_elongated_rois():
  """The default exact form vs the numpy loop with mmcv's unbounded adaptive
  count, on RoIs that need up to 10 samples per bin along one axis: full-width
  strips (level 0 by area), the whole image, the largest RoIs each level
  allows (area just below its limit, as elongated as the image permits),
  border-crossing, tiny and empty RoIs."""
  rs = np.random.RandomState(3)
  img = (64, 256)
  strides = (4, 8, 16, 32)
  sizes = [(img[0] // s, img[1] // s) for s in strides]
  feats = _levels(rs, sizes, 3)
  boxes = [[0, 30, 256, 33], [0, 0, 256, 64], [3.3, 7.7, 250.1, 55.5],
           [-8, -6, 20, 14], [150.3, 40.2, 270.0, 70.0], [40, 40, 40.5, 41],
           [20, 20, 20, 30], [100, 0, 103, 64]]
  for lvl in range(3):
    limit = 56.0 * 2 ** (lvl + 1) * 0.999  # sqrt(area) just below the limit
    for w in (256.0, limit, limit ** 2 / 64.0):
      h = limit ** 2 / w
      x0, y0 = rs.uniform(0, 256 - w + 1e-3), rs.uniform(0, 64 - h + 1e-3)
      boxes.append([x0, y0, x0 + w, y0 + h])
  xy = rs.uniform(-10, 200, (12, 2))
  wh = np.exp(rs.uniform(np.log(2), np.log(250), (12, 2)))
  boxes += np.concatenate([xy, xy + wh], -1).tolist()
  boxes = np.asarray(boxes, np.float32)
  jf = [jnp.asarray(f) for f in feats]
  fn = jax.jit(roi_align.multilevel_roi_align, static_argnums=(2, 3, 4, 5, 6))
  for out in (7, 14):
    got = np.asarray(fn(jf, jnp.asarray(boxes), out, strides, 0, 56, 0))
    counts = []
    for r, b in enumerate(boxes):
      lvl = _np_level(b)
      scale = 1.0 / strides[lvl]
      counts.append(max(math.ceil((b[2] - b[0]) * scale / out),
                        math.ceil((b[3] - b[1]) * scale / out)))
      want = np_roi_align(feats[lvl], b, scale, out, 0)
      np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-5,
                                 err_msg=f"roi {r} {b} out {out}")
    if out == 7:
      assert max(counts) >= 10 and sum(c > 2 for c in counts) >= 8


def _touched(lvl_size, box, scale):
  """Rows × cols of the cells whose value moves mmcv's output, from the
  numpy loop on a one-hot feature (one channel per cell)."""
  h, w = lvl_size
  f = np.eye(h * w).reshape(h, w, h * w)
  hit = np.flatnonzero(np.abs(np_roi_align(f, box, scale, 7, 0)).sum((0, 1)))
  if not len(hit):
    return 0
  rows, cols = hit // w, hit % w
  return (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_window_budget_bounds_the_footprint():
  """The static budget vs the footprints the numpy loop gives for RoIs at
  each level's area limit, as elongated as the map allows; and the budgets
  of the configured sizes."""
  img = (128, 320)  # level 0: 32×80 cells, more than a RoI's area limit
  strides = (4, 8, 16, 32)
  sizes = [(-(-img[0] // s), -(-img[1] // s)) for s in strides]
  budget = roi_align.window_budget(sizes, strides)
  assert budget < sizes[0][0] * sizes[0][1]
  rs = np.random.RandomState(4)
  worst = 0
  for lvl in range(4):
    limit = 56.0 * 2 ** (lvl + 1) * 0.9999
    for w in np.linspace(1.0, img[1], 16):
      h = min(limit ** 2 / w, img[0])
      x0 = rs.uniform(0, img[1] - w + 1e-3)
      y0 = rs.uniform(0, img[0] - h + 1e-3)
      b = np.array([x0, y0, x0 + w, y0 + h], np.float32)
      lv = _np_level(b)
      worst = max(worst, _touched(sizes[lv], b, 1.0 / strides[lv]))
  assert 0 < worst <= budget
  assert budget <= 1.3 * worst  # and not wastefully loose
  assert roi_align.window_budget([(100, 100), (50, 50), (25, 25), (13, 13)],
                                 strides) == 1100
  assert roi_align.window_budget([(100, 512), (50, 256), (25, 128), (13, 64)],
                                 strides) == 2048
