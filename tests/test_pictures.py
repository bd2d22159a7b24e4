"""The evaluation picture: shape, dtype, panels that change with the prediction, and an
atomic PNG write."""
import os

import numpy as np
from PIL import Image

from unlock_jax.evaluation import pictures
from unlock_jax.evaluation import report
from unlock_jax.evaluation import synthetic

H, W = 64, 256
ROWS = 8


def _render(gt, pred, metrics, scale=1.0):
  fused = report.evaluate_image(gt, pred, metrics)
  image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
  return pictures.render_panels(image, gt, pred["sem"], fused["panoptic"],
                                fused["amodal_panoptic"], fused["instance_map"],
                                scale=scale, title="img0")


def _panel(array, i):
  step = pictures.LABEL_HEIGHT + H
  return array[i * step + pictures.LABEL_HEIGHT:(i + 1) * step]


def test_panels_shape_dtype_and_differences():
  rng = np.random.default_rng(0)
  gt = synthetic.make_gt(rng, h=H, w=W, n_things=6)
  pred = synthetic.make_prediction(rng, gt)
  metrics = report.OassMetrics(0.3, 0.3, stuff_area=50)
  out = _render(gt, pred, metrics)
  assert out.dtype == np.uint8
  assert out.shape == (ROWS * (H + pictures.LABEL_HEIGHT), W, 3)
  # A perfect prediction: semantic panels equal, error panel has no red.
  perfect = dict(pred, sem=gt["semantic"].astype(np.int32).clip(0, 17))
  ok = _render(gt, perfect, report.OassMetrics(0.3, 0.3, stuff_area=50))
  keep = gt["semantic"] != 255
  np.testing.assert_array_equal(_panel(ok, 1)[keep], _panel(ok, 2)[keep])
  assert not (_panel(ok, 3) == pictures._ERROR).all(-1).any()
  # The noisy prediction differs from GT exactly where it is wrong.
  wrong = (pred["sem"] != gt["semantic"]) & keep
  assert wrong.any()
  np.testing.assert_array_equal((_panel(out, 3) == pictures._ERROR).all(-1), wrong)
  # Amodal panels change when the amodal detections change.
  none = dict(pred, amodal=dict(pred["amodal"], valid=np.zeros_like(pred["amodal"]["valid"])))
  no_amodal = _render(gt, none, report.OassMetrics(0.3, 0.3, stuff_area=50))
  assert (_panel(no_amodal, 6) != _panel(out, 6)).any()
  np.testing.assert_array_equal(_panel(no_amodal, 7), _panel(out, 7))


def test_occluded_part_is_hatched_and_visible_part_solid():
  bg = np.zeros((20, 20, 3), np.uint8)
  amodal = np.zeros((20, 20), bool)
  amodal[2:18, 2:18] = True
  visible = amodal.copy()
  visible[:, 10:] = False
  out = pictures.colour_amodal(bg, [(13001, amodal, visible)])
  colour = pictures._shade(13001)
  inside_visible = (out[4:16, 4:9] == colour).all(-1)
  inside_hidden = (out[4:16, 11:16] == colour).all(-1)
  assert inside_visible.all()
  assert 0.3 < inside_hidden.mean() < 0.7  # stripes


def test_save_png_is_atomic_and_readable(tmp_path):
  arr = np.random.default_rng(1).integers(0, 255, (10, 30, 3), dtype=np.uint8)
  path = tmp_path / "sub" / "pic.png"
  pictures.save_png(str(path), arr)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)
  assert os.listdir(path.parent) == ["pic.png"]  # no temp file left behind
  pictures.save_png(str(path), arr[:, :, 0])  # overwrite in place
  assert np.asarray(Image.open(path)).shape == (10, 30)


def test_half_scale_for_summaries():
  rng = np.random.default_rng(2)
  gt = synthetic.make_gt(rng, h=H, w=W)
  pred = synthetic.make_prediction(rng, gt)
  out = _render(gt, pred, report.OassMetrics(0.3, 0.3, stuff_area=50), scale=0.5)
  assert out.shape == (ROWS * (H // 2 + pictures.LABEL_HEIGHT), W // 2, 3)
