"""Mask targets with ignore (and the reference bug), mask/box losses, and
mask pasting vs mmdet's ``_do_paste_mask`` (torch ``grid_sample``)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models.rcnn import roi_heads


def _hand_mask():
  """16×16 mask; RoI = whole mask, 4×4 output → each cell is a 4×4 block and
  the adaptive RoIAlign samples exactly the 16 pixel centres of its block."""
  m = np.zeros((16, 16), np.uint8)
  m[0:4, 0:4] = 1                      # cell (0,0): object
  m[0:4, 4:8] = 255                    # cell (0,1): all ignore
  m[0:4, 8:10] = 1                     # cell (0,2): half object ...
  m[0:4, 10:12] = 255                  # ... half ignore
  m[0, 12] = 255                       # cell (0,3): one ignore pixel
  m[4:8, 0:3] = 1                      # cell (1,0): 12/16 object
  m[4, 3] = 255                        # ... plus one ignore pixel
  return m


def test_mask_targets_ignore_and_reference_bug():
  masks = jnp.asarray(_hand_mask()[None])
  rois = jnp.asarray([[0.0, 0.0, 16.0, 16.0]])
  gi = jnp.asarray([0])
  want_t = np.zeros((4, 4))
  want_t[0, 0] = want_t[0, 2] = want_t[1, 0] = 1
  # Default (reference intent): only the all-ignore cell (0, 1) is ignored.
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4)
  want_w = np.ones((4, 4))
  want_w[0, 1] = 0
  np.testing.assert_array_equal(np.asarray(t)[0], want_t)
  np.testing.assert_array_equal(np.asarray(w)[0], want_w)
  # Threshold 0: every cell with an ignore pixel is ignored.
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4,
                                ignore_rule="threshold")
  want_w[0, 2] = want_w[0, 3] = want_w[1, 0] = 0
  np.testing.assert_array_equal(np.asarray(t)[0], want_t)
  np.testing.assert_array_equal(np.asarray(w)[0], want_w)
  # Reference (boolean target array): ignore fraction == 1 → foreground,
  # nothing ignored.
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4, reference_bug=True)
  want_t[0, 1] = 1
  np.testing.assert_array_equal(np.asarray(t)[0], want_t)
  np.testing.assert_array_equal(np.asarray(w)[0], np.ones((4, 4)))
  # A looser threshold: ignore only cells that are at least half ignore.
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4,
                                ignore_rule="threshold", ignore_frac=0.49)
  want_zero = np.zeros((4, 4), bool)
  want_zero[0, 1] = want_zero[0, 2] = True
  np.testing.assert_array_equal(np.asarray(w)[0] == 0, want_zero)
  with pytest.raises(ValueError, match="ignore rule"):
    roi_heads.mask_targets(masks, rois, gi, size=4, ignore_rule="any")


def _np_roi_align_1ch(img, box, out):
  """mmcv roi_align_forward (aligned, scale 1, sampling_ratio 0, avg) of one
  [H, W] map: a direct loop over bins and samples."""
  h, w = img.shape
  x0, y0 = box[0] - 0.5, box[1] - 0.5
  rw, rh = box[2] - box[0], box[3] - box[1]
  bw, bh = rw / out, rh / out
  gh, gw = math.ceil(rh / out), math.ceil(rw / out)
  res = np.zeros((out, out))

  def bilinear(y, x):
    if y < -1.0 or y > h or x < -1.0 or x > w:
      return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    yh, xh = yl + 1, xl + 1
    if yl >= h - 1:
      yh = yl = h - 1
      y = float(yl)
    if xl >= w - 1:
      xh = xl = w - 1
      x = float(xl)
    ly, lx = y - yl, x - xl
    return ((1 - ly) * (1 - lx) * img[yl, xl] + (1 - ly) * lx * img[yl, xh]
            + ly * (1 - lx) * img[yh, xl] + ly * lx * img[yh, xh])

  for py in range(out):
    for px in range(out):
      acc = 0.0
      for iy in range(gh):
        y = y0 + py * bh + (iy + 0.5) * bh / gh
        for ix in range(gw):
          acc += bilinear(y, x0 + px * bw + (ix + 0.5) * bw / gw)
      res[py, px] = acc / max(gh * gw, 1)
  return res


def test_mask_target_rules_vs_numpy_on_partial_ignore():
  """Random 0/1/255 masks where ignore covers parts of the objects; all three
  rules vs RoIAlign of the ==1 and ==255 maps in a numpy loop."""
  rs = np.random.RandomState(3)
  h, w, size = 24, 30, 7
  masks = np.zeros((3, h, w), np.uint8)
  masks[0, 3:20, 4:25] = 1
  masks[1, 6:22, 2:14] = 1
  masks[2, 0:10, 10:30] = 1
  unc = rs.uniform(size=(h, w)) < 0.25          # scattered uncertain pixels
  unc[12:20, 15:24] = True                      # and one solid block
  masks[:, unc] = 255                            # every mask carries them
  rois = np.array([[2.0, 1.5, 27.3, 22.0], [0.0, 4.2, 16.8, 24.0],
                   [9.5, 0.0, 30.0, 11.1], [14.0, 11.0, 25.0, 21.0],
                   [3.3, 2.2, 9.9, 8.8]], np.float32)
  gi = np.array([0, 1, 2, 0, 1])
  obj = np.stack([_np_roi_align_1ch((masks[g] == 1).astype(float), r, size)
                  for r, g in zip(rois, gi)])
  ign = np.stack([_np_roi_align_1ch((masks[g] == 255).astype(float), r, size)
                  for r, g in zip(rois, gi)])
  full = ign >= 1 - 1e-6  # "== 1" up to float rounding of the sample points
  assert full.any() and ((ign > 0) & ~full).any()  # both kinds of cells occur
  cases = (
      (dict(), obj >= 0.5, ~full),
      (dict(ignore_rule="threshold"), obj >= 0.5, ign <= 1e-6),
      (dict(ignore_rule="threshold", ignore_frac=0.3), obj >= 0.5,
       ign <= 0.3 + 1e-6),
      (dict(reference_bug=True), (obj >= 0.5) | full, np.ones_like(full)),
  )
  for kwargs, want_t, want_w in cases:
    t, wt = roi_heads.mask_targets(jnp.asarray(masks), jnp.asarray(rois),
                                   jnp.asarray(gi), size=size, **kwargs)
    np.testing.assert_array_equal(np.asarray(t), want_t.astype(np.float32),
                                  err_msg=str(kwargs))
    np.testing.assert_array_equal(np.asarray(wt), want_w.astype(np.float32),
                                  err_msg=str(kwargs))


def test_mask_targets_clip_rois_and_pick_gt():
  m = np.zeros((2, 8, 8), np.uint8)
  m[1, :, 4:] = 1
  # RoI partly outside the image is clipped to [0, 8] first (mmdet).
  t, w = roi_heads.mask_targets(jnp.asarray(m), jnp.asarray([[-8., 0, 8, 8]]),
                                jnp.asarray([1]), size=2)
  np.testing.assert_array_equal(np.asarray(t)[0], [[0, 1], [0, 1]])
  np.testing.assert_array_equal(np.asarray(w)[0], np.ones((2, 2)))


def _np_bce(z, t):
  return np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))


def test_mask_loss_normalisation():
  rs = np.random.RandomState(0)
  logits = rs.normal(size=(2, 3, 4, 4, 5)).astype(np.float32)
  labels = np.array([[1, 4, 0], [2, 2, 3]])
  targets = (rs.uniform(size=(2, 3, 4, 4)) > 0.5).astype(np.float32)
  weights = (rs.uniform(size=(2, 3, 4, 4)) > 0.2).astype(np.float32)
  roi_w = np.array([[1, 1, 0], [1, 0, 0]], bool)
  num, cells, den_ni = 0.0, 0, 0.0
  for b in range(2):
    for r in range(3):
      if roi_w[b, r]:
        z = logits[b, r, :, :, labels[b, r]]
        num += np.sum(_np_bce(z, targets[b, r]) * weights[b, r])
        cells += 16
        den_ni += weights[b, r].sum()
  for avg_ni, den in ((False, cells), (True, den_ni)):
    got = roi_heads.mask_loss(jnp.asarray(logits), jnp.asarray(labels),
                              jnp.asarray(targets), jnp.asarray(weights),
                              jnp.asarray(roi_w), avg_ni)
    np.testing.assert_allclose(float(got), num / den, rtol=1e-5)
  zero = roi_heads.mask_loss(jnp.asarray(logits), jnp.asarray(labels),
                             jnp.asarray(targets), jnp.asarray(weights),
                             jnp.zeros((2, 3), bool))
  assert float(zero) == 0.0


def test_bbox_losses_vs_numpy():
  rs = np.random.RandomState(1)
  cls = rs.normal(size=(2, 5, 4)).astype(np.float32)      # 3 classes + bg
  reg = rs.normal(size=(2, 5, 3, 4)).astype(np.float32)
  labels = np.array([[0, 2, 3, 3, 1], [3, 3, 1, 3, 3]])
  deltas = rs.normal(size=(2, 5, 4)).astype(np.float32)
  w = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
  pos = labels < 3
  ce = -np.log(np.exp(cls) / np.exp(cls).sum(-1, keepdims=True))
  ce = np.take_along_axis(ce, labels[..., None], -1)[..., 0]
  den = w.sum()
  l1 = 0.0
  for b in range(2):
    for r in range(5):
      if w[b, r] and pos[b, r]:
        l1 += np.abs(reg[b, r, labels[b, r]] - deltas[b, r]).sum()
  lc, lb = roi_heads.bbox_losses(*map(jnp.asarray, (cls, reg, labels, deltas,
                                                    w, pos)))
  np.testing.assert_allclose(float(lc), (ce * w).sum() / den, rtol=1e-5)
  np.testing.assert_allclose(float(lb), l1 / den, rtol=1e-5)


def test_paste_masks_matches_mmdet_grid_sample():
  torch = pytest.importorskip("torch")
  rs = np.random.RandomState(2)
  h, w, s = 40, 72, 28
  probs = rs.uniform(size=(4, s, s)).astype(np.float32)
  boxes = np.array([[5.3, 4.1, 30.7, 33.2], [0, 0, 72, 40],
                    [60.2, 30.5, 80, 50], [10, 10, 13.5, 12]], np.float32)
  got = np.asarray(roi_heads.paste_masks(jnp.asarray(probs),
                                         jnp.asarray(boxes), (h, w), 0.5,
                                         chunk=3))
  # mmdet 2.x _do_paste_mask (skip_empty=False), written with torch.
  m = torch.from_numpy(probs)[:, None]
  b = torch.from_numpy(boxes)
  x0, y0, x1, y1 = torch.split(b, 1, dim=1)
  img_y = torch.arange(0, h, dtype=torch.float32) + 0.5
  img_x = torch.arange(0, w, dtype=torch.float32) + 0.5
  img_y = (img_y - y0) / (y1 - y0) * 2 - 1
  img_x = (img_x - x0) / (x1 - x0) * 2 - 1
  gx = img_x[:, None, :].expand(4, h, w)
  gy = img_y[:, :, None].expand(4, h, w)
  grid = torch.stack([gx, gy], dim=3)
  soft = torch.nn.functional.grid_sample(m, grid, align_corners=False)[:, 0]
  want = (soft >= 0.5).numpy()
  # Values within 1e-5 of the threshold may flip by float rounding.
  close = np.abs(soft.numpy() - 0.5) < 1e-5
  np.testing.assert_array_equal(got[~close], want[~close])
  assert got.shape == (4, h, w) and got.dtype == bool
