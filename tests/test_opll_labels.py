"""OPLL labels (docs/method.md §5.2, §5.3): hand-built cases and a transcription of the
reference scripts."""
import glob
import os
import re

import numpy as np
import pytest
from PIL import Image

from unlock_jax.data import labels
from unlock_jax.data import packed_labels
from unlock_jax.pseudo import labels as pl
from unlock_jax.pseudo import thresholds as th

H, W = 16, 40


def ref_semantic(semantic, confidence, tau):
  """Save_OPLL_Semantic.py L185-192, on float64 confidences."""
  y = semantic.astype(np.int64)
  m = confidence.astype(np.float64)
  for c in range(18):
    y[(m < tau[c]) * (y == c)] = 255
  return y.astype(np.uint8)


def ref_instances(semantic, classes, scores, masks, tau, reject=None):
  """Save_OPLL_Instance_Level.py L185-240 with its uint8 0/255 arithmetic.

  Returns {(c, k): mask 0/1}, uncertain 0/255, and the source index of each file.
  """
  sem_mask = np.zeros(semantic.shape, np.uint8)
  for i in range(7):
    sem_mask[semantic == i + 11] = 255
  soft = np.zeros(semantic.shape, np.uint8)
  hard = np.zeros(semantic.shape, np.uint8)
  stat = {i: 0 for i in range(7)}
  files, src = {}, {}
  for j in range(len(classes)):
    label = int(classes[j]) - 11
    mask = masks[j].astype(np.uint8)
    if float(scores[j]) < tau[label + 11] or (reject is not None and reject[j]):
      soft[mask == 1] = 255
      continue
    mask = mask & sem_mask
    if np.sum(mask) == 0:
      continue
    hard[mask == 1] = 255
    files[(label, stat[label])] = mask
    src[(label, stat[label])] = j
    stat[label] += 1
  soft = soft & ~hard
  soft = soft & sem_mask
  return files, soft, src


def box(y0, y1, x0, x1):
  m = np.zeros((H, W), bool)
  m[y0:y1, x0:x1] = True
  return m


def scene():
  """Stuff 0 everywhere; car (13) rows 4..10 x 5..15; pedestrian (11) rows 4..12 x 20..26;
  truck (14) rows 2..5 x 30..36; a pole (5) column band x 16..18."""
  sem = np.zeros((H, W), np.uint8)
  sem[4:11, 5:16] = 13
  sem[4:13, 20:27] = 11
  sem[2:6, 30:37] = 14
  sem[:, 16:19] = 5
  return sem


TAU = {c: {"tau": 0.5} for c in range(11, 18)}


def make_pred(sem, modal, amodal=None, conf=None):
  def branch(dets):
    n = len(dets)
    return {"classes": np.array([d[0] for d in dets], np.int32),
            "scores": np.array([d[1] for d in dets], np.float32),
            "boxes": np.zeros((n, 4), np.float32),
            "masks": (np.stack([d[2] for d in dets]) if n else np.zeros((0, H, W), bool))}
  conf = np.ones((H, W), np.float32) if conf is None else conf
  return {"name": "city03/pano_0012", "semantic": sem, "confidence": conf,
          "confidence_code": th.quantize(conf),
          "modal": branch(modal), "amodal": branch(amodal or [])}


def check_against_ref(pred, branch, tau, reject=None):
  got = pl.instance_labels(pred, branch, tau, reject)
  d = pred[branch]
  files, soft, src = ref_instances(pred["semantic"], d["classes"], d["scores"], d["masks"],
                                   {c: v["tau"] for c, v in tau.items()}, reject)
  assert np.array_equal(got["uncertain"], soft == 255)
  ids = {}
  names = []
  for m, c, j in zip(got["masks"], got["classes"], got["det_index"]):
    k = ids.get(int(c), 0)
    ids[int(c)] = k + 1
    names.append((int(c) - 11, k))
    assert np.array_equal(m, files[(int(c) - 11, k)] == 1)
    assert src[(int(c) - 11, k)] == j
  assert sorted(names) == sorted(files)
  assert np.array_equal(got["scores"], d["scores"][got["det_index"]])
  return got


def test_modal_hand_case():
  sem = scene()
  dets = [
      (13, 0.9, box(4, 11, 5, 16)),    # 0 kept as is
      (13, 0.8, box(6, 13, 10, 18)),   # 1 kept, overlaps 0; rows 11-12 and the pole cut off
      (11, 0.1, box(2, 15, 18, 31)),   # 2 low score -> uncertain candidates
      (11, 0.7, box(5, 9, 21, 25)),    # 3 kept, inside 2's area
      (14, 0.9, box(13, 16, 30, 36)),  # 4 on stuff only: empty after clipping, dropped
      (14, 0.5, box(2, 4, 30, 33)),    # 5 score == tau: kept, first truck file
  ]
  pred = make_pred(sem, dets)
  got = check_against_ref(pred, "modal", TAU)
  assert got["det_index"].tolist() == [0, 1, 3, 5]
  assert got["classes"].tolist() == [13, 13, 11, 14]
  assert got["masks"].dtype == bool and got["masks"].shape == (4, H, W)
  assert np.array_equal(got["masks"][1], box(6, 11, 10, 16))
  assert (got["masks"][0] & got["masks"][1]).sum() == 5 * 6  # overlap allowed
  unc = got["uncertain"]
  # Uncertain = thing pixels of det 2's box minus kept masks: the pedestrian (rows 4..12,
  # cols 20..26) minus det 3, and truck column 30 rows 4..5 (rows 2..3 are det 5's);
  # not on the pole/stuff.
  want = (box(4, 13, 20, 27) & ~box(5, 9, 21, 25)) | box(4, 6, 30, 31)
  assert np.array_equal(unc, want)
  assert not unc[3, 22] and not unc[6, 22] and not unc[4, 17]


def test_amodal_clipped_to_any_thing_class():
  sem = scene()
  # A car's amodal mask reaching over the pole (stuff) into the pedestrian (another thing).
  amodal = [(13, 0.4, box(5, 10, 12, 24))]
  pred = make_pred(sem, [], amodal)
  tau = {c: {"tau": 0.3} for c in range(11, 18)}
  got = check_against_ref(pred, "amodal", tau)
  m = got["masks"][0]
  assert np.array_equal(m, box(5, 10, 12, 16) | box(5, 10, 20, 24))
  assert m[7, 22] and not m[7, 17]
  assert not got["uncertain"].any()


def test_reject_hook():
  sem = scene()
  dets = [(13, 0.9, box(4, 11, 5, 16)), (11, 0.9, box(4, 13, 20, 27)), (11, 0.95, box(5, 9, 21, 25))]
  pred = make_pred(sem, dets)
  reject = np.array([False, True, False])
  got = check_against_ref(pred, "modal", TAU, reject)
  assert got["det_index"].tolist() == [0, 2]
  assert np.array_equal(got["uncertain"], box(4, 13, 20, 27) & ~box(5, 9, 21, 25))
  with pytest.raises(ValueError):
    pl.instance_labels(pred, "modal", TAU, np.array([True]))


def test_image_without_detections_first():
  sem = scene()
  preds = [make_pred(sem, []), make_pred(sem, [(11, 0.1, box(4, 13, 20, 27))])]
  first = pl.instance_labels(preds[0], "modal", TAU)
  assert first["masks"].shape == (0, H, W) and first["classes"].shape == (0,)
  assert first["uncertain"].shape == (H, W) and not first["uncertain"].any()
  second = check_against_ref(preds[1], "modal", TAU)
  assert second["uncertain"].sum() == 9 * 7


def test_dropped_empty_mask_does_not_advance_counter(tmp_path):
  sem = scene()
  dets = [(13, 0.9, box(12, 16, 0, 4)),  # stuff only -> dropped
          (13, 0.9, box(4, 8, 5, 9))]
  pred = make_pred(sem, dets)
  got = check_against_ref(pred, "modal", TAU)
  assert got["det_index"].tolist() == [1]
  pl.write_reference_layout(str(tmp_path), pred["name"], sem, got, got)
  assert sorted(os.listdir(tmp_path / "instance" / "city03")) == [
      "pano_0012_cls2_id0.png", "pano_0012_uncertain.png"]


def test_semantic_labels():
  rng = np.random.default_rng(0)
  sem = rng.integers(0, 18, (H, W)).astype(np.uint8)
  sem[:2] = 3  # a class that only has a few values
  codes = rng.choice(np.array([0, 19660, 19661, 32767, 32768, 50000, 65535], np.uint16), (H, W))
  conf = th.dequantize(codes)
  hist = th.SemanticHistogram()
  hist.add(sem, codes)
  for p, t in ((0.8, 0.5), (0.5, 0.3), (0.02, 0.3)):
    tau = hist.thresholds(p, t)
    want = ref_semantic(sem, conf, {c: v["tau"] for c, v in tau.items()})
    pred = {"semantic": sem, "confidence": conf, "confidence_code": codes}
    assert np.array_equal(pl.semantic_labels(pred, tau), want)
    # Float path (no codes) gives the same.
    assert np.array_equal(pl.semantic_labels({"semantic": sem, "confidence": conf}, tau), want)
  # Hand case: tau exactly at a stored value keeps it; just below is ignored.
  tau = {c: {"tau": 0.0, "tau_code": 0} for c in range(18)}
  tau[7] = {"tau": float(th.dequantize(np.uint16(30000))), "tau_code": 30000}
  s = np.array([[7, 7, 8]], np.uint8)
  c = np.array([[30000, 29999, 0]], np.uint16)
  pred = {"semantic": s, "confidence": th.dequantize(c), "confidence_code": c}
  assert pl.semantic_labels(pred, tau).tolist() == [[7, 255, 8]]
  # Float path compares in float64: a tau a hair above the stored value drops it
  # (a float32 comparison would round tau down onto it).
  tau = {c: {"tau": 0.0} for c in range(18)}
  tau[7] = {"tau": float(th.dequantize(np.uint16(30000))) + 1e-12}
  assert np.float32(tau[7]["tau"]) == th.dequantize(np.uint16(30000))
  assert pl.semantic_labels(pred, tau).tolist() == [[255, 255, 8]]


def test_scores_compared_in_float64():
  sem = scene()
  pred = make_pred(sem, [(13, 0.7, box(4, 11, 5, 16))])  # float32(0.7) = 0.699999988...
  tau = {c: {"tau": 0.7} for c in range(11, 18)}
  got = check_against_ref(pred, "modal", tau)
  assert got["masks"].shape[0] == 0 and np.array_equal(got["uncertain"], box(4, 11, 5, 16))
  tau = {c: {"tau": float(np.float32(0.7))} for c in range(11, 18)}
  assert pl.instance_labels(pred, "modal", tau)["det_index"].tolist() == [0]


def test_merged_shards_give_identical_labels():
  rng = np.random.default_rng(1)
  ims = [(rng.integers(0, 18, (H, W)).astype(np.uint8),
          rng.integers(0, 65536, (H, W)).astype(np.uint16)) for _ in range(3)]
  one, a, b = th.SemanticHistogram(), th.SemanticHistogram(), th.SemanticHistogram()
  for k, (s, c) in enumerate(ims):
    one.add(s, c)
    (a if k % 2 else b).add(s, c)
  a.merge(b)
  t1, t2 = one.thresholds(0.8, 0.5), a.thresholds(0.8, 0.5)
  for s, c in ims:
    pred = {"semantic": s, "confidence": th.dequantize(c), "confidence_code": c}
    assert np.array_equal(pl.semantic_labels(pred, t1), pl.semantic_labels(pred, t2))


def _labels_for_files():
  sem = scene()
  modal = [(13, 0.9, box(4, 11, 5, 16)), (13, 0.8, box(6, 13, 10, 18)),
           (11, 0.1, box(2, 15, 18, 31)), (11, 0.7, box(5, 9, 21, 25))]
  amodal = [(13, 0.4, box(5, 10, 12, 24)), (14, 0.1, box(1, 7, 28, 38))]
  pred = make_pred(sem, modal, amodal)
  semantic = sem.copy()
  semantic[0, :5] = 255
  return (pred, semantic, pl.instance_labels(pred, "modal", TAU),
          pl.instance_labels(pred, "amodal", {c: {"tau": 0.3} for c in range(11, 18)}))


def ref_load(folder, stem, uncertain_name):
  """LoadAmodalSoftLabels (loading.py L431-446) with the per-class id order made explicit."""
  unc = np.array(Image.open(os.path.join(folder, uncertain_name)))
  out = {}
  for i in range(11, 18):
    fs = glob.glob(os.path.join(folder, f"{stem}_cls{i - 11}_*.png"))
    for f in sorted(fs, key=lambda f: int(re.search(r"_id(\d+)\.png$", f).group(1))):
      m = np.array(Image.open(f), dtype=np.uint8)
      k = int(re.search(r"_id(\d+)\.png$", f).group(1))
      m[(unc == 255) & (m != 1)] = 255
      out[(i, k)] = m
  return out


def test_reference_layout_files(tmp_path):
  pred, semantic, modal, amodal = _labels_for_files()
  root = str(tmp_path)
  pl.write_reference_layout(root, "city03/pano_0012", semantic, modal, amodal)
  im = Image.open(tmp_path / "semantic" / "city03" / "pano_0012.png")
  assert im.mode == "P" and im.size == (W, H)
  assert np.array_equal(np.array(im), semantic)
  assert im.getpalette()[:54] == labels.PALETTE[:18].ravel().tolist()
  assert sorted(os.listdir(tmp_path / "instance" / "city03")) == [
      "pano_0012_cls0_id0.png", "pano_0012_cls2_id0.png", "pano_0012_cls2_id1.png",
      "pano_0012_uncertain.png"]
  assert sorted(os.listdir(tmp_path / "amodal_instance" / "city03")) == [
      "pano_0012_cls2_id0.png", "pano_0012_uncertain.png"]
  m = Image.open(tmp_path / "instance" / "city03" / "pano_0012_cls2_id1.png")
  assert m.mode == "L" and np.array_equal(np.array(m), modal["masks"][1].astype(np.uint8))
  u = np.array(Image.open(tmp_path / "instance" / "city03" / "pano_0012_uncertain.png"))
  assert set(np.unique(u)) == {0, 255} and np.array_equal(u == 255, modal["uncertain"])
  ua = np.array(Image.open(tmp_path / "amodal_instance" / "city03" / "pano_0012_uncertain.png"))
  assert np.array_equal(ua == 255, box(2, 6, 30, 37))  # the low-score truck on truck pixels
  assert np.array_equal(ua == 255, amodal["uncertain"])

  # Rewriting with fewer masks removes the stale file; an image without detections
  # still gets its folders and uncertain PNGs.
  empty = {"masks": np.zeros((0, H, W), bool), "classes": np.zeros(0, np.int32),
           "scores": np.zeros(0, np.float32), "det_index": np.zeros(0, np.int32),
           "uncertain": np.zeros((H, W), bool)}
  pl.write_reference_layout(root, "city03/pano_0012", semantic, empty, amodal)
  assert os.listdir(tmp_path / "instance" / "city03") == ["pano_0012_uncertain.png"]
  pl.write_reference_layout(root, "city07/pano_0001", semantic, empty, empty)
  for folder in ("instance", "amodal_instance"):
    assert os.listdir(tmp_path / folder / "city07") == ["pano_0001_uncertain.png"]
  # Names of a folder of one's own panoramas keep their relative path, any depth.
  pl.write_reference_layout(root, "pano 1.jpg", semantic, empty, amodal)
  pl.write_reference_layout(root, "trip/day 2/pano.png", semantic, modal, empty)
  assert np.array_equal(np.array(Image.open(tmp_path / "semantic" / "pano 1.jpg.png")), semantic)
  assert sorted(f for f in os.listdir(tmp_path / "amodal_instance") if "pano 1" in f) == [
      "pano 1.jpg_cls2_id0.png", "pano 1.jpg_uncertain.png"]
  assert sorted(os.listdir(tmp_path / "instance" / "trip" / "day 2")) == [
      "pano.png_cls0_id0.png", "pano.png_cls2_id0.png", "pano.png_cls2_id1.png",
      "pano.png_uncertain.png"]
  assert os.path.isfile(tmp_path / "semantic" / "trip" / "day 2" / "pano.png.png")
  for bad in ("", "/abs/x.jpg", "a//b.jpg", "../x.jpg", "a/./b.jpg"):
    with pytest.raises(ValueError, match="relative path"):
      pl.write_reference_layout(root, bad, semantic, empty, empty)


def test_packed_round_trip_matches_reference_loader(tmp_path):
  pred, semantic, modal, amodal = _labels_for_files()
  # Make the 255 rule bite: an uncertain area crossing a kept mask and the background.
  modal = dict(modal, uncertain=modal["uncertain"] | box(0, 6, 0, 10))
  root = str(tmp_path / "ref")
  pl.write_reference_layout(root, pred["name"], semantic, modal, amodal)
  path = str(tmp_path / "packed" / "city03" / "pano_0012.npz")
  packed_labels.write_packed(path, pred["name"], semantic, modal, amodal)
  got = packed_labels.load_packed(path)
  assert got["name"] == "city03/pano_0012"
  assert got["semantic"].dtype == np.uint8 and np.array_equal(got["semantic"], semantic)
  for branch, folder, inst in (("modal", "instance", modal), ("amodal", "amodal_instance", amodal)):
    g = got[branch]
    assert g["classes"].dtype == np.int32 and np.array_equal(g["classes"], inst["classes"])
    assert g["scores"].dtype == np.float32 and np.array_equal(g["scores"], inst["scores"])
    assert g["masks"].dtype == np.uint8 and g["masks"].shape == inst["masks"].shape
    ref = ref_load(os.path.join(root, folder, "city03"), "pano_0012", "pano_0012_uncertain.png")
    ids = {}
    for m, c in zip(g["masks"], g["classes"]):
      k = ids.get(int(c), 0)
      ids[int(c)] = k + 1
      assert np.array_equal(m, ref.pop((int(c), k)))
    assert not ref
  m0 = got["modal"]["masks"][0]  # the first car, rows 4..10 x 5..15
  assert m0[5, 7] == 1 and m0[3, 7] == 255 and m0[7, 7] == 1 and m0[12, 5] == 0 and m0[8, 20] == 255
  assert set(np.unique(m0)) == {0, 1, 255}
  raw = packed_labels.load_packed(path, ignore_uncertain=False)
  assert np.array_equal(raw["modal"]["masks"], modal["masks"].astype(np.uint8))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
def test_corrupt_packed_file(tmp_path, damage):
  pred, semantic, modal, amodal = _labels_for_files()
  data = packed_labels.pack_labels(pred["name"], semantic, modal, amodal)
  if damage == "truncate":
    data = data[:len(data) // 2]
  elif damage == "garbage":
    data = b"not a zip file" * 10
  elif damage == "flip":
    b = bytearray(data)
    for i in range(len(b) // 3, len(b) // 3 + 16):
      b[i] ^= 0xFF
    data = bytes(b)
  else:
    data = b""
  path = str(tmp_path / "x.npz")
  with open(path, "wb") as f:
    f.write(data)
  with pytest.raises(ValueError, match=r"x\.npz.*delete it and rerun the opll"):
    packed_labels.load_packed(path)
