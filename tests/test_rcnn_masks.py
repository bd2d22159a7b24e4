"""Mask targets with ignore (and the reference bug), mask/box losses, and
mask pasting vs mmdet's ``_do_paste_mask`` (torch ``grid_sample``)."""
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
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4)
  t, w = np.asarray(t)[0], np.asarray(w)[0]
  want_t = np.zeros((4, 4))
  want_t[0, 0] = want_t[0, 2] = want_t[1, 0] = 1
  want_w = np.ones((4, 4))
  want_w[0, 1] = want_w[0, 2] = want_w[0, 3] = want_w[1, 0] = 0
  np.testing.assert_array_equal(t, want_t)
  np.testing.assert_array_equal(w, want_w)
  # Reference (boolean target array): ignore fraction == 1 → foreground,
  # nothing ignored.
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4, reference_bug=True)
  want_t[0, 1] = 1
  np.testing.assert_array_equal(np.asarray(t)[0], want_t)
  np.testing.assert_array_equal(np.asarray(w)[0], np.ones((4, 4)))
  # A looser ignore rule: ignore only cells that are at least half ignore.
  t, w = roi_heads.mask_targets(masks, rois, gi, size=4, ignore_frac=0.49)
  want_zero = np.zeros((4, 4), bool)
  want_zero[0, 1] = want_zero[0, 2] = True
  np.testing.assert_array_equal(np.asarray(w)[0] == 0, want_zero)


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
