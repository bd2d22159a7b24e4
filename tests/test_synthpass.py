"""Tests of the synthpass generator: determinism, resumability, ground-truth exactness, polygons."""
import glob
import json
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from tests.support.synthpass import make_tiny_dataset
from unlock_jax.data import labels
from unlock_jax.data import synthpass
from unlock_jax.data.synthpass import geometry as geo
from unlock_jax.data.synthpass import polygons

SCALE = 0.125


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return make_tiny_dataset(str(tmp_path_factory.mktemp("sp")), scale=SCALE, seed=0)


def _files(root):
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
    if os.path.isfile(path):
      out[os.path.relpath(path, root)] = path
  return out


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def test_layout_files_exist(root):
  rel = set(_files(root))
  for f in ("KITTI360_APS/Panoptic/train.json", "KITTI360_APS/Panoptic/val.json",
            "KITTI360_APS/annotations/train.json", "KITTI360_APS/annotations/val.json",
            "KITTI360_APS/Image/train/synthtrain_000000.png",
            "KITTI360_APS/Panoptic/train/synthtrain_000000_panoptic.png",
            "KITTI360_APS/Semantic/val/synthval_000002.png",
            "BlendPASS/Panoptic/val_trainId_K2B.json", "BlendPASS/annotations/val.json",
            "BlendPASS/leftImg8bit/val/1_.png",
            "BlendPASS/Panoptic/val_trainId_K2B/3__panoptic.png",
            "BlendPASS/Instance/val_K2B/2__instanceTrainIds.png",
            "BlendPASS/Semantic/val_K2B/1_.png",
            "BlendPASS/leftImg8bit/train/synthcity0/synthcity0pano00000.jpg",
            "BlendPASS/_synth_gt/Panoptic/train_trainId_K2B.json",
            "BlendPASS/_synth_gt/annotations/train.json", "synthpass.json"):
    assert f in rel, f
  trains = glob.glob(os.path.join(root, "BlendPASS/leftImg8bit/train/*/*.jpg"))
  assert len(trains) == 4 and all("_" not in os.path.basename(p) for p in trains)
  assert len({os.path.dirname(p) for p in trains}) > 1  # several cities
  h, w = synthpass.image_sizes(SCALE)["target"]
  assert Image.open(os.path.join(root, "BlendPASS/leftImg8bit/val/1_.png")).size == (w, h)
  inst = Image.open(os.path.join(root, "BlendPASS/Instance/val_K2B/1__instanceTrainIds.png"))
  assert inst.mode in ("I;16", "I")  # ids >= 256 need 16 bits, as Cityscapes instanceIds


def test_image_sizes():
  assert synthpass.image_sizes(1.0) == {"source": (376, 1408), "target": (400, 2048)}
  assert synthpass.image_sizes(0.25) == {"source": (94, 352), "target": (100, 512)}


def test_rerun_is_noop(root):
  before = {k: os.stat(p).st_mtime_ns for k, p in _files(root).items()}
  calls = []
  summary = synthpass.generate(root, scale=SCALE, seed=0, num_source={"train": 6, "val": 3},
                               num_target={"train": 4, "val": 3},
                               progress=lambda d, t: calls.append((d, t)))
  assert summary["generated"] == 0 and summary["skipped"] == 16
  assert calls == [(i, 16) for i in range(1, 17)]
  after = {k: os.stat(p).st_mtime_ns for k, p in _files(root).items()}
  assert before == after  # nothing rewritten


def test_resume_after_interruption(tmp_path):
  """A scene with a missing file is regenerated, byte-identical; the others are skipped."""
  out = str(tmp_path / "r")
  counts = dict(num_source={"train": 2, "val": 0}, num_target={"train": 0, "val": 1})
  synthpass.generate(out, scale=SCALE, seed=0, **counts)
  victim = os.path.join(out, "KITTI360_APS/Panoptic/train/synthtrain_000001_panoptic.png")
  want = _read(victim)
  os.remove(victim)
  os.remove(os.path.join(out, "KITTI360_APS/Panoptic/train.json"))
  summary = synthpass.generate(out, scale=SCALE, seed=0, **counts)
  assert summary["generated"] == 1 and summary["skipped"] == 2
  assert _read(victim) == want
  with open(os.path.join(out, "KITTI360_APS/Panoptic/train.json")) as f:
    index = json.load(f)
  assert [a["file_name"] for a in index["annotations"]] == [
      "synthtrain_000000_panoptic.png", "synthtrain_000001_panoptic.png"]


def test_deterministic_and_seed_dependent(root, tmp_path):
  counts = dict(num_source={"train": 2, "val": 0}, num_target={"train": 1, "val": 1})
  a, b, c = (str(tmp_path / n) for n in "abc")
  synthpass.generate(a, scale=SCALE, seed=0, **counts)
  synthpass.generate(b, scale=SCALE, seed=0, num_workers=2, **counts)
  synthpass.generate(c, scale=SCALE, seed=1, **counts)
  fa, fb, fc = _files(a), _files(b), _files(c)
  assert set(fa) == set(fb)
  for k in fa:
    assert _read(fa[k]) == _read(fb[k]), k
  # A scene does not depend on how many scenes were asked for.
  full = _files(root)
  for k in fa:
    if k.endswith((".png", ".jpg")):
      assert _read(fa[k]) == _read(full[k]), k
  img = "KITTI360_APS/Image/train/synthtrain_000000.png"
  assert _read(fa[img]) != _read(fc[img])


def test_fewer_target_train_scenes_drop_the_extra_images(tmp_path):
  """The target train split is a glob over images: a smaller re-run must not keep extras."""
  out = str(tmp_path / "s")
  synthpass.generate(out, scale=SCALE, seed=0, num_source={}, num_target={"train": 3})
  synthpass.generate(out, scale=SCALE, seed=0, num_source={}, num_target={"train": 2})
  jpgs = sorted(os.path.basename(p) for p in glob.glob(
      os.path.join(out, "BlendPASS/leftImg8bit/train/*/*.jpg")))
  assert jpgs == ["synthcity0pano00000.jpg", "synthcity1pano00001.jpg"]
  assert not glob.glob(os.path.join(out, "BlendPASS/_synth_gt/**/*00002*"), recursive=True)


def test_config_mismatch_is_an_error(root):
  with pytest.raises(ValueError, match="generated with"):
    synthpass.generate(root, scale=SCALE, seed=5, num_source={"train": 1}, num_target={})


@pytest.mark.parametrize("domain", ["source", "target"])
def test_amodal_contains_modal_and_occlusions(domain):
  by_thing = by_stuff = 0
  classes = set()
  for i in range(3):
    r = synthpass.render_scene(0, domain, "val", i, SCALE, 1.0)
    rend = r["rendering"]
    thing, amodal, sem = rend["thing"], rend["amodal"], rend["semantic"]
    assert len(amodal) == len(r["scene"].thing_cls)
    for t, am in enumerate(amodal):
      modal = thing == t
      assert not (modal & ~am).any()  # amodal ⊇ modal, exactly
      hidden = am & ~modal
      if modal.any() and hidden.any():
        by_thing += int((thing[hidden] >= 0).any())
        by_stuff += int(((thing[hidden] < 0) & (sem[hidden] != 255)).any())
      if modal.any():
        classes.add(r["scene"].thing_cls[t])
    # Semantic labels of thing pixels are their thing's class.
    cls = np.array(r["scene"].thing_cls)
    assert (sem[thing >= 0] == cls[thing[thing >= 0]]).all()
  assert by_thing > 0 and by_stuff > 0
  assert len(classes) >= 5


def test_every_class_appears(root):
  seen = np.zeros(256, bool)
  for f in glob.glob(os.path.join(root, "KITTI360_APS/Semantic/*/*.png")):
    seen[np.unique(np.array(Image.open(f)))] = True
  assert seen[:labels.NUM_CLASSES].all(), np.flatnonzero(~seen[:labels.NUM_CLASSES])
  seen[:] = False
  for f in glob.glob(os.path.join(root, "BlendPASS/**/Semantic/*/*.png"), recursive=True):
    seen[np.unique(np.array(Image.open(f)))] = True
  assert seen[list(labels.THING_IDS)].all()


def test_summary_statistics(root):
  with open(os.path.join(root, "synthpass.json")) as f:
    s = json.load(f)
  src = s["splits"]["source/train"]
  assert src["images"] == 6 and src["instances"] > 20
  assert src["occluded_by_thing"] > 0 and src["occluded_by_stuff"] > 0
  assert 0.3 < src["mean_visible_fraction"] < 1.0
  crowd = sum(v["crowd"] for v in s["splits"].values())
  assert crowd > 0  # tiny far-away things exercise the crowd rules


def _iou(a, b):
  return (a & b).sum() / max((a | b).sum(), 1)


def test_polygon_round_trip_against_rendered_masks(root):
  """Polygons in the JSON, decoded like the reference, reproduce the rendered amodal masks.

  Tolerance: IoU ≥ 0.95 for masks of ≥ 50 px (holes are filled by the polygon
  encoding and diagonal-only contacts may shift a few pixels).
  """
  h, w = synthpass.image_sizes(SCALE)["target"]
  with open(os.path.join(root, "BlendPASS/annotations/val.json")) as f:
    am = json.load(f)
  ious = []
  for i in range(3):
    r = synthpass.render_scene(0, "target", "val", i, SCALE, 1.0)
    thing = r["rendering"]["thing"]
    min_area = synthpass.annotate.crowd_area(SCALE)
    annotated = [t for t in range(len(r["scene"].thing_cls)) if (thing == t).sum() >= min_area]
    anns = [a for a in am["annotations"] if a["image_id"] == i + 1]
    assert len(anns) == len(annotated) > 0
    for a, t in zip(anns, annotated):
      rendered = r["rendering"]["amodal"][t]
      assert a["area"] == rendered.sum() and a["category_id"] == r["scene"].thing_cls[t]
      rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
      dec = mask_utils.decode(rle).astype(bool)
      if rendered.sum() >= 50:
        ious.append(_iou(dec, rendered))
  assert ious and min(ious) >= 0.95, min(ious)


def test_polygon_tracer_exact_cases():
  m = np.zeros((12, 14), bool)
  m[2:5, 3:7] = True          # rectangle
  m[5:9, 3:5] = True          # makes an L shape with it
  m[9, 5] = True              # diagonal contact only → separate 4-component
  m[1:4, 10:13] = True        # another component
  polys = polygons.mask_to_polygons(m)
  assert len(polys) == 3
  dec = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 12, 14)))
  np.testing.assert_array_equal(dec.astype(bool), m)
  assert [3, 2, 7, 2, 7, 5, 5, 5, 5, 9, 3, 9] in polys  # corners only, clockwise
  ring = np.zeros((9, 9), bool)
  ring[1:8, 1:8] = True
  ring[3:6, 3:6] = False
  dec = polygons.polygons_to_mask(polygons.mask_to_polygons(ring), 9, 9).astype(bool)
  np.testing.assert_array_equal(dec, np.pad(np.ones((7, 7), bool), 1))  # hole filled
  assert polygons.mask_to_polygons(np.zeros((4, 4), bool)) == []


def test_polygon_round_trip_random_blobs():
  rng = np.random.default_rng(0)
  for _ in range(30):
    m = np.zeros((30, 40), bool)
    for _ in range(3):  # unions of ellipses: shapes like the rendered solids
      cy, cx, ry, rx = rng.uniform(5, 25), rng.uniform(5, 35), rng.uniform(2, 8), rng.uniform(2, 12)
      yy, xx = np.mgrid[:30, :40]
      m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    dec = polygons.polygons_to_mask(polygons.mask_to_polygons(m), 30, 40).astype(bool)
    assert _iou(dec, m) >= 0.95


def test_panoptic_semantic_instance_consistency(root):
  with open(os.path.join(root, "BlendPASS/Panoptic/val_trainId_K2B.json")) as f:
    pan_json = json.load(f)
  for a in pan_json["annotations"]:
    k = a["file_name"][:-len("_panoptic.png")]
    pan = labels.rgb2id(np.array(Image.open(
        os.path.join(root, "BlendPASS/Panoptic/val_trainId_K2B", a["file_name"]))))
    inst = np.array(Image.open(
        os.path.join(root, f"BlendPASS/Instance/val_K2B/{k}_instanceTrainIds.png"))).astype(int)
    sem = np.array(Image.open(os.path.join(root, f"BlendPASS/Semantic/val_K2B/{k}.png")))
    listed = np.zeros(pan.shape, bool)
    for s in a["segments_info"]:
      m = pan == s["id"]
      assert m.sum() == s["area"] > 0
      ys, xs = np.nonzero(m)
      assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
      assert (sem[m] == s["category_id"]).all()
      listed |= m
      if labels.is_thing(s["category_id"]) and not s["iscrowd"]:
        assert s["id"] // 1000 == s["category_id"] and s["id"] % 1000 >= 1
        assert (inst[m] == s["id"]).all() and s["amodal_id"] > 0
      else:
        assert s["id"] == s["category_id"] and (inst[m] == s["category_id"]).all()
        assert s["amodal_id"] == 0
    # Everything not listed is void (the ego vehicle): 255 everywhere.
    assert (pan[~listed] == 255).all() and (inst[~listed] == 255).all()
    assert (sem[~listed] == 255).all()


def test_geometry_intersections_against_closed_forms():
  o = np.array([0.0, -10.0, 0.0])
  d = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.1], [0.0, 1.0, 0.5], [0.3, 1.0, 0.0]])
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  # Box with half extents (1, 2, 1.5) at the origin: front face y = -2.
  t, n, _ = geo.intersect(geo.BOX, np.array([1.0, 2.0, 1.5]), o, d)
  np.testing.assert_allclose(t[:2], 8.0 / d[:2, 1])
  np.testing.assert_allclose(n[0], [0, -1, 0])
  assert np.isinf(t[2]) and np.isinf(t[3])  # over the top / beside it
  # Sphere of radius 2: t = 8 straight on; the tilted ray: solve |o + t d|² = 4.
  t, n, _ = geo.intersect(geo.ELLIPSOID, np.array([2.0, 2.0, 2.0]), o, d)
  np.testing.assert_allclose(t[0], 8.0)
  b, c = 2 * o @ d[1], o @ o - 4.0
  np.testing.assert_allclose(t[1], (-b - np.sqrt(b * b - 4 * c)) / 2)
  assert np.isinf(t[3])  # passes 2.87 m from the centre
  np.testing.assert_allclose(n[0], [0, -1, 0], atol=1e-12)
  # Vertical cylinder r = 1, half height 1: side at y = -1, top cap for steep rays.
  t, n, _ = geo.intersect(geo.CYLINDER, np.array([1.0, 1.0, 1.0]), o, d)
  np.testing.assert_allclose(t[:2], 9.0 / d[:2, 1])
  assert np.isinf(t[2])  # z = 4.5 at y = -1, above the top
  down = np.array([[0.0, 0.0, -1.0]])
  t, n, _ = geo.intersect(geo.CYLINDER, np.array([1.0, 1.0, 1.0]), np.array([0.2, 0, 5.0]), down)
  np.testing.assert_allclose(t, 4.0)
  np.testing.assert_allclose(n[0], [0, 0, 1])
  rays = geo.equirect_rays(8, 2)
  np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0)
  assert rays[:8, 1].argmax() in (3, 4) and rays[:8, 1].max() > 0.8  # centre looks forward (+Y)
  assert rays[0, 2] > 0 > rays[8, 2]  # top row above the horizon, bottom row below
  pin = geo.pinhole_rays(4, 2, 2.0)
  np.testing.assert_allclose(pin[1], np.array([-0.25, 1, 0.25]) / np.linalg.norm([-0.25, 1, 0.25]))


@pytest.mark.parametrize("domain", ["source", "target"])
def test_image_space_culling_is_exact(domain, monkeypatch):
  """Rendering with every solid tested against every ray gives identical outputs."""
  from unlock_jax.data.synthpass import render  # pylint: disable=g-import-not-at-top
  for i in range(2):
    fast = synthpass.render_scene(0, domain, "train", i, SCALE, 1.0)
    with monkeypatch.context() as m:
      m.setattr(render, "_candidates",
                lambda camera, width, height, *a: np.arange(width * height))
      slow = synthpass.render_scene(0, domain, "train", i, SCALE, 1.0)
    np.testing.assert_array_equal(fast["image"], slow["image"])
    for k in ("semantic", "thing", "depth"):
      np.testing.assert_array_equal(fast["rendering"][k], slow["rendering"][k])
    np.testing.assert_array_equal(np.array(fast["rendering"]["amodal"]),
                                  np.array(slow["rendering"]["amodal"]))
