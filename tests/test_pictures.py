"""The evaluation picture: shape, dtype, panels that change with the prediction, and an
atomic PNG write."""
import os

import numpy as np
from PIL import Image

from tests.support import synthetic
from unlock_jax.data import labels
from unlock_jax.evaluation import panoptic_fusion
from unlock_jax.evaluation import pictures
from unlock_jax.evaluation import report

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
  assert out.shape[1:] == (W, 3)
  legend = out.shape[0] - ROWS * (H + pictures.LABEL_HEIGHT)  # label strip + key rows
  assert legend >= 2 * pictures.LABEL_HEIGHT and legend % pictures.LABEL_HEIGHT == 0
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
  assert out.shape[1:] == (W // 2, 3)
  assert out.shape[0] > ROWS * (H // 2 + pictures.LABEL_HEIGHT)  # and the legend


def _solid_block(area, colour, side):
  """Whether ``area`` holds a ``side`` x ``side`` square of exactly ``colour``."""
  hit = (area == np.asarray(colour, np.uint8)).all(-1).astype(np.int32)
  c = np.pad(hit.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  sums = c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]
  return bool((sums == side * side).any())


def test_legend_shows_the_palette_colour_of_each_class_in_the_picture():
  gt = {"name": "x", "semantic": np.full((H, W), 255, np.uint8),
        "panoptic": np.zeros((H, W), np.int32), "amodal": []}
  gt["semantic"][:, :100] = 2  # building
  gt["semantic"][:, 100:140] = 13  # car
  pred_sem = np.zeros((H, W), np.int32)  # road
  pred_sem[:, 200:] = 10  # sky
  empty = panoptic_fusion.AmodalPanoptic(np.zeros((H, W), np.int32), np.zeros(0, np.int64),
                                         np.zeros(0, np.int64), [])
  out = pictures.render_panels(None, gt, pred_sem, np.zeros((H, W), np.int32), empty,
                               scale=1.0)
  area = out[ROWS * (H + pictures.LABEL_HEIGHT) + pictures.LABEL_HEIGHT:]
  inner = pictures.SWATCH - 2  # inside the swatch's outline
  shown = [c for c in range(labels.NUM_CLASSES)
           if _solid_block(area, labels.PALETTE[c], inner)]
  assert shown == [0, 2, 10, 13]  # road, building, sky, car: nothing else
  # Each swatch is followed by its name (white text right of it).
  for c in shown:
    hit = (area == labels.PALETTE[c]).all(-1)
    ys, xs = np.nonzero(hit)
    right = area[ys.min():ys.max() + 1, xs.max() + 2:xs.max() + 40]
    assert (right.min(-1) > 200).any(), labels.CLASS_NAMES[c]
  # The legend fits the picture's width, wrapping into more rows when narrow.
  wide = pictures.legend(range(labels.NUM_CLASSES), 1024)
  narrow = pictures.legend(range(labels.NUM_CLASSES), 256)
  assert wide.shape[1] == 1024 and narrow.shape[1] == 256
  assert narrow.shape[0] > wide.shape[0]
  for c in range(labels.NUM_CLASSES):
    assert _solid_block(narrow, labels.PALETTE[c], inner), labels.CLASS_NAMES[c]
