"""AmodalSynthDrive reader on a hand-built fixture in ASD's published format.

Format (robot-learning-freiburg/amodal-panoptic README "Dataset Format" and
eval.py; APSNet data_struct.py; PAPS amodalsynthdrive.py):
``<split>/images/<camera>/<seq>/<f>_rgb.jpg``, ``<split>/amodal_panoptic_seg/
<camera>/<seq>/<f>_ampano.png`` (uint16: class id, or id*1000 + instance) and
``<f>_ampano.json`` ({str(instance id): {occluded, amodal_mask (RLE), ...}}).
Expected arrays are derived here from the drawing rectangles and from the
class *names* of ASD's label table and the reference's class list.
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from configs.asd2b import source_b5
from unlock_jax.data import pipeline
from unlock_jax.data.layouts import amodalsynthdrive as asd
from unlock_jax.data.layouts import common

H, W = 20, 32
# ASD ids by name (amodal_panoptic_eval/labels/asd_labels.py).
ASD_ID = dict(unlabeled=0, road=7, sidewalk=8, parking=9, building=11, wall=12, fence=13,
              polegroup=17, pole=18, vegetation=21, terrain=22, sky=23, person=24,
              rider=25, car=26, truck=27, bus=28, caravan=29, trailer=30, train=31,
              motor=32, bike=33)
# The reference's AmodalSynthDrive.CLASSES (yihong-97/UNLOCK mmseg/datasets/amodalsynthdrive.py).
UNLOCK_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                  "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                  "truck", "bus", "motor", "bike")


def rect(r0, r1, c0, c1):
  m = np.zeros((H, W), bool)
  m[r0:r1 + 1, c0:c1 + 1] = True
  return m


def rle(mask):
  r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def scene():
  """ASD id raster, JSON, and the masks it was drawn from."""
  ids = np.full((H, W), ASD_ID["sky"], np.uint16)
  ids[6:14, :16] = ASD_ID["building"]
  ids[6:14, 16:] = ASD_ID["vegetation"]
  ids[14:, :] = ASD_ID["road"]
  ids[14:, 28:] = 34  # road line: road by ASD's trainId table
  ids[14:, :4] = ASD_ID["parking"]  # ignored
  ids[2:5, 20:26] = ASD_ID["caravan"] * 1000 + 1  # ignored class with instances
  ids[16:18, 20:24] = ASD_ID["rider"]  # rider without instance id: a crowd region
  masks = dict(person=rect(8, 15, 4, 7), car=rect(10, 17, 6, 13), truck_vis=rect(6, 7, 20, 27),
               truck_amodal=rect(4, 7, 20, 27), bike=rect(15, 19, 24, 25),
               motor=rect(14, 18, 17, 17))
  ids[masks["person"]] = 24001
  ids[masks["car"]] = 26001  # occludes the person
  ids[masks["truck_vis"]] = 27001
  ids[masks["bike"]] = 33001
  ids[masks["motor"]] = 32001  # 1 px wide: no instance, still semantic
  info = {
      "24001": {"occluded": True, "amodal_mask": rle(masks["person"]),
                "occlusion_mask": rle(masks["person"] & masks["car"])},
      # Not occluded: the visible mask is its amodal mask, whatever amodal_mask holds.
      "26001": {"occluded": False, "amodal_mask": rle(rect(0, 19, 0, 31)),
                "occlusion_mask": []},
      "27001": {"amodal_mask": rle(masks["truck_amodal"])},  # no "occluded" field
      "32001": {"occluded": False},
      "33001": {"occluded": False},
  }
  return ids, info, masks


def write_example(root, camera, seq, frame, ids, info, rgb):
  img_dir = os.path.join(root, "train", "images", camera, seq)
  gt_dir = os.path.join(root, "train", "amodal_panoptic_seg", camera, seq)
  os.makedirs(img_dir, exist_ok=True)
  os.makedirs(gt_dir, exist_ok=True)
  Image.fromarray(rgb).save(os.path.join(img_dir, frame + "_rgb.jpg"), quality=95)
  Image.fromarray(ids.astype(np.uint16)).save(os.path.join(gt_dir, frame + "_ampano.png"))
  with open(os.path.join(gt_dir, frame + "_ampano.json"), "w") as f:
    json.dump(info, f)


@pytest.fixture
def root(tmp_path):
  ids, info, _ = scene()
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  write_example(str(tmp_path), "front", "seq_b", "000007", ids, info, rgb)
  flat = np.full((H, W), ASD_ID["road"], np.uint16)
  write_example(str(tmp_path), "back", "seq_a", "000001", flat, {}, rgb)
  return str(tmp_path)


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
