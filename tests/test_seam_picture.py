"""tools/seam_picture: the before/after picture of an object across the 360° seam.

The committed demo model (assets/demo_source) predicts a tiny synthpass target
val split (50x256) flat and circular. The PNG read back with PIL must be the
title, four rows and the legend, each row W + 1 wide: the un-rolled render of
that row (the evaluator's renderers, drawn here) rolled by W/2 with numpy,
with the magenta marker column inserted where the panorama's first column
lands; the input row is the panorama file decoded by PIL, rolled.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.support import synthpass as synth_testing
from unlock_jax.data import labels
from unlock_jax.evaluation import pictures
from unlock_jax.tools import seam_picture

# pycocotools 2.0.11 decodes through a numpy-1 __array__ call (harmless under numpy 2).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = pictures.LABEL_HEIGHT


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("seam_picture")
  root = synth_testing.make_tiny_dataset(str(tmp), n_source=(1, 1), n_target=(1, 4))
  reader = seam_picture.open_val(root)
  size = reader.image_size
  demo = os.path.join(REPO, "assets", "demo_source")
  flat = seam_picture.Predictor(demo, size, "flat")
  aware = seam_picture.Predictor(demo, size, "circular")
  indices = seam_picture.candidates(reader)
  index, analysis = seam_picture.pick(flat, aware, reader, indices)
  picture, info = seam_picture.seam_picture("circular", index, analysis)
  out = str(tmp / "seam.png")
  pictures.save_png(out, picture, optimize=True)
  return {"root": root, "reader": reader, "indices": indices, "index": index,
          "analysis": analysis, "info": info, "png": np.asarray(Image.open(out).convert("RGB")),
          "flat": flat, "aware": aware}


def _oracle_row(panel):
  """``panel`` rolled by W/2 with numpy, the marker column inserted before column W/2."""
  w = panel.shape[1]
  rolled = np.roll(panel, w // 2, axis=1)
  return np.concatenate([rolled[:, :w // 2], np.full((panel.shape[0], 1, 3), (255, 0, 255),
                                                      np.uint8), rolled[:, w // 2:]], 1)


def test_candidates_are_the_panoramas_with_a_crossing_thing(made):
  reader = made["reader"]
  expect = []
  for i in range(len(reader)):
    pan = np.asarray(reader.load(i)["panoptic"])
    both = set(pan[:, 0].tolist()) & set(pan[:, -1].tolist())
    if any(v >= 1000 and v % 1000 for v in both):
      expect.append(i)
  assert expect and made["indices"] == expect
  assert made["index"] in expect
  objects = made["analysis"]["objects"]
  gt_pan = np.asarray(made["analysis"]["gt"]["panoptic"])
  seg_id = objects[0][2]
  assert (gt_pan[:, 0] == seg_id).any() and (gt_pan[:, -1] == seg_id).any()
  assert made["info"]["segment_id"] == seg_id
  assert made["info"]["area"] == int((gt_pan == seg_id).sum())


def test_rows_are_the_unrolled_renders_rolled_with_the_seam_marker_in_the_middle(made):
  png, analysis = made["png"], made["analysis"]
  h, w = made["reader"].image_size
  gt = analysis["gt"]
  image = np.asarray(Image.open(os.path.join(
      made["root"], "BlendPASS", "leftImg8bit", "val", gt["name"] + ".png")).convert("RGB"))
  panels = [image, pictures.colour_panoptic(gt["panoptic"]),
            pictures.colour_panoptic(analysis["preds"]["flat"]),
            pictures.colour_panoptic(analysis["preds"]["seam"])]
  ids = pictures.class_ids(gt["semantic"], *[p // labels.LABEL_DIVISOR
                                             for p in analysis["preds"].values()])
  legend = pictures.legend_rows(ids, w + 1, "anything").shape[0]
  assert png.shape == (seam_picture.TITLE_HEIGHT + 4 * (L + h) + legend, w + 1, 3)
  top = seam_picture.TITLE_HEIGHT
  for panel in panels:
    np.testing.assert_array_equal(png[top + L:top + L + h], _oracle_row(panel))
    # The marker runs through the caption strip too; the strip's text is not rolled.
    assert (png[top:top + L, w // 2] == (255, 0, 255)).all()
    top += L + h
  assert (png[seam_picture.TITLE_HEIGHT:top, w // 2] == (255, 0, 255)).all()
  assert w // 2 == (w + 1) // 2  # the marker is the middle column of the W + 1 picture
  # Right of the marker: the panorama's first column; left of it: its last.
  row0 = seam_picture.TITLE_HEIGHT + L
  np.testing.assert_array_equal(png[row0:row0 + h, w // 2 + 1], image[:, 0])
  np.testing.assert_array_equal(png[row0:row0 + h, w // 2 - 1], image[:, -1])


def test_pieces_follow_the_split_rule_and_the_captions_say_them(made):
  analysis = made["analysis"]
  gt_pan = np.asarray(analysis["gt"]["panoptic"])
  _, _, seg_id, n_flat, n_seam = analysis["objects"][0]
  for pred, n in ((analysis["preds"]["flat"], n_flat), (analysis["preds"]["seam"], n_seam)):
    inside = gt_pan == seg_id
    expect = 0
    for v in np.unique(pred):
      seg = pred == v
      if v % 1000 and v // 1000 == seg_id // 1000 and (seg & inside).sum() > 0.5 * seg.sum():
        expect += 1
    assert n == expect
  assert made["info"]["pieces"] == {"flat": n_flat, "seam": n_seam}


def test_the_two_models_predict_in_their_modes(made):
  assert made["flat"].seam["mode"] == "flat" and made["aware"].seam["mode"] == "circular"


class _NoCrossing:
  """A one-panorama split whose only thing touches the first column but not the last."""
  root, names = "/nowhere/BlendPASS", ["p"]

  def __len__(self):
    return 1

  def load(self, i):
    pan = np.full((8, 16), 10, np.int32)  # sky
    pan[2:5, 0:4] = 13001  # a car at the left end only
    pan[:, -1] = 13  # a stuff id of the car class at the right end: no instance
    pan[:, 0] = np.where(pan[:, 0] == 10, 13, pan[:, 0])
    return {"panoptic": pan}


def test_no_crossing_object_is_a_clear_error():
  with pytest.raises(ValueError, match=r"no panorama of .*/nowhere/BlendPASS .*across the seam"):
    seam_picture.candidates(_NoCrossing())
  with pytest.raises(ValueError, match=r"panorama 0 \(p\) .* no object across the seam"):
    seam_picture.candidates(_NoCrossing(), 0)
  with pytest.raises(ValueError, match="outside"):
    seam_picture.candidates(_NoCrossing(), 3)


def test_missing_data_and_models_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    seam_picture.open_val(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="missing"):
    seam_picture.model_folder(str(tmp_path / "missing"))
  run = tmp_path / "run"
  (run / "adapt" / "checkpoints").mkdir(parents=True)
  assert seam_picture.model_folder(str(run)) == str(run / "adapt" / "checkpoints")


def test_the_seam_mode_is_the_runs_newest_adapt_record(tmp_path):
  run = tmp_path / "run"
  for stage, name, mode in (("adapt", "20260101T000000Z-p1.json", "wrap"),
                            ("adapt", "20260102T000000Z-p2.json", "circular"),
                            ("predict", "20260103T000000Z-p3.json", "flat")):
    (run / "provenance" / stage).mkdir(parents=True, exist_ok=True)
    (run / "provenance" / stage / name).write_text(
        json.dumps({"config": {"seam": {"mode": mode, "wrap_cols": 64}}}))
  (run / "adapt" / "checkpoints" / "300").mkdir(parents=True)
  for where in (run, run / "adapt" / "checkpoints", run / "adapt" / "checkpoints" / "300"):
    assert seam_picture.recorded_seam(str(where)) == {"mode": "circular", "wrap_cols": 64}
  assert seam_picture.recorded_seam(str(tmp_path / "elsewhere")) is None
