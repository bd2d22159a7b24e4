"""The 360° seam metrics (evaluation/seam.py) against oracles written here in numpy."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from tests.support import synthpass as synth_testing
from unlock_jax import sharding as shd
from unlock_jax.data import pipeline
from unlock_jax.data import synthpass
from unlock_jax.evaluation import evaluators
from unlock_jax.evaluation import report
from unlock_jax.evaluation import seam

H, W = 8, 32


def _miou_oracle(pred, gt, num_classes=18, ignore=255):
  """The reference's mIoU: IoU summed over GT classes / classes in GT or prediction."""
  keep = gt != ignore
  p, g = pred[keep], gt[keep]
  ious, counted = 0.0, 0
  for c in range(num_classes):
    tp = np.sum((p == c) & (g == c))
    n_gt, n_pred = np.sum(g == c), np.sum(p == c)
    if n_gt + n_pred:
      counted += 1
      ious += tp / (n_gt + n_pred - tp) if n_gt else 0.0
  return 100.0 * ious / counted


def _no_dets(h=H, w=W):
  return _dets([], [], [], h, w)


def _dets(masks, classes, scores, h=H, w=W):
  n = len(masks)
  return {"boxes": np.zeros((n, 4), np.float32),
          "scores": np.array(scores, np.float32).reshape(n),
          "classes": np.array(classes, np.int32).reshape(n),
          "masks": np.array(masks, bool).reshape(n, h, w), "valid": np.ones(n, bool)}


def _box(y0, y1, cols):
  m = np.zeros((H, W), bool)
  m[y0:y1, cols] = True
  return m


def test_band_width_and_roll_shift():
  assert seam.band_width(512, 1 / 16) == 32
  assert seam.band_width(2048, 1 / 16) == 128
  assert seam.band_width(20, 1 / 16) == 1  # round(1.25)
  assert seam.band_width(8, 1 / 100) == 1  # never empty
  with pytest.raises(ValueError, match="band_frac=0.5"):
    seam.band_width(512, 0.5)
  assert seam.roll_shift(512) == 256
  assert seam.roll_shift(2048) == 1024
  assert seam.roll_shift(1000) == 480  # 500 rounded down to the stride 32
  assert seam.roll_shift(40) == 20  # no multiple of 32 fits in half the width


def test_crossing_ids_are_ids_in_the_first_and_last_column():
  ids = np.zeros((4, 10), np.int64)
  ids[0, :2] = ids[1, -3:] = 13001  # both ends, in different rows
  ids[2, 0] = 14001                 # first column only
  ids[3, -1] = 14002                # last column only
  ids[3, 1:9] = 15001               # one column short of both ends
  np.testing.assert_array_equal(seam.crossing_ids(ids), [0, 13001])


def test_band_and_rest_miou_match_a_numpy_confusion_on_column_slices():
  rng = np.random.default_rng(0)
  metrics = seam.SeamMetrics(band_frac=1 / 8)  # 48 px wide: 6 columns at each end
  preds, gts = [], []
  for _ in range(3):
    gt = rng.integers(0, 6, (10, 48))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, np.clip(gt, 0, 5), rng.integers(0, 7, gt.shape))
    dets = _no_dets(10, 48)
    metrics.add({"semantic": gt, "panoptic": np.zeros_like(gt), "segments": [],
                 "instance_ids": np.zeros_like(gt), "amodal": []},
                {"sem": pred, "modal": dets, "amodal": dets},
                {"panoptic": np.zeros_like(gt)})
    preds.append(pred)
    gts.append(gt)
  band = np.r_[0:6, 42:48]
  res = metrics.result()
  assert res["band_px"] == 6
  assert res["band_mIoU"] == pytest.approx(_miou_oracle(
      np.concatenate([p[:, band] for p in preds]), np.concatenate([g[:, band] for g in gts])))
  assert res["rest_mIoU"] == pytest.approx(_miou_oracle(
      np.concatenate([p[:, 6:42] for p in preds]), np.concatenate([g[:, 6:42] for g in gts])))
  assert np.isnan(res["roll_change"])  # no roll added


def _panoptic_scene():
  """Road everywhere; cars (13) A crossing, B in the middle, C at the left end only;
  person (11) D crossing. Predictions: A split in two halves, D exact, a miss of B
  in the middle, C exact, a car on the road at the right end."""
  gt = np.zeros((H, W), np.int64)
  gt[2:6, 0:4] = gt[2:6, 28:32] = 13001  # A: 32 px, crossing
  gt[2:6, 12:16] = 13002                  # B: 16 px
  gt[6:8, 0:4] = 13003                    # C: 8 px, column 0 only
  gt[0:2, 0:2] = gt[0:2, 30:32] = 11001   # D: 8 px, crossing
  segments = [{"id": int(i), "category_id": 0 if i == 0 else int(i) // 1000,
               "iscrowd": 0, "area": int(np.sum(gt == i))} for i in np.unique(gt)]
  pred = np.zeros((H, W), np.int64)  # road: stuff id 0 * 1000
  pred[2:6, 0:4] = 13001    # A's left half: IoU 0.5, not > 0.5
  pred[2:6, 28:32] = 13002  # A's right half
  pred[0:2, 0:2] = pred[0:2, 30:32] = 11001  # D, exact
  pred[2:6, 14:20] = 13003  # B missed (IoU 8/32), away from the seam: out of scope
  pred[6:8, 0:4] = 13004    # C exact: at the seam but on a non-crossing car: ignored
  pred[6:8, 28:32] = 13005  # on the road at the seam: a false positive
  return gt, segments, pred


def test_crossing_pq_and_split_on_a_handcrafted_scene():
  gt_pan, segments, pred_pan = _panoptic_scene()
  sem = np.where(gt_pan >= 1000, gt_pan // 1000, 0)
  metrics = seam.SeamMetrics(band_frac=1 / 8, min_region_size=1)
  metrics.add({"semantic": sem, "panoptic": gt_pan, "segments": segments,
               "instance_ids": gt_pan, "amodal": []},
              {"sem": sem, "modal": _no_dets(), "amodal": _no_dets()},
              {"panoptic": pred_pan})
  res = metrics.result()
  # car: TP 0, FP 3 (A's halves, the road car), FN 1 (A): PQ 0.
  # person: TP 1 with IoU 1: PQ 100. Mean over the two classes seen.
  assert res["crossing_PQ"] == pytest.approx(50.0)
  stats = metrics.panoptic
  car, person = list(stats.cat_ids).index(13), list(stats.cat_ids).index(11)
  assert (stats.tp[car], stats.fp[car], stats.fn[car]) == (0, 3, 1)
  assert (stats.tp[person], stats.fp[person], stats.fn[person]) == (1, 0, 0)
  assert res["crossing_objects"] == 2 and res["crossing_split"] == 1  # A
  # No detections: AP 0 for the classes with crossing GT.
  assert res["crossing_AP"] == 0.0 and np.isnan(res["crossing_AAP"])


def test_a_piece_mostly_outside_the_object_does_not_split_it():
  gt_pan, segments, _ = _panoptic_scene()
  pred = np.zeros((H, W), np.int64)
  pred[2:6, 0:4] = 13001      # inside A
  pred[2:5, 26:32] = 13002    # 12 of its 18 px in A: a piece
  pred[5:7, 28:32] = 13003    # 4 of its 8 px in A: exactly half, no piece
  pred[2:6, 12:16] = 14001    # truck on B: another class
  metrics = seam.SeamMetrics(band_frac=1 / 8)
  sem = np.zeros((H, W), np.int64)
  metrics.add({"semantic": sem, "panoptic": gt_pan, "segments": segments,
               "instance_ids": gt_pan, "amodal": []},
              {"sem": sem, "modal": _no_dets(), "amodal": _no_dets()}, {"panoptic": pred})
  assert metrics.result()["crossing_split"] == 1
  pred[2:5, 26:32] = 13001  # the right part joins the left one: one segment
  metrics = seam.SeamMetrics(band_frac=1 / 8)
  metrics.add({"semantic": sem, "panoptic": gt_pan, "segments": segments,
               "instance_ids": gt_pan, "amodal": []},
              {"sem": sem, "modal": _no_dets(), "amodal": _no_dets()}, {"panoptic": pred})
  assert metrics.result()["crossing_split"] == 0


# Cityscapes AP of one positive at score 0.9 below one negative at 0.95: the
# reference's curve has (precision 0.5, recall 1) and (0, 0), plus the (1, 0)
# end point; its step weights 0.5, 0.5, 0 give 0.5 * 0.5 = 0.25.
AP_NEG_ABOVE_POS = 25.0


@pytest.mark.parametrize("amodal", [False, True])
def test_crossing_ap_keeps_every_prediction_but_counts_only_those_at_the_seam(amodal):
  ids = np.zeros((H, W), np.int64)
  a = _box(2, 6, np.r_[0:4, 28:32])  # car A, crossing
  b = _box(0, 8, np.r_[8:24])         # car B, in the middle
  ids[a], ids[b] = 13001, 13002
  gt = {"semantic": np.where(ids > 0, 13, 0), "panoptic": ids, "segments": [],
        "instance_ids": ids,
        "amodal": [{"mask": a, "category_id": 13, "seg_id": 13001},
                   {"mask": b, "category_id": 13, "seg_id": 13002}]}
  road_mid = _box(6, 8, np.r_[4:8])
  road_seam = _box(6, 8, np.r_[0:3])
  car = 13 - 11
  # A found (0.9); higher-scored B (a TP in the full AP, its GT not counted here)
  # and a car on the road away from the seam: both out of scope.
  dets = _dets([a, b, road_mid], [car] * 3, [0.9, 0.99, 0.98])
  branch = "amodal" if amodal else "modal"
  key = "crossing_AAP" if amodal else "crossing_AP"

  def score(d):
    m = seam.SeamMetrics(band_frac=1 / 8, min_region_size=1)
    pred = {"sem": gt["semantic"], "modal": _no_dets(), "amodal": _no_dets()}
    pred[branch] = d
    m.add(gt, pred, {"panoptic": np.zeros((H, W), np.int64)})
    return m.result()[key]

  assert score(dets) == pytest.approx(100.0)
  # A car on the road at the seam, scored above A: a negative at every overlap.
  with_fp = _dets([a, b, road_mid, road_seam], [car] * 4, [0.9, 0.99, 0.98, 0.95])
  assert score(with_fp) == pytest.approx(AP_NEG_ABOVE_POS)
  # A detection of B reaching the first column is in scope, but lies on B
  # (128 of its 129 px, above every overlap threshold): ignored.
  b_wide = b | _box(0, 1, np.r_[0:1])
  assert score(_dets([a, b_wide], [car] * 2, [0.9, 0.99])) == pytest.approx(100.0)


def test_roll_consistency_of_fake_predictors():
  rng = np.random.default_rng(1)
  images = rng.random((2, 6, 48, 3)).astype(np.float32)
  shift = seam.roll_shift(48)  # 24

  def per_pixel(x):  # depends on the pixel alone: roll-equivariant
    return np.argmax(x, -1)

  def left_border(x):  # class 1 on the 4 leftmost columns, whatever the content
    out = np.zeros(x.shape[:3], np.int64)
    out[:, :, :4] = 1
    return out

  m = seam.SeamMetrics(band_frac=1 / 16)
  for fn in (per_pixel,):
    m.add_roll(fn(images), seam.rolled_semantic(fn, images, shift))
  assert m.result()["roll_change"] == 0.0
  m = seam.SeamMetrics(band_frac=1 / 16)
  m.add_roll(left_border(images), seam.rolled_semantic(left_border, images, shift))
  # Rolled back, the border class sits on columns 24..27 instead of 0..3: 8 of 48 differ.
  assert m.result()["roll_change"] == pytest.approx(100.0 * 8 / 48)
  other = seam.SeamMetrics(band_frac=1 / 16)
  other.add_roll(per_pixel(images), per_pixel(images))
  m.merge(other)  # twice the pixels, none changed
  assert m.result()["roll_change"] == pytest.approx(100.0 * 8 / 96)


# --- in the oass evaluator ------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return synth_testing.make_tiny_dataset(str(tmp_path_factory.mktemp("data")))


def _border_sem(h, w):
  """Class 1 on the 4 leftmost columns (as a zero-padded border might), row % 18 elsewhere."""
  sem = np.broadcast_to((np.arange(h) % 18)[:, None], (h, w)).copy()
  sem[:, :4] = 1
  return sem


def _border_predict_fns(mesh):
  """Predicts :func:`_border_sem` whatever the image: not roll-equivariant."""
  def predict(variables, image):
    b, h, w, _ = image.shape
    return {"semantic": jnp.broadcast_to(jnp.asarray(_border_sem(h, w), jnp.uint8), (b, h, w))}
  fn = jax.jit(predict, out_shardings=shd.data_sharding(mesh))
  return {"semantic": fn, "oass": fn}


def test_oass_evaluator_adds_seam_metrics_and_leaves_the_headline_bit_identical(root, tmp_path):
  size = synthpass.image_sizes(0.125)["target"]
  cfg = common.oass_eval("blendpass", os.path.join(root, "BlendPASS"), "val", size,
                         scale=0.125, batch_size=4)
  assert (cfg.seam.enabled, cfg.seam.roll, cfg.seam.band_frac) == (True, True, 1 / 16)
  mesh = shd.make_mesh()
  fns = _border_predict_fns(mesh)
  ev = evaluators.from_config("val", cfg, predict_fns=fns, mesh=mesh, workdir=str(tmp_path))
  got = dict(ev.run({}))
  off = cfg.copy_and_resolve_references()
  off.seam.enabled = off.seam.roll = False
  ev_off = evaluators.from_config("val", off, predict_fns=fns, mesh=mesh,
                                  workdir=str(tmp_path))
  got_off = dict(ev_off.run({}))
  assert not any(k.startswith("seam/") for k in got_off)
  assert {k: v for k, v in got.items() if not k.startswith("seam/")} == got_off
  assert "seam" not in ev_off.table()

  # Direct accumulation, outside the evaluator: the headline and the seam metrics.
  h, w = size
  reader = pipeline.open_reader("blendpass", cfg.root, "val", size)
  oass = report.OassMetrics(tau_m=cfg.tau_m, tau_a=cfg.tau_a, stuff_area=cfg.stuff_area,
                            min_region_size=cfg.min_region_size)
  direct = seam.SeamMetrics(cfg.seam.band_frac, cfg.min_region_size)
  empty = _no_dets(h, w)
  sem = _border_sem(h, w)
  crossing = 0
  for i in range(len(reader)):
    gt = reader.load(i)
    pred = {"sem": sem, "modal": empty, "amodal": empty}
    direct.add(gt, pred, oass.add(gt, pred))
    pan = gt["panoptic"]
    crossing += sum(1 for s in gt["segments"] if 11 <= s["category_id"] <= 17
                    and not s["iscrowd"] and (pan[:, 0] == s["id"]).any()
                    and (pan[:, -1] == s["id"]).any())
  ref = oass.result()
  for k in report.HEADLINE + ("AP50", "AAP50"):
    assert got[k] == ref[k], k  # bit-identical
  want = direct.result()
  for k in ("band_mIoU", "rest_mIoU", "crossing_objects", "crossing_split"):
    assert got[f"seam/{k}"] == want[k], k
  assert got["seam/crossing_objects"] == crossing
  # Roll by 128 columns and back: the border class moves to columns 128..131.
  rolled = np.broadcast_to((np.arange(h) % 18)[:, None], (h, w)).copy()
  rolled[:, seam.roll_shift(w):seam.roll_shift(w) + 4] = 1
  assert seam.roll_shift(w) == 128
  assert got["seam/roll_change"] == pytest.approx(100.0 * np.mean(sem != rolled))
  assert ev.table().splitlines()[-3].startswith("seam (band 16 px at each end)")
  # Roll consistency alone: no band or crossing keys.
  roll_only = cfg.copy_and_resolve_references()
  roll_only.seam.enabled = False
  ev_roll = evaluators.from_config("val", roll_only, predict_fns=fns, mesh=mesh,
                                   workdir=str(tmp_path))
  got_roll = dict(ev_roll.run({}))
  assert {k: v for k, v in got_roll.items() if k.startswith("seam/")} == {
      "seam/roll_change": got["seam/roll_change"]}
  assert ev_roll.table().splitlines()[-1].startswith("seam: -roll_change:")


def test_comparison_table_lists_seam_metrics_after_the_headline():
  runs = {"source_only": {"results": {"t/mIoU": 30.0, "t/IoU/road": 9.0,
                                      "t/seam/band_mIoU": 20.0}},
          "UNLOCK": {"results": {"t/mIoU": 40.0, "t/seam/band_mIoU": 25.0,
                                 "t/seam/crossing_AP": 5.0}}}
  lines = report.comparison_table(runs).splitlines()
  assert [l.split()[0] for l in lines] == ["metric", "t/mIoU", "t/seam/band_mIoU",
                                           "t/seam/crossing_AP"]
  assert lines[2].split()[1:] == ["20.00", "25.00"]
  assert lines[3].split()[1:] == ["nan", "5.00"]  # not measured in that run
