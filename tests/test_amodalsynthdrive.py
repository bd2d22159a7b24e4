"""AmodalSynthDrive reader on a hand-built fixture in ASD's published format.

The fixture (tests/support/releases.py) follows robot-learning-freiburg/
amodal-panoptic (README "Dataset Format", eval.py), APSNet data_struct.py and
PAPS amodalsynthdrive.py. Expected arrays are derived here from the drawing
rectangles and from the class *names* of ASD's label table and the
reference's class list.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs.asd2b import source_b5
from tests.support.releases import ASD_H as H
from tests.support.releases import ASD_ID
from tests.support.releases import ASD_W as W
from tests.support.releases import asd_scene as scene
from tests.support.releases import make_asd_root
from tests.support.releases import rle
from unlock_jax.data import pipeline
from unlock_jax.data.layouts import amodalsynthdrive as asd
from unlock_jax.data.layouts import common

# The reference's AmodalSynthDrive.CLASSES (yihong-97/UNLOCK mmseg/datasets/amodalsynthdrive.py).
UNLOCK_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                  "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                  "truck", "bus", "motor", "bike")


@pytest.fixture
def root(tmp_path):
  return make_asd_root(str(tmp_path))


def expected_maps():
  """Semantic, panoptic and instance-id maps from the raster and the class names."""
  ids, _, m = scene()
  to_train = {ASD_ID[n]: UNLOCK_CLASSES.index(n) for n in UNLOCK_CLASSES if n in ASD_ID}
  to_train[34] = 0
  sem = np.full((H, W), 255, np.uint8)
  for asd_id, ours in to_train.items():
    sem[ids == asd_id] = ours
  for v in (24001, 26001, 27001, 32001, 33001):
    sem[ids == v] = to_train[v // 1000]
  sem[ids == ASD_ID["rider"]] = 255  # crowd
  pan = sem.astype(np.int32)
  pan[ids == ASD_ID["rider"]] = 12
  for v, ours in ((24001, 11001), (26001, 13001), (27001, 14001), (32001, 16001),
                  (33001, 17001)):
    pan[ids == v] = ours
  inst = pan.copy()
  instances = [  # (category, visible, amodal) in our id order; the motor is 1 px wide
      (11, m["person"] & ~m["car"], m["person"]), (13, m["car"], m["car"]),
      (14, m["truck_vis"], m["truck_amodal"]), (17, m["bike"], m["bike"])]
  return sem, pan, inst, instances


def test_reads_the_published_format(root):
  reader = asd.Reader(root, "train", image_size=None)
  assert len(reader) == 2 and reader.image_size == (H, W)
  assert reader.keys == ["back/seq_a/000001", "front/seq_b/000007"]
  ex = reader.load(1)
  path = os.path.join(root, "train", "images", "front", "seq_b", "000007_rgb.jpg")
  np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(path).convert("RGB")))
  sem, pan, inst, instances = expected_maps()
  np.testing.assert_array_equal(ex["semantic"], sem)
  np.testing.assert_array_equal(ex["panoptic"], pan)
  np.testing.assert_array_equal(ex["instance_ids"], inst)
  assert [c["name"] for c in ex["categories"]] == list(UNLOCK_CLASSES)
  assert [a["category_id"] for a in ex["modal"]] == [c for c, _, _ in instances]
  assert [a["category_id"] for a in ex["amodal"]] == [c for c, _, _ in instances]
  for got_m, got_a, (_, vis, amo) in zip(ex["modal"], ex["amodal"], instances):
    np.testing.assert_array_equal(got_m["mask"], vis.astype(np.uint8))
    np.testing.assert_array_equal(got_a["mask"], amo.astype(np.uint8))
  rider = [s for s in ex["segments"] if s["category_id"] == 12]
  assert rider == [dict(id=12, category_id=12, iscrowd=1, area=8, amodal_id=0)]
  assert {s["amodal_id"] for s in ex["segments"] if s["id"] > 1000} == {
      24001, 26001, 27001, 32001, 33001}
  padded = common.to_padded(ex, 6)
  np.testing.assert_array_equal(padded["modal_classes"][:4], [0, 2, 3, 6])
  # The flat example: road everywhere, no instances.
  flat = reader.load(0)
  assert (flat["semantic"] == 0).all() and flat["modal"] == [] and flat["amodal"] == []


def test_resizes_to_the_configured_size(root):
  reader = pipeline.open_reader("amodalsynthdrive", root, "train", (H // 2, W // 2))
  ex = reader.load(1)
  sem, pan, _, _ = expected_maps()
  assert ex["image"].shape == (H // 2, W // 2, 3)
  want_sem = np.asarray(Image.fromarray(sem).resize((W // 2, H // 2), Image.NEAREST))
  want_pan = np.asarray(Image.fromarray(pan).resize((W // 2, H // 2), Image.NEAREST))
  np.testing.assert_array_equal(ex["semantic"], want_sem)
  np.testing.assert_array_equal(ex["panoptic"], want_pan)
  for s in ex["segments"]:
    assert s["area"] == int((want_pan == s["id"]).sum()) > 0


def _edit(root, change):
  gt = os.path.join(root, "train", "amodal_panoptic_seg", "front", "seq_b", "000007")
  ids = np.asarray(Image.open(gt + "_ampano.png")).astype(np.int32)
  with open(gt + "_ampano.json") as f:
    info = json.load(f)
  ids, info = change(ids, info)
  Image.fromarray(ids.astype(np.uint16)).save(gt + "_ampano.png")
  with open(gt + "_ampano.json", "w") as f:
    json.dump(info, f)


def _set(ids, value):
  ids = ids.copy()
  ids[0, 0] = value
  return ids


@pytest.mark.parametrize("change,message", [
    (lambda ids, info: (_set(ids, 40), info), "class id 40"),
    (lambda ids, info: (ids, {k: v for k, v in info.items() if k != "26001"}),
     "no object '26001'"),
    (lambda ids, info: (ids, info | {"24001": {"occluded": True}}), "has no amodal_mask"),
    (lambda ids, info: (ids, info | {"27001": {"amodal_mask": rle(np.ones((4, 4), bool))}}),
     "has size"),
])
def test_bad_files_are_named(root, change, message):
  _edit(root, change)
  reader = asd.Reader(root, "train", image_size=None)
  with pytest.raises(common.DataError, match=message):
    reader.load(1)


def test_missing_image_is_named(root):
  os.remove(os.path.join(root, "train", "images", "back", "seq_a", "000001_rgb.jpg"))
  with pytest.raises(common.DataError, match="000001_rgb.jpg"):
    asd.Reader(root, "train")


def test_asd2b_config_reads_this_layout():
  c = source_b5.get_config()
  assert c.data.source.layout == "amodalsynthdrive" and c.data.target.layout == "blendpass"
  h, w = c.data.source.image_size
  assert c.input.crop_size[0] <= h and c.input.crop_size[1] <= w
