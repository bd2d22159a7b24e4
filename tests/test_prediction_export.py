"""pseudo/export.py: predictions at the input's resolution and their files.

Oracles: nearest-neighbour indices from exact rational arithmetic and PIL's
NEAREST (on integer upscales, where it has no ties), hand-fused panoptic
maps, numpy areas and boxes, PIL decoding of the PNGs and pycocotools
decoding of the RLE masks.
"""
import json
import logging
import math
from fractions import Fraction

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from unlock_jax.data import labels
from unlock_jax.pseudo import export
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds


# pycocotools 2.0.11 decodes through a numpy-1 __array__ call (harmless under numpy 2).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def oracle_indices(n_in, n_out):
  return [math.floor((Fraction(i) + Fraction(1, 2)) * n_in / n_out) for i in range(n_out)]


def oracle_resize(a, size):
  ys, xs = oracle_indices(a.shape[-2], size[0]), oracle_indices(a.shape[-1], size[1])
  return np.asarray(a)[..., ys, :][..., xs]


def oracle_segments(pan):
  out = []
  for i in np.unique(pan):
    if i == 0:
      continue
    yy, xx = np.nonzero(pan == i)
    out.append({"id": int(i), "category_id": int(i) // 1000 - 1, "isthing": int(i % 1000 > 0),
                "iscrowd": 0, "area": int(yy.size),
                "bbox": [int(xx.min()), int(yy.min()), int(xx.max() - xx.min() + 1),
                         int(yy.max() - yy.min() + 1)]})
  return out


@pytest.mark.parametrize("n_in, n_out", [(50, 100), (50, 37), (256, 190), (400, 4000),
                                         (7, 3), (3, 3), (5, 1), (1, 9)])
def test_nearest_indices_are_exact(n_in, n_out):
  np.testing.assert_array_equal(export.nearest_indices(n_in, n_out), oracle_indices(n_in, n_out))


@pytest.mark.parametrize("src, dst", [((12, 40), (36, 120)), ((12, 40), (24, 200)),
                                      ((5, 9), (5, 27))])
def test_resize_matches_pil_nearest_on_integer_upscales(src, dst):
  rng = np.random.default_rng(0)
  sem = rng.integers(0, 18, src).astype(np.uint8)
  ids = rng.integers(0, 20000, src).astype(np.int32)
  rs = export.Resize(src, dst)
  pil = lambda a: np.asarray(Image.fromarray(a).resize(dst[::-1], Image.NEAREST))  # noqa: E731
  np.testing.assert_array_equal(rs.map(sem), pil(sem))
  np.testing.assert_array_equal(rs.map(ids), pil(ids))


@pytest.mark.parametrize("dst", [(37, 61), (12, 40), (5, 13), (80, 97)])
def test_resize_of_maps_masks_and_boxes(dst):
  rng = np.random.default_rng(1)
  src = (12, 40)
  rs = export.Resize(src, dst)
  a = rng.random(src).astype(np.float32)
  np.testing.assert_array_equal(rs.map(a), oracle_resize(a, dst))
  masks = np.zeros((4,) + src, bool)
  masks[0, 3:7, 5:30] = True
  masks[1, 0, 0] = True
  masks[2, 11, 39] = True  # masks[3] stays empty
  for m in masks:
    got = rs.mask(m)
    assert got.dtype == bool and got.shape == dst
    np.testing.assert_array_equal(got, oracle_resize(m, dst))
  boxes = np.array([[0, 0, 40, 12], [5.5, 3, 30, 7]], np.float32)
  sy, sx = dst[0] / 12, dst[1] / 40
  np.testing.assert_allclose(rs.boxes(boxes), boxes * [sx, sy, sx, sy], rtol=1e-6)


def hand_prediction():
  """A 10x16 prediction whose panoptic map is known by hand (tau_m 0.5, stuff area 6)."""
  sem = np.full((10, 16), 10, np.uint8)      # sky
  sem[5:, :] = 0                             # road
  sem[5:7, 14:] = 1                          # sidewalk: 4 pixels < stuff area -> void
  sem[2:6, 2:6] = 13                         # a car...
  sem[2:4, 9:12] = 11                        # ...and a pedestrian
  masks = np.zeros((3, 10, 16), bool)
  masks[0, 2:6, 2:6] = True                  # car, score 0.9: kept
  masks[1, 1:4, 9:12] = True                 # pedestrian, 0.8: kept, only its thing pixels
  masks[2, 2:4, 9:12] = True                 # another pedestrian, 0.2: below tau
  modal = {"classes": np.array([13, 11, 11], np.int32),
           "scores": np.array([0.9, 0.8, 0.2], np.float32),
           "boxes": np.array([[2, 2, 6, 6], [9, 1, 12, 4], [9, 2, 12, 4]], np.float32),
           "masks": masks}
  amodal = {"classes": np.array([13], np.int32), "scores": np.array([0.7], np.float32),
            "boxes": np.array([[1, 1, 7, 7]], np.float32),
            "masks": np.pad(np.ones((6, 6), bool), ((1, 3), (1, 9)))[None]}
  want = np.full((10, 16), 11000, np.int32)  # sky: (10 + 1) * 1000
  want[5:, :] = 1000                        # road: (0 + 1) * 1000
  want[5:7, 14:] = 0                        # too small a stuff region: void
  want[2:6, 2:6] = 14001                    # car 1: (13 + 1) * 1000 + 1
  want[2:4, 9:12] = 12001                   # pedestrian 1 on its thing pixels...
  want[1, 9:12] = 0                          # ...its mask over sky is void (reference rule)
  conf = np.linspace(0, 1, 160, dtype=np.float32).reshape(10, 16)
  return {"semantic": sem, "confidence": conf, "modal": modal, "amodal": amodal}, want


def test_fuse_by_hand():
  pred, want = hand_prediction()
  got = export.fuse(pred["semantic"], pred["modal"], tau_m=0.5, stuff_area=6)
  np.testing.assert_array_equal(got, want)
  # Below every score: the thing pixels are void.
  got = export.fuse(pred["semantic"], pred["modal"], tau_m=0.95, stuff_area=6)
  none_kept = np.where(want >= 12000, 0, want)
  none_kept[1, 9:12] = 11000
  np.testing.assert_array_equal(got, none_kept)


def test_segments_info_against_numpy():
  pred, want = hand_prediction()
  assert export.segments_info(want) == oracle_segments(want)
  big = export.Resize(want.shape, (33, 47)).map(want)
  assert export.segments_info(big) == oracle_segments(big)


@pytest.mark.parametrize("size", [(23, 37), (7, 11), (4, 5), (10, 40)])
def test_at_resolution_is_the_nearest_resize_of_each_output(size):
  pred, want = hand_prediction()
  out = export.at_resolution(pred, size, tau_m=0.5, stuff_area=6)
  np.testing.assert_array_equal(out["semantic"], oracle_resize(pred["semantic"], size))
  np.testing.assert_array_equal(out["confidence"], oracle_resize(pred["confidence"], size))
  np.testing.assert_array_equal(out["panoptic"], oracle_resize(want, size))
  assert out["panoptic"].dtype == np.int32 and out["semantic"].dtype == np.uint8
  assert out["segments"] == oracle_segments(oracle_resize(want, size))
  for b in export.BRANCHES:
    d = pred[b]
    np.testing.assert_array_equal(out[b]["masks"], oracle_resize(d["masks"], size))
    np.testing.assert_array_equal(out[b]["classes"], d["classes"])
    np.testing.assert_array_equal(out[b]["scores"], d["scores"])
    np.testing.assert_allclose(out[b]["boxes"], d["boxes"] * ([size[1] / 16, size[0] / 10] * 2),
                               rtol=1e-6)
  same = export.at_resolution(pred, (10, 16), tau_m=0.5, stuff_area=6)
  np.testing.assert_array_equal(same["panoptic"], want)
  np.testing.assert_array_equal(same["modal"]["masks"], pred["modal"]["masks"])


def test_rle_decodes_to_the_mask():
  rng = np.random.default_rng(2)
  m = rng.random((17, 29)) < 0.3
  rle = export.encode_rle(m)
  assert rle["size"] == [17, 29] and isinstance(rle["counts"], str)
  json.dumps(rle)
  np.testing.assert_array_equal(mask_utils.decode(dict(rle, counts=rle["counts"].encode())), m)


def _write(store_dir, name, pred, **source):
  store.write_prediction(store_dir, name, pred["semantic"],
                         thresholds.quantize(pred["confidence"]), pred["modal"],
                         pred["amodal"], **source)


def test_export_store_files_decode_to_the_outputs(tmp_path, caplog):
  pred, _ = hand_prediction()
  sd, out = str(tmp_path / "store"), tmp_path / "export"
  _write(sd, "trip/a.jpg", pred, source_path="/data/pano/trip/a.jpg", source_size=(23, 37))
  _write(sd, "b.png", pred)  # no recorded size: the store's
  with caplog.at_level(logging.WARNING):
    summary = export.export_store(sd, str(out), ["trip/a.jpg", "b.png"], tau_m=0.5,
                                  stuff_area=6)
  assert summary["exported"] == 2 and summary["unsized"] == 1
  assert "1 of 2 entries" in caplog.text and "b.png" in caplog.text
  pan = json.loads((out / "panoptic.json").read_text())
  assert [(i["id"], i["file_name"], i["height"], i["width"], i["path"]) for i in pan["images"]] \
      == [(1, "b.png", 10, 16, None), (2, "trip/a.jpg", 23, 37, "/data/pano/trip/a.jpg")]
  cats = {c["id"]: c for c in pan["categories"]}
  assert sorted(cats) == list(range(18)) and cats[13]["isthing"] == 1 and cats[0]["isthing"] == 0
  assert cats[13]["name"] == labels.CLASS_NAMES[13]
  for img, ann in zip(pan["images"], pan["annotations"]):
    name, size = img["file_name"], (img["height"], img["width"])
    entry = store.load_prediction(sd, name)  # what was stored, at the store's size
    want = export.at_resolution(entry, size, tau_m=0.5, stuff_area=6)
    assert ann["image_id"] == img["id"] and ann["file_name"] == name + ".png"
    sem = np.asarray(Image.open(out / "semantic" / (name + ".png")))
    assert sem.dtype == np.uint8 and sem.shape == size
    np.testing.assert_array_equal(sem, oracle_resize(entry["semantic"], size))
    rgb = np.asarray(Image.open(out / "panoptic" / (name + ".png"))).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    np.testing.assert_array_equal(ids, want["panoptic"])
    assert ann["segments_info"] == oracle_segments(ids)
    for b in export.BRANCHES:
      inst = json.loads((out / export.INSTANCES_JSON[b]).read_text())
      assert inst["images"] == pan["images"]
      assert [c["id"] for c in inst["categories"]] == list(labels.THING_IDS)
      anns = [a for a in inst["annotations"] if a["image_id"] == img["id"]]
      assert len(anns) == len(entry[b]["classes"])
      for a, c, s, box, m in zip(anns, entry[b]["classes"], entry[b]["scores"],
                                 want[b]["boxes"], entry[b]["masks"]):
        got = mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode()))
        np.testing.assert_array_equal(got, oracle_resize(m, size))
        assert a["area"] == int(got.sum()) and a["iscrowd"] == 0
        assert a["category_id"] == c and a["score"] == pytest.approx(float(s))
        x1, y1, x2, y2 = box
        np.testing.assert_allclose(a["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)
      assert [a["id"] for a in inst["annotations"]] == list(range(1, len(inst["annotations"]) + 1))


def test_id2rgb_is_the_coco_panoptic_colour():
  ids = np.array([[0, 1, 255, 256], [65535, 65536, 18999, 2**24 - 1]], np.int32)
  rgb = labels.id2rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3) and rgb.flags.c_contiguous
  np.testing.assert_array_equal(rgb, np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1))
  np.testing.assert_array_equal(labels.rgb2id(rgb), ids)
