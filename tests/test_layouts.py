"""Tests of the KITTI-360 APS and BlendPASS readers, padding, boxes and every bad-input error."""
import json
import logging
import os
import shutil

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from tests.support.reference import get_bbox_coord
from tests.support.synthpass import make_tiny_dataset
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import synthpass
from unlock_jax.data.layouts import blendpass
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import kitti360aps
from unlock_jax.data.layouts import DataError
from unlock_jax.data.layouts import boxes_from_masks
from unlock_jax.data.layouts import to_padded

SCALE = 0.125
SIZES = synthpass.image_sizes(SCALE)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return make_tiny_dataset(str(tmp_path_factory.mktemp("lay")), scale=SCALE, seed=3)


@pytest.fixture
def copy(root, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(root, dst)
  return dst


def kitti(root, split="train", size=SIZES["source"]):
  return kitti360aps.Reader(os.path.join(root, "KITTI360_APS"), split, image_size=size)


def blend(root, split="val", size=SIZES["target"], **kw):
  return blendpass.Reader(os.path.join(root, "BlendPASS"), split, image_size=size, **kw)


def oracle_gt(pan, segments, amodal_by_id, h, w):
  """Independent numpy transliteration of the reference GT generation (docs/method.md §8.1)."""
  semantic = np.full(pan.shape, 255, np.uint8)
  modal, amodal = [], []
  for s in segments:
    if not s["iscrowd"]:
      semantic[pan == s["id"]] = s["category_id"]
    m = pan == s["id"]
    if m.sum() == 0 or s["iscrowd"] or s["category_id"] not in labels.THING_IDS:
      continue
    am = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        amodal_by_id[s["amodal_id"]]["segmentation"], h, w)))
    if am.sum() == 0:
      continue
    b, ab = get_bbox_coord(m), get_bbox_coord(am)
    if b[0] < b[2] and b[1] < b[3] and ab[0] < ab[2] and ab[1] < ab[3]:
      modal.append((s["id"], m.astype(np.uint8)))
      amodal.append((s["id"], am))
  return semantic, modal, amodal


@pytest.mark.parametrize("which", ["kitti_train", "kitti_val", "blend_val", "blend_hidden"])
def test_reader_matches_reference_gt(root, which):
  if which.startswith("kitti"):
    split = which.split("_")[1]
    r = kitti(root, split)
    base = os.path.join(root, "KITTI360_APS")
    pan_json, am_json = f"Panoptic/{split}.json", f"annotations/{split}.json"
    pan_dir, size = f"Panoptic/{split}", SIZES["source"]
  elif which == "blend_val":
    r = blend(root)
    base = os.path.join(root, "BlendPASS")
    pan_json, am_json = "Panoptic/val_trainId_K2B.json", "annotations/val.json"
    pan_dir, size = "Panoptic/val_trainId_K2B", SIZES["target"]
  else:
    r = blend(root, "train", hidden_gt=True)
    base = os.path.join(root, "BlendPASS", "_synth_gt")
    pan_json, am_json = "Panoptic/train_trainId_K2B.json", "annotations/train.json"
    pan_dir, size = "Panoptic/train_trainId_K2B", SIZES["target"]
  with open(os.path.join(base, pan_json)) as f:
    pj = json.load(f)
  with open(os.path.join(base, am_json)) as f:
    aj = json.load(f)
  by_id = {a["id"]: a for a in aj["annotations"]}
  by_file = {a["file_name"][:-len("_panoptic.png")]: a for a in pj["annotations"]}
  h, w = size
  n_inst = n_cand = n_crowd = 0
  for i in range(len(r)):
    ex = r.load(i)
    a = by_file[ex["name"]]
    pan = labels.rgb2id(np.array(Image.open(os.path.join(base, pan_dir, a["file_name"]))))
    assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
    assert ex["panoptic"].dtype == np.int32 and ex["instance_ids"].dtype == np.int32
    np.testing.assert_array_equal(ex["panoptic"], pan)
    sem, modal, amodal = oracle_gt(pan, a["segments_info"], by_id, h, w)
    np.testing.assert_array_equal(ex["semantic"], sem)
    assert ex["semantic"].dtype == np.uint8
    assert [m["seg_id"] for m in ex["modal"]] == [s for s, _ in modal]
    assert [m["seg_id"] for m in ex["amodal"]] == [s for s, _ in amodal]
    for got, (_, want) in zip(ex["modal"], modal):
      np.testing.assert_array_equal(got["mask"], want)
      assert got["mask"].dtype == np.uint8 and got["category_id"] in labels.THING_IDS
    for got, (sid, want) in zip(ex["amodal"], amodal):
      np.testing.assert_array_equal(got["mask"], want)
      seg = next(s for s in a["segments_info"] if s["id"] == sid)
      assert got["amodal_id"] == seg["amodal_id"] and got["category_id"] == seg["category_id"]
      # Modal pixels lie inside the decoded amodal polygon (up to the tracer's tolerance).
    for mo, am in zip(ex["modal"], ex["amodal"]):
      inside = (mo["mask"] & am["mask"]).sum() / mo["mask"].sum()
      assert inside >= 0.9
    assert ex["categories"] == pj["categories"]
    assert [s["id"] for s in ex["segments"]] == [s["id"] for s in a["segments_info"]]
    n_inst += len(ex["modal"])
    n_cand += sum(1 for s in ex["segments"] if s["category_id"] >= 11 and not s["iscrowd"])
    n_crowd += sum(s["iscrowd"] for s in ex["segments"])
  assert n_inst > 0
  # The filter and crowd rules are exercised: tiny things are crowd or dropped.
  assert n_crowd > 0 and n_cand > n_inst


def test_kitti_instance_ids_derived_from_panoptic(root):
  r = kitti(root, "val")
  for i in range(len(r)):
    ex = r.load(i)
    want = np.full(ex["panoptic"].shape, 255, np.int32)
    for s in ex["segments"]:
      m = ex["panoptic"] == s["id"]
      if s["category_id"] >= 11 and not s["iscrowd"]:
        want[m] = s["id"]
      else:
        want[m] = s["category_id"]
    np.testing.assert_array_equal(ex["instance_ids"], want)


def test_blendpass_instance_png_and_train_split(root):
  r = blend(root)
  ex = r.load(0)
  inst = np.array(Image.open(os.path.join(root, "BlendPASS/Instance/val_K2B",
                                          f"{ex['name']}_instanceTrainIds.png")))
  np.testing.assert_array_equal(ex["instance_ids"], inst.astype(np.int32))
  assert (ex["instance_ids"] >= 1000).any()
  assert r.names == ["1_", "2_", "3_"]
  tr = blend(root, "train")
  assert len(tr) == 4 and all("_" not in n for n in tr.names)
  ex = tr.load(1)
  assert set(ex) == {"name", "image"} and ex["image"].shape == SIZES["target"] + (3,)
  hidden = blend(root, "train", hidden_gt=True)
  assert hidden.names == tr.names
  np.testing.assert_array_equal(hidden.load(1)["image"], ex["image"])


def test_image_size_none_takes_first_image(root):
  r = kitti(root, "val", size=None)
  assert r.image_size == SIZES["source"]
  assert r.load(2)["image"].shape[:2] == SIZES["source"]


def test_to_padded_and_boxes(root):
  ex = blend(root).load(0)
  n_inst = len(ex["modal"])
  assert n_inst >= 2
  p = to_padded(ex, n_inst + 3)
  h, w = SIZES["target"]
  assert p[keys.MODAL_MASKS].shape == (n_inst + 3, h, w) and p[keys.MODAL_MASKS].dtype == np.uint8
  assert p[keys.AMODAL_BOXES].shape == (n_inst + 3, 4) and p[keys.AMODAL_BOXES].dtype == np.float32
  assert p[keys.MODAL_CLASSES].dtype == np.int32 and p[keys.AMODAL_VALID].dtype == bool
  np.testing.assert_array_equal(p[keys.MODAL_VALID], [True] * n_inst + [False] * 3)
  for j in range(n_inst):
    assert p[keys.MODAL_CLASSES][j] == ex["modal"][j]["category_id"] - 11
    assert p[keys.AMODAL_CLASSES][j] == ex["amodal"][j]["category_id"] - 11
    assert list(p[keys.MODAL_BOXES][j]) == get_bbox_coord(ex["modal"][j]["mask"])
    assert list(p[keys.AMODAL_BOXES][j]) == get_bbox_coord(ex["amodal"][j]["mask"])
  assert not p[keys.AMODAL_MASKS][n_inst:].any() and not p[keys.AMODAL_BOXES][n_inst:].any()
  np.testing.assert_array_equal(p[keys.SEMANTIC], ex["semantic"].astype(np.int32))


def test_to_padded_truncation_keeps_largest_and_warns_once(root, caplog, monkeypatch):
  ex = blend(root).load(0)
  areas = [int(a["mask"].sum()) for a in ex["amodal"]]
  k = 2
  want = sorted(np.argsort(-np.array(areas), kind="stable")[:k])
  monkeypatch.setattr(common, "_warned_truncation", False)
  with caplog.at_level(logging.WARNING, logger=common.__name__):
    p = to_padded(ex, k)
    to_padded(ex, k)
  assert sum("max_instances" in r.getMessage() for r in caplog.records) == 1
  for row, j in enumerate(want):
    np.testing.assert_array_equal(p[keys.AMODAL_MASKS][row], ex["amodal"][j]["mask"])
    np.testing.assert_array_equal(p[keys.MODAL_MASKS][row], ex["modal"][j]["mask"])
  assert p[keys.MODAL_VALID].all()


def test_boxes_from_masks_rules():
  m = np.zeros((3, 6, 8), np.uint8)
  m[0, 1:3, 2:5] = 1
  m[0, 5, 7] = 255          # an ignore pixel far away
  m[1, 4, 1] = 1            # a single pixel: x1 == x2
  pos = boxes_from_masks(m, "positive")
  np.testing.assert_array_equal(pos, [[2, 1, 4, 2], [1, 4, 1, 4], [0, 0, 0, 0]])
  nz = boxes_from_masks(m, "nonzero")  # docs/reference_differences.md item 1: 255 inflates the box
  np.testing.assert_array_equal(nz[0], [2, 1, 7, 5])
  assert nz[0].tolist() == get_bbox_coord(m[0] != 0)
  with pytest.raises(ValueError, match="rule"):
    boxes_from_masks(m, "all")


# ---- bad input ------------------------------------------------------------------------------

def test_missing_json(copy):
  os.remove(os.path.join(copy, "BlendPASS/Panoptic/val_trainId_K2B.json"))
  with pytest.raises(DataError, match=r"missing .*val_trainId_K2B\.json"):
    blend(copy)
  os.remove(os.path.join(copy, "KITTI360_APS/annotations/train.json"))
  with pytest.raises(DataError, match=r"missing .*annotations/train\.json"):
    kitti(copy)


def test_unparseable_json(copy):
  path = os.path.join(copy, "KITTI360_APS/Panoptic/val.json")
  with open(path, "w") as f:
    f.write("{not json")
  with pytest.raises(DataError, match=r"cannot parse .*Panoptic/val\.json"):
    kitti(copy, "val")


def test_json_referencing_missing_image(copy):
  os.remove(os.path.join(copy, "BlendPASS/leftImg8bit/val/2_.png"))
  with pytest.raises(DataError, match=r"references a missing image .*leftImg8bit/val/2_\.png"):
    blend(copy)
  os.remove(os.path.join(copy, "KITTI360_APS/Panoptic/val/synthval_000001_panoptic.png"))
  with pytest.raises(DataError, match=r"missing panoptic PNG .*synthval_000001_panoptic\.png"):
    kitti(copy, "val")


def test_image_missing_from_amodal_json(copy):
  path = os.path.join(copy, "KITTI360_APS/annotations/val.json")
  with open(path) as f:
    aj = json.load(f)
  aj["images"] = [im for im in aj["images"] if im["file_name"] != "synthval_000000.png"]
  aj["annotations"] = [a for a in aj["annotations"] if a["image_id"] != 1]
  with open(path, "w") as f:
    json.dump(aj, f)
  with pytest.raises(DataError, match=r"annotations/val\.json has no image synthval_000000\.png"):
    kitti(copy, "val")


def test_dangling_amodal_id(copy):
  path = os.path.join(copy, "BlendPASS/annotations/val.json")
  with open(path) as f:
    aj = json.load(f)
  aj["annotations"] = [a for a in aj["annotations"] if a["image_id"] != 1]
  with open(path, "w") as f:
    json.dump(aj, f)
  r = blend(copy)
  with pytest.raises(DataError, match=r"amodal_id \d+, which is not an annotation"):
    r.load(0)
  r.load(1)  # other images are unaffected


def test_corrupt_png(copy):
  path = os.path.join(copy, "KITTI360_APS/Image/train/synthtrain_000002.png")
  with open(path, "r+b") as f:
    f.seek(40)
    f.write(b"\x00garbage" * 8)
  r = kitti(copy)
  with pytest.raises(DataError, match=r"cannot read KITTI-360 APS image .*synthtrain_000002\.png"):
    r.load(2)


def test_corrupt_jpg(copy):
  path = os.path.join(copy, "BlendPASS/leftImg8bit/train/synthcity1/synthcity1pano00001.jpg")
  with open(path, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
  r = blend(copy, "train")
  i = r.names.index("synthcity1pano00001")
  with pytest.raises(DataError, match=r"cannot read BlendPASS train image .*pano00001\.jpg"):
    r.load(i)


def test_wrong_size(copy, root):
  path = os.path.join(copy, "BlendPASS/leftImg8bit/val/1_.png")
  h, w = SIZES["target"]
  Image.new("RGB", (w // 2, h // 2)).save(path)
  r = blend(copy)
  with pytest.raises(DataError, match=rf"BlendPASS val image .*1_\.png is {w // 2}x{h // 2}, "
                     rf"expected {w}x{h}"):
    r.load(0)
  # Default size = the real data set's 2048x400.
  with pytest.raises(DataError, match=r"is 256x50, expected 2048x400"):
    blendpass.Reader(os.path.join(root, "BlendPASS"), "val").load(0)
  # image_size=None: the first image fixes the size for all others.
  with pytest.raises(DataError, match=rf"expected {w // 2}x{h // 2}"):
    blend(copy, size=None).load(1)


def test_wrong_panoptic_format(copy):
  path = os.path.join(copy, "KITTI360_APS/Panoptic/val/synthval_000000_panoptic.png")
  h, w = SIZES["source"]
  Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
  with pytest.raises(DataError, match=r"panoptic PNG has mode L, expected RGB .*"
                                      r"synthval_000000_panoptic\.png"):
    kitti(copy, "val").load(0)


def test_bad_category(copy):
  path = os.path.join(copy, "KITTI360_APS/Panoptic/val.json")
  with open(path) as f:
    pj = json.load(f)
  pj["annotations"][0]["segments_info"][0]["category_id"] = 40
  with open(path, "w") as f:
    json.dump(pj, f)
  with pytest.raises(DataError, match=r"category_id 40, outside the label table 0\.\.17 "
                                      r"\(.*Panoptic/val\.json\)"):
    kitti(copy, "val")
