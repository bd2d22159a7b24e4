"""KITTI-360-APS converter: a release-format fixture in, our kitti360aps reader out.

The fixture follows the amodal panoptic format of robot-learning-freiburg/
amodal-panoptic (README "Dataset Format", eval.py): ``*_ampano.png`` uint16
(class id, or id*1000 + instance), ``*_ampano.json`` {str(id): {occluded,
amodal_mask RLE, occlusion_mask}}, under ``amodal_panoptic_seg/`` mirrored by
``images/`` (APSNet docs/DATASET.md). Class ids 0..17 in our order with 255
void (the converter's default ``identity`` map). Expected arrays are built
here from the drawing rectangles.
"""
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.support import releases
from tests.support.releases import rle
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import kitti360aps
from unlock_jax.tools import convert_kitti360aps as conv

H, W = 16, 24
SEQ0, SEQ3 = "2013_05_28_drive_0000_sync", "2013_05_28_drive_0003_sync"
rect = functools.partial(releases.rect, (H, W))


def scene():
  ids = np.full((H, W), 10, np.uint16)  # sky
  ids[5:11] = 2  # building
  ids[11:] = 0  # road: value 0
  ids[11:, :3] = 255  # void
  ids[12:14, 18:22] = 13  # a crowd region of cars
  m = dict(ped=rect(4, 12, 2, 5), car=rect(7, 13, 4, 10), car2=rect(1, 3, 14, 17),
           van_vis=rect(9, 10, 12, 15), van_amodal=rect(8, 10, 11, 15),
           bike=rect(12, 15, 16, 16))
  ids[m["ped"]] = 11001
  ids[m["car"]] = 13005  # release instance ids need not start at 1
  ids[m["car2"]] = 13009
  ids[m["van_vis"]] = 16001
  ids[m["bike"]] = 17001  # 1 px wide: semantic only
  info = {"11001": {"occluded": True, "amodal_mask": rle(m["ped"]),
                    "occlusion_mask": rle(m["ped"] & m["car"])},
          "13005": {"occluded": False}, "13009": {"occluded": False},
          "16001": {"amodal_mask": rle(m["van_amodal"])}, "17001": {"occluded": False}}
  return ids, info, m


def write(release, seq, frame, ids, info, rgb, ext):
  return releases.write_frame(release, "train", seq, frame, ids, info, rgb, frame + ext)


@pytest.fixture
def release(tmp_path):
  ids, info, _ = scene()
  rng = np.random.default_rng(1)
  rel = str(tmp_path / "release")
  write(rel, SEQ0, "0000000250", ids, info, rng.integers(0, 256, (H, W, 3), np.uint8), ".png")
  write(rel, SEQ3, "0000000010", np.zeros((H, W), np.uint16), {},
        rng.integers(0, 256, (H, W, 3), np.uint8), ".jpg")
  return rel


def expected():
  ids, _, m = scene()
  sem = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
  sem[ids == 13] = 255  # crowd
  pan = sem.astype(np.int32)
  pan[ids == 13] = 13
  for v, ours in ((11001, 11001), (13005, 13001), (13009, 13002), (16001, 16001),
                  (17001, 17001)):
    pan[ids == v] = ours
  instances = [(11, m["ped"] & ~m["car"], m["ped"]), (13, m["car"], m["car"]),
               (13, m["car2"], m["car2"]), (16, m["van_vis"], m["van_amodal"])]
  return sem, pan, instances


def test_converted_release_reads_back(release, tmp_path):
  out = str(tmp_path / "APS_KITTI_360")
  counts = conv.convert(release, "train", out, conv.load_class_map("identity"))
  assert counts == dict(images=2, segments=9 + 1, amodal=5)
  reader = kitti360aps.Reader(out, "train", image_size=None)
  assert reader.names == [f"{SEQ0}_0000000250", f"{SEQ3}_0000000010"]
  ex = reader.load(0)
  src = os.path.join(release, "train", "images", SEQ0, "0000000250.png")
  np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(src)))
  sem, pan, instances = expected()
  np.testing.assert_array_equal(ex["semantic"], sem)
  np.testing.assert_array_equal(ex["panoptic"], pan)
  # The reader's instance ids: things as they are, stuff/crowd their class, void 255.
  np.testing.assert_array_equal(ex["instance_ids"], pan)
  assert [a["category_id"] for a in ex["modal"]] == [c for c, _, _ in instances]
  for got_m, got_a, (c, vis, amo) in zip(ex["modal"], ex["amodal"], instances):
    assert got_a["category_id"] == c
    np.testing.assert_array_equal(got_m["mask"], vis.astype(np.uint8))
    np.testing.assert_array_equal(got_a["mask"], amo.astype(np.uint8))
  semantic_png = os.path.join(out, "Semantic", "train", f"{SEQ0}_0000000250.png")
  np.testing.assert_array_equal(np.asarray(Image.open(semantic_png)), sem)
  # The JPG frame is decoded once and stored losslessly; all road.
  ex1 = reader.load(1)
  jpg = os.path.join(release, "train", "images", SEQ3, "0000000010.jpg")
  np.testing.assert_array_equal(ex1["image"], np.asarray(Image.open(jpg).convert("RGB")))
  assert (ex1["semantic"] == 0).all() and ex1["modal"] == []


def test_uncompressed_rle_decodes_exactly():
  rng = np.random.default_rng(0)
  for mask in (rng.random((7, 5)) < 0.5, np.ones((3, 4), bool), np.zeros((2, 6), bool)):
    got = common.decode_polygons([conv.uncompressed_rle(mask)], *mask.shape)
    np.testing.assert_array_equal(got, mask.astype(np.uint8))


def test_cityscapes_ids_need_a_class_map(release, tmp_path):
  ids = np.full((H, W), 23, np.uint16)  # Cityscapes-style sky
  ids[8:] = 7  # road
  ids[9:12, 3:9] = 26001  # car
  rgb = np.zeros((H, W, 3), np.uint8)
  rel = str(tmp_path / "cs")
  write(rel, SEQ0, "0000000001", ids, {"26001": {"occluded": False}}, rgb, ".png")
  with pytest.raises(common.DataError, match="0000000001_ampano.png has class id 23"):
    conv.convert(rel, "train", str(tmp_path / "a"), conv.load_class_map("identity"))
  map_path = str(tmp_path / "map.json")
  with open(map_path, "w") as f:
    json.dump({"7": 0, "23": 10, "26": 13}, f)
  out = str(tmp_path / "b")
  conv.convert(rel, "train", out, conv.load_class_map(map_path))
  ex = kitti360aps.Reader(out, "train", image_size=None).load(0)
  want = np.where(ids == 23, 10, np.where(ids == 7, 0, 13))
  np.testing.assert_array_equal(ex["semantic"], want)
  assert len(ex["amodal"]) == 1 and ex["amodal"][0]["category_id"] == 13


def test_cli_reports_bad_input(release, tmp_path):
  os.remove(os.path.join(release, "train", "images", SEQ3, "0000000010.jpg"))
  proc = subprocess.run(
      [sys.executable, "-m", "unlock_jax.tools.convert_kitti360aps", f"--release={release}",
       "--split=train", f"--out={tmp_path / 'o'}"], capture_output=True, text=True,
      check=False, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 1
  assert "0000000010_ampano.png has no image" in proc.stderr
