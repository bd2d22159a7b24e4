"""One instance per object across the 360° seam (data/seam_instances.py and its consumers).

A synthetic panorama holds a car crossing the seam, predicted as two pieces
(one at each end), a truck that does not cross it, and a duplicate of the
truck. Oracles are written here in numpy (the wrapped box, the union mask,
the label maps) and pycocotools (AP).
"""
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unlock_jax.data import packed_labels
from unlock_jax.data import pool_index
from unlock_jax.data import seam_instances as si
from unlock_jax.evaluation import panoptic_fusion
from unlock_jax.pseudo import labels
from unlock_jax.pseudo import pool
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds

H, W = 24, 64
CAR, TRUCK = 13, 14  # thing ids 11..17


def _rect(y0, y1, x0, x1):
  m = np.zeros((H, W), bool)
  m[y0:y1, x0:x1] = True
  return m


def _scene():
  """Detections of one branch: car's right piece, car's left piece, truck, truck duplicate."""
  masks = np.stack([_rect(8, 16, 56, 64), _rect(8, 16, 0, 5), _rect(4, 12, 20, 30),
                    _rect(4, 13, 20, 30)])
  boxes = np.array([[56.2, 8, 64, 16], [0, 8, 4.7, 16], [20, 4, 30, 12], [20, 4, 30, 13]],
                   np.float32)
  return {"masks": masks, "boxes": boxes, "scores": np.array([0.9, 0.6, 0.8, 0.7], np.float32),
          "classes": np.array([CAR, CAR, TRUCK, TRUCK], np.int32)}


def _car_mask():
  return _rect(8, 16, 56, 64) | _rect(8, 16, 0, 5)


def _semantic():
  sem = np.zeros((H, W), np.uint8)  # road
  sem[_car_mask()] = CAR
  sem[_rect(4, 13, 20, 30)] = TRUCK
  return sem


@pytest.fixture(scope="module")
def merged():
  return si.merge_seam_instances(_scene())


def test_merge_one_instance_max_score_wrapped_box(merged):
  assert merged["classes"].tolist() == [CAR, TRUCK]
  np.testing.assert_array_equal(merged["masks"][0], _car_mask())
  # x1 of the right piece, W + x2 of the left piece; rows the union.
  np.testing.assert_allclose(merged["boxes"][0], [56.2, 8, W + 4.7, 16], rtol=0, atol=1e-5)
  assert merged["scores"][0] == np.float32(0.9)  # the max of 0.9 and 0.6
  b = merged["boxes"][0]
  assert 0 <= b[0] < W < b[2] <= b[0] + W  # the wrapped convention
  assert si.wrapped_columns(b[0], b[2], W) == [(b[0], W), (0.0, b[2] - W)]


def test_duplicates_removed_non_crossing_untouched(merged):
  scene = _scene()
  # The truck's duplicate (mask IoU 80/90 > 0.5) goes, the higher score stays unchanged.
  np.testing.assert_array_equal(merged["masks"][1], scene["masks"][2])
  np.testing.assert_array_equal(merged["boxes"][1], scene["boxes"][2])
  assert merged["scores"][1] == scene["scores"][2]
  # Without pieces or duplicates, nothing changes at all.
  alone = {k: v[2:3] for k, v in scene.items()}
  out = si.merge_seam_instances(alone)
  for k in alone:
    np.testing.assert_array_equal(out[k], alone[k])
    assert out[k].dtype == alone[k].dtype
  # Another class, or rows that do not meet across the cut: no merge.
  other = _scene()
  other["classes"][1] = TRUCK + 1
  assert len(si.merge_seam_instances(other)["classes"]) == 3
  apart = _scene()
  apart["masks"][1] = _rect(17, 22, 0, 5)
  assert len(si.merge_seam_instances(apart)["classes"]) == 3
  # A piece that ends in a one-row sliver at the cut (rows 8..15 vs row 15):
  # the shared rows are all of the shorter side's, so it is the same car.
  sliver = _scene()
  sliver["masks"][1] = _rect(15, 16, 0, 1) | _rect(8, 16, 1, 5)
  out = si.merge_seam_instances(sliver)
  assert out["classes"].tolist() == [CAR, TRUCK]
  np.testing.assert_array_equal(out["masks"][0], sliver["masks"][0] | sliver["masks"][1])


def test_padded_form_and_idempotent(merged):
  scene = dict(_scene(), valid=np.array([True, True, True, True]))
  out = si.merge_seam_instances(scene)
  assert out["valid"].tolist() == [True, False, True, False]
  np.testing.assert_array_equal(out["masks"][0], _car_mask())
  again = si.merge_seam_instances(merged)
  for k in ("masks", "boxes", "scores", "classes"):
    np.testing.assert_array_equal(again[k], merged[k])


def test_whole_object_and_stray_pieces_are_one():
  # A wrap-extended forward: the whole crossing car plus the two pieces the
  # original columns saw: one car, with the whole object's score.
  s = _scene()
  dets = {"masks": np.stack([_car_mask(), s["masks"][0], s["masks"][1]]),
          "boxes": np.array([[56, 8, W + 5, 16], s["boxes"][0], s["boxes"][1]], np.float32),
          "scores": np.array([0.95, 0.9, 0.6], np.float32),
          "classes": np.array([CAR] * 3, np.int32)}
  out = si.merge_seam_instances(dets)
  assert len(out["classes"]) == 1 and out["scores"][0] == np.float32(0.95)
  np.testing.assert_array_equal(out["masks"][0], _car_mask())


def test_wrapped_extent_oracle():
  rng = np.random.default_rng(0)
  for _ in range(50):
    m = rng.random((H, W)) < 0.02
    cols = np.flatnonzero(m.any(0))
    if not cols.size:
      continue
    y0, y1, x0, x1 = si.wrapped_extent(m)
    rows = np.flatnonzero(m.any(1))
    assert (y0, y1) == (rows[0], rows[-1] + 1)
    if not (m[:, 0].any() and m[:, -1].any()):
      assert (x0, x1) == (cols[0], cols[-1] + 1)  # not across the seam: as today
      continue
    # Oracle: the shortest arc over all starting columns that holds every column.
    best = min(cols, key=lambda s: (max((c - s) % W for c in cols), s))
    span = max((c - best) % W for c in cols) + 1
    assert x1 - x0 == span and x0 % W in cols
    assert set(np.arange(x0, x1) % W) >= set(cols)


def test_store_written_and_read_back(tmp_path, merged):
  sem = _semantic()
  code = thresholds.quantize(np.full((H, W), 0.9, np.float32))
  empty = si.merge_seam_instances({k: v[:0] for k, v in _scene().items()})
  store.write_prediction(str(tmp_path), "c/merged", sem, code, merged, empty)
  store.write_prediction(str(tmp_path), "c/flat", sem, code, _scene(), empty)
  got = store.load_prediction(str(tmp_path), "c/merged")["modal"]
  assert got["classes"].tolist() == [CAR, TRUCK]
  np.testing.assert_array_equal(got["masks"][0], _car_mask())
  np.testing.assert_allclose(got["boxes"][0], [56.2, 8, W + 4.7, 16], atol=1e-5)
  # A flat store keeps the pieces; read seam-aware, the same entry is one car.
  assert len(store.load_merged(str(tmp_path), "c/flat", False)["modal"]["classes"]) == 4
  again = store.load_merged(str(tmp_path), "c/flat", True)["modal"]
  np.testing.assert_array_equal(again["masks"], got["masks"])


def _pred(dets):
  empty = {k: v[:0] for k, v in _scene().items()}
  return {"name": "c/p", "semantic": _semantic(), "modal": dets, "amodal": dict(empty)}


def test_opll_labels_one_id_across_the_seam(tmp_path, merged):
  tau = {c: {"tau": 0.7} for c in range(11, 18)}
  flat = labels.instance_labels(_pred(_scene()), "modal", tau)
  # Flat: the left piece (0.6 < 0.7) is only uncertain, the right piece a label.
  assert flat["uncertain"][:, :5].any() and len(flat["classes"]) == 2
  inst = labels.instance_labels(_pred(merged), "modal", tau)
  assert not inst["uncertain"].any()
  empty = labels.instance_labels(_pred(merged), "amodal", tau)
  path = str(tmp_path / "p.npz")
  packed_labels.write_packed(path, "c/p", _semantic(), inst, empty)
  got = packed_labels.load_packed(path)["modal"]
  # The instance label map: one id over the whole car, at both ends.
  id_map = np.zeros((H, W), np.int32)
  for k, m in enumerate(got["masks"]):
    id_map[m == 1] = k + 1
  car = id_map[_car_mask()]
  assert car.min() == car.max() > 0 and id_map[:, 0].any() and id_map[:, -1].any()
  assert got["classes"][car[0] - 1] == CAR


def test_pool_one_object_paste_covers_both_ends(tmp_path, merged):
  from unlock_jax.data import adcl_paste  # pylint: disable=g-import-not-at-top
  pred = {"name": "c/p", "semantic": _semantic(), "amodal": merged}
  tau = {c: {"tau": 0.5} for c in range(11, 18)}
  entries = pool.pool_entries(pred, tau)
  car = [e for e in entries if e["class_id"] == CAR]
  assert len(car) == 1
  rgb = np.zeros((H, W, 3), np.uint8)
  rgb[..., 0] = np.arange(W)[None] * 3  # the column, to see where pixels come from
  shard = str(tmp_path / "s.npz")
  pool.write_shard(shard, pool.entry_record("c/p", rgb, car))
  pool.build_index([shard], str(tmp_path / "pool.npz"))
  index = pool_index.PoolIndex.load(str(tmp_path / "pool.npz"))
  assert len(index) == 1
  y0, y1, x0, x1 = index.extent(0)
  assert (y0, y1, x0, x1) == (8, 16, 56, W + 5)  # one wrapped extent, 13 columns
  np.testing.assert_array_equal(index.full_mask(0) != 0, _car_mask())
  np.testing.assert_array_equal(index.full_rgb(0)[..., 0], np.where(_car_mask(), rgb[..., 0], 0))
  # Position-locked paste into a crop as wide as the panorama: both ends.
  out = adcl_paste.paste(np.full((H, W, 3), 255, np.uint8), np.zeros((H, W), np.uint8),
                         {"classes": np.zeros(0, np.int32), "masks": np.zeros((0, H, W))},
                         {"classes": np.zeros(0, np.int32), "masks": np.zeros((0, H, W))},
                         (0, H, 0, W), index, None, candidates=[0], max_area_fraction=1.0)
  assert out["num_pasted"] == 1
  np.testing.assert_array_equal(out["semantic"] == CAR, _car_mask())
  np.testing.assert_array_equal(out["image"][..., 0][_car_mask()], rgb[..., 0][_car_mask()])
  assert len(out["amodal"]["classes"]) == 1
  np.testing.assert_array_equal(out["amodal"]["masks"][0] == 1, _car_mask())


def _padded(dets):
  return {"valid": np.ones(len(dets["classes"]), bool),
          "classes": np.asarray(dets["classes"]) - 11, "scores": dets["scores"],
          "masks": dets["masks"], "boxes": dets["boxes"]}


def test_panoptic_one_segment(merged):
  sem = _semantic().astype(np.int32)
  flat = panoptic_fusion.modal_panoptic(sem, panoptic_fusion.prepare_detections(
      _padded(_scene())), 0.5)
  one = panoptic_fusion.modal_panoptic(sem, panoptic_fusion.prepare_detections(
      _padded(merged)), 0.5)
  assert len(np.unique(flat[_car_mask()])) == 2  # flat: two segments
  ids = np.unique(one[_car_mask()])
  assert len(ids) == 1 and ids[0] // 1000 == CAR and (one == ids[0]).sum() == _car_mask().sum()


def _coco_ap(pred_masks, pred_scores):
  """pycocotools segm AP (IoU .5:.95) of predictions against the one crossing car."""
  rle = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
  gt = COCO()
  gt.dataset = {"images": [{"id": 1, "height": H, "width": W}],
                "categories": [{"id": 1, "name": "car"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                 "segmentation": rle(_car_mask()),
                                 "area": int(_car_mask().sum()), "bbox": [0, 8, W, 8]}]}
  gt.createIndex()
  dt = gt.loadRes([{"image_id": 1, "category_id": 1, "segmentation": rle(m),
                    "score": float(s)} for m, s in zip(pred_masks, pred_scores)])
  ev = COCOeval(gt, dt, "segm")
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return ev.stats[0]


def test_ap_input_merged_matches_crossing_gt(merged):
  # The evaluator's input (padded form, as OassEvaluator merges it).
  scene = _scene()
  out = si.merge_seam_instances(_padded(scene))
  keep = out["valid"] & (out["classes"] == CAR - 11)
  assert keep.sum() == 1
  assert _coco_ap(out["masks"][keep], out["scores"][keep]) == pytest.approx(1.0)
  pieces = scene["classes"] == CAR
  assert _coco_ap(scene["masks"][pieces], scene["scores"][pieces]) < 0.5


# --- in the oass evaluator: the synthpass val split, predicted as its own ground truth ----


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
  from tests.support import synthpass as synth_testing  # pylint: disable=g-import-not-at-top
  return synth_testing.make_tiny_dataset(str(tmp_path_factory.mktemp("data")))


def _gt_pieces(instances, w):
  """The GT instances as detections; one across the seam as its two halves (a flat model's)."""
  masks, classes, scores = [], [], []
  for inst in instances:
    m = np.asarray(inst["mask"]) != 0
    halves = ([np.where(np.arange(w) < w // 2, m, False), np.where(np.arange(w) >= w // 2, m,
                                                                    False)]
              if si.crosses_seam(m) else [m])
    for k, piece in enumerate(halves):
      masks.append(piece)
      classes.append(inst["category_id"] - 11)
      scores.append(0.9 - 0.1 * k)
  return masks, classes, scores


def _oracle_fns(reader, mesh, h, w, n_max=40):
  """``oass``: the GT semantic map and the GT instances (split at the seam) of each image."""
  import jax  # pylint: disable=g-import-not-at-top
  from unlock_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from unlock_jax.data import transforms  # pylint: disable=g-import-not-at-top
  table = {}
  for i in range(len(reader)):
    gt = reader.load(i)
    table[transforms.normalize(gt["image"]).tobytes()] = gt

  def predict(variables, image):
    del variables
    images = np.asarray(jax.device_get(image))
    b = images.shape[0]
    sem = np.zeros((b, h, w), np.uint8)
    out = {br: {"masks": np.zeros((b, n_max, h, w), bool), "classes": np.zeros((b, n_max), np.int32),
                "scores": np.zeros((b, n_max), np.float32), "boxes": np.zeros((b, n_max, 4), np.float32),
                "valid": np.zeros((b, n_max), bool)} for br in ("modal", "amodal")}
    for r in range(b):
      gt = table.get(images[r].tobytes())
      if gt is None:
        continue
      sem[r] = np.where(gt["semantic"] == 255, 0, gt["semantic"])  # ignore: any class
      for br in ("modal", "amodal"):
        masks, classes, scores = _gt_pieces(gt[br], w)
        n = len(masks)
        assert n <= n_max
        d = out[br]
        if n:
          d["masks"][r, :n], d["classes"][r, :n], d["scores"][r, :n] = masks, classes, scores
        d["valid"][r, :n] = True
    put = lambda x: shd.put_array(x, mesh)
    return {"semantic": put(sem), **{br: jax.tree.map(put, out[br]) for br in out}}
  return {"oass": predict, "semantic": predict}


def test_evaluator_merges_seam_pieces_when_seam_aware(val_root, tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from unlock_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from unlock_jax.data import pipeline, synthpass  # pylint: disable=g-import-not-at-top
  from unlock_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  size = synthpass.image_sizes(0.125)["target"]
  cfg = common.oass_eval("blendpass", os.path.join(val_root, "BlendPASS"), "val", size,
                         scale=0.125, batch_size=4)
  cfg.seam.roll = False  # the oracle knows only the unrolled panoramas
  cfg.num_pictures = 0
  mesh = shd.make_mesh()
  reader = pipeline.open_reader("blendpass", cfg.root, "val", size)
  fns = _oracle_fns(reader, mesh, *size)
  got = {}
  for mode in ("flat", "circular"):
    ev = evaluators.from_config("val", cfg, predict_fns=fns, mesh=mesh, workdir=str(tmp_path),
                                seam_mode=mode)
    got[mode] = dict(ev.run({}))
  flat, aware = got["flat"], got["circular"]
  assert flat["seam/crossing_objects"] == aware["seam/crossing_objects"] >= 1
  # Flat: every crossing object is two instances; seam-aware: one, matching its GT.
  assert flat["seam/crossing_split"] == flat["seam/crossing_objects"]
  assert aware["seam/crossing_split"] == 0
  assert aware["seam/crossing_AP"] == pytest.approx(100.0)
  assert aware["seam/crossing_AAP"] == pytest.approx(100.0)
  assert flat["seam/crossing_AP"] < 100.0 and flat["seam/crossing_PQ"] < aware["seam/crossing_PQ"]
  assert aware["mAP"] > flat["mAP"] and aware["mPQ"] >= flat["mPQ"]
