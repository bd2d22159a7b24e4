"""ADCL pool (docs/method.md §6) against a direct transcription of the reference loop,
on hand-built and random tiny panoramas; shard/index round trips; the index
memory-mapped; reference PNGs."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.support.fake_gcs import gcs  # pylint: disable=unused-import  (the fixture)
from unlock_jax.data import pool_index
from unlock_jax.pseudo import pool

TAU = {11: {"tau": 0.9}, 12: {"tau": 0.5}, 13: {"tau": 0.5}, 14: {"tau": 0.7},
       15: {"tau": 0.7}, 16: {"tau": 0.7}, 17: {"tau": 0.7}}


def _oracle(semantic, classes, scores, masks, tau):
  """Save_ADCL_Pool.py L161-195, written out with the reference's arrays."""
  sem_mask = np.zeros(semantic.shape, np.uint8)
  for t in range(7):
    sem_mask[semantic == t + 11] = 1
  allmask = np.zeros(semantic.shape, np.int64)
  for c, s, m in zip(classes, scores, masks):
    if s >= tau[c]["tau"]:
      allmask += m
  allmask = allmask * sem_mask
  allmask[allmask > 1] = 255
  k = {i: 0 for i in range(7)}
  out = []
  for j, (c, s, m) in enumerate(zip(classes, scores, masks)):
    if s < tau[c]["tau"]:
      continue
    m = (m.astype(np.uint8) & sem_mask) * allmask
    if not np.count_nonzero(m):
      continue
    if np.sum(m == 255) * 2 > np.count_nonzero(m):
      continue
    out.append((c, j, m.astype(np.uint8), k[c - 11]))
    k[c - 11] += 1
  return out


def _rect(h, w, rows, cols):
  m = np.zeros((h, w), bool)
  m[rows[0]:rows[1], cols[0]:cols[1]] = True
  return m


def _pred(name, semantic, classes, scores, masks):
  n = len(classes)
  return {"name": name, "semantic": semantic.astype(np.uint8),
          "amodal": {"classes": np.asarray(classes, np.int32),
                     "scores": np.asarray(scores, np.float32),
                     "boxes": np.zeros((n, 4), np.float32),
                     "masks": np.asarray(masks, bool).reshape((n,) + semantic.shape)}}


def _hand_case():
  h, w = 4, 12
  sem = np.full((h, w), 13, np.uint8)
  sem[:, 10] = 11   # another thing class: still inside T
  sem[:, 11] = 2    # building: stuff, clips every mask
  dets = [
      (13, 0.9, _rect(h, w, (0, 2), (0, 2))),    # 0: 4 px, 2 shared with 1 → exactly half, kept
      (13, 0.9, _rect(h, w, (0, 2), (1, 4))),    # 1: 6 px, 2 shared → kept
      (13, 0.3, _rect(h, w, (0, 2), (0, 4))),    # 2: below tau: not counted in A
      (11, 0.95, _rect(h, w, (2, 3), (5, 10))),  # 3: 5 px, 3 shared with 4 → rejected
      (11, 0.9, _rect(h, w, (2, 4), (7, 12))),   # 4: score == tau; col 11 clipped → 8 px, 3 shared
      (12, 0.99, _rect(h, w, (0, 4), (11, 12))),  # 5: all on stuff → empty, overlap with 4 gone
      (11, 0.92, _rect(h, w, (3, 4), (0, 4))),   # 6: alone → kept, k=1
      (12, 0.6, _rect(h, w, (2, 4), (4, 5))),    # 7: kept, k=0 (5 did not count)
  ]
  cls, sc, ms = zip(*dets)
  return _pred("city/pano", sem, cls, sc, np.stack(ms))


def test_hand_case_matches_hand_values_and_oracle():
  pred = _hand_case()
  got = pool.pool_entries(pred, TAU)
  assert [(e["class_id"], e["det_index"], e["k"]) for e in got] == [
      (13, 0, 0), (13, 1, 1), (11, 4, 0), (11, 6, 1), (12, 7, 0)]
  m0 = np.zeros((4, 12), np.uint8)
  m0[0:2, 0] = 1
  m0[0:2, 1] = 255
  np.testing.assert_array_equal(got[0]["mask"], m0)
  m1 = np.zeros((4, 12), np.uint8)
  m1[0:2, 1] = 255
  m1[0:2, 2:4] = 1
  np.testing.assert_array_equal(got[1]["mask"], m1)
  m4 = np.zeros((4, 12), np.uint8)
  m4[2:4, 7:11] = 1
  m4[2, 7:10] = 255
  np.testing.assert_array_equal(got[2]["mask"], m4)
  assert got[2]["score"] == pytest.approx(0.9)
  for e in got:
    assert e["mask"].dtype == np.uint8 and e["mask"].shape == (4, 12)

  a = pred["amodal"]
  want = _oracle(pred["semantic"], a["classes"].tolist(), a["scores"], a["masks"], TAU)
  assert [(c, j, k) for c, j, _, k in want] == [(e["class_id"], e["det_index"], e["k"]) for e in got]
  for (_, _, m, _), e in zip(want, got):
    np.testing.assert_array_equal(e["mask"], m)

  # Thresholds read back from JSON have string keys.
  as_json = json.loads(json.dumps({str(c): v for c, v in TAU.items()}))
  assert len(pool.pool_entries(pred, as_json)) == 5


def test_low_score_detection_would_reject_if_counted():
  # With det 2 confident, det 0 is entirely shared and det 1 becomes 6 of 6 shared.
  pred = _hand_case()
  tau = {**TAU, 13: {"tau": 0.2}}
  got = pool.pool_entries(pred, tau)
  assert [e["det_index"] for e in got if e["class_id"] == 13] == []
  a = pred["amodal"]
  assert [(c, j, k) for c, j, _, k in _oracle(pred["semantic"], a["classes"].tolist(),
                                             a["scores"], a["masks"], tau)] == \
      [(e["class_id"], e["det_index"], e["k"]) for e in got]


def _random_pred(rng, name, h=10, w=24, n=9):
  sem = rng.integers(0, 18, (h, w)).astype(np.uint8)
  sem[rng.random((h, w)) < 0.5] = 13  # mostly things
  classes = rng.integers(11, 18, n)
  scores = rng.random(n).astype(np.float32)
  masks = np.stack([_rect(h, w, sorted(rng.integers(0, h + 1, 2)), sorted(rng.integers(0, w + 1, 2)))
                    for _ in range(n)]) if n else np.zeros((0, h, w), bool)
  return _pred(name, sem, classes, scores, masks)


def test_random_panoramas_match_oracle():
  rng = np.random.default_rng(0)
  tau = {c: {"tau": 0.3} for c in range(11, 18)}
  total = 0
  for i in range(20):
    pred = _random_pred(rng, f"c/p{i}")
    a = pred["amodal"]
    want = _oracle(pred["semantic"], a["classes"].tolist(), a["scores"], a["masks"], tau)
    got = pool.pool_entries(pred, tau)
    assert [(c, j, k) for c, j, _, k in want] == [(e["class_id"], e["det_index"], e["k"]) for e in got]
    for (_, _, m, _), e in zip(want, got):
      np.testing.assert_array_equal(e["mask"], m)
    total += len(got)
  assert total > 20  # the random cases do exercise the pool


def test_no_confident_detection():
  pred = _hand_case()
  low = {c: {"tau": 1.0} for c in range(11, 18)}
  assert pool.pool_entries(pred, low) == []
  empty = _pred("city/none", pred["semantic"], [], [], np.zeros((0, 4, 12), bool))
  assert pool.pool_entries(empty, TAU) == []


def test_reference_png_names_and_values(tmp_path):
  pred = _hand_case()
  entries = pool.pool_entries(pred, TAU)
  paths = pool.write_reference(str(tmp_path), "city/pano", entries)
  folder = tmp_path / "amodal_instance" / "city"
  assert sorted(os.listdir(folder)) == sorted(
      ["pano_cls2_id0.png", "pano_cls2_id1.png", "pano_cls0_id0.png", "pano_cls0_id1.png",
       "pano_cls1_id0.png"])
  assert [os.path.basename(p) for p in paths] == [
      "pano_cls2_id0.png", "pano_cls2_id1.png", "pano_cls0_id0.png", "pano_cls0_id1.png",
      "pano_cls1_id0.png"]
  for p, e in zip(paths, entries):
    with Image.open(p) as im:
      assert im.mode == "L"
      np.testing.assert_array_equal(np.array(im), e["mask"])
  assert set(np.unique(np.array(Image.open(paths[2])))) == {0, 1, 255}


def _tight(m):
  ys, xs = np.nonzero(m)
  return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def _write_case(tmp_path):
  """Three panoramas (one empty) written in non-sorted order; returns {name: (image, entries)}."""
  rng = np.random.default_rng(6)
  tau = {c: {"tau": 0.2} for c in range(11, 18)}
  cases = {}
  for name in ["b/x1", "a/y2", "a/y1"]:
    pred = _random_pred(rng, name, n=0 if name == "a/y2" else 9)
    image = rng.integers(0, 256, (10, 24, 3), dtype=np.uint8)
    entries = pool.pool_entries(pred, tau)
    cases[name] = (image, entries)
    pool.write_shard(pool.shard_path(str(tmp_path / "shards"), name),
                     pool.entry_record(name, image, entries))
  assert cases["a/y2"][1] == [] and cases["a/y1"][1] and cases["b/x1"][1]
  return cases


def test_index_round_trip_and_order(tmp_path):
  cases = _write_case(tmp_path)
  shards = [pool.shard_path(str(tmp_path / "shards"), n) for n in ["b/x1", "a/y2", "a/y1"]]
  assert all(os.path.isfile(p) for p in shards)
  empty = pool.read_shard(shards[1])
  assert empty["classes"].shape == (0,) and empty["extents"].shape == (0, 4)

  out = str(tmp_path / "pool.npz")
  summary = pool.build_index(shards, out)
  idx = pool_index.PoolIndex.load(out)
  order = [(n, e) for n in sorted(cases) for e in cases[n][1]]
  assert summary["panoramas"] == 3 and summary["entries"] == len(idx) == len(order)
  assert sum(summary["per_class"].values()) == len(order)
  assert idx.image_size == (10, 24)
  crop_bytes = 0
  for j, (n, e) in enumerate(order):
    image = cases[n][0]
    y0, y1, x0, x1 = _tight(e["mask"])
    assert idx.name(j) == n and idx.class_id(j) == e["class_id"]
    assert idx.extent(j) == (y0, y1, x0, x1)
    np.testing.assert_array_equal(idx.extents[j], [y0, y1, x0, x1])
    assert idx.classes[j] == e["class_id"]
    np.testing.assert_array_equal(idx.mask(j), e["mask"][y0:y1, x0:x1])
    np.testing.assert_array_equal(idx.rgb(j), image[y0:y1, x0:x1])
    np.testing.assert_array_equal(idx.full_mask(j, 10, 24), e["mask"])
    rgb = np.zeros_like(image)
    rgb[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    np.testing.assert_array_equal(idx.full_rgb(j), rgb)
    assert idx.mask(j).dtype == np.uint8 and not idx.mask(j).flags.writeable
    crop_bytes += 4 * (y1 - y0) * (x1 - x0)
  assert idx.nbytes >= crop_bytes

  # Shard order on the command line does not matter.
  out2 = str(tmp_path / "pool2.npz")
  pool.build_index(shards[::-1], out2)
  idx2 = pool_index.PoolIndex.load(out2)
  assert list(idx2.names) == list(idx.names)
  np.testing.assert_array_equal(idx2.extents, idx.extents)


def test_index_of_empty_shards_only(tmp_path):
  image = np.zeros((4, 12, 3), np.uint8)
  path = str(tmp_path / "s.npz")
  pool.write_shard(path, pool.entry_record("c/e", image, []))
  pool.build_index([path], str(tmp_path / "pool.npz"))
  idx = pool_index.PoolIndex.load(str(tmp_path / "pool.npz"))
  assert len(idx) == 0 and idx.extents.shape == (0, 4) and idx.image_size == (4, 12)


def test_corrupt_index_and_shard(tmp_path):
  cases = _write_case(tmp_path)
  shards = [pool.shard_path(str(tmp_path / "shards"), n) for n in cases]
  out = str(tmp_path / "pool.npz")
  pool.build_index(shards, out)
  data = open(out, "rb").read()

  bad = str(tmp_path / "truncated.npz")
  with open(bad, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"truncated\.npz.*delete it and rerun the adcl_pool stage"):
    pool_index.PoolIndex.load(bad)
  with pytest.raises(ValueError, match="adcl_pool"):
    pool.read_shard(bad)

  garbage = str(tmp_path / "garbage.npz")
  with open(garbage, "wb") as f:
    f.write(b"not a zip file at all")
  with pytest.raises(ValueError, match="garbage.npz"):
    pool_index.PoolIndex.load(garbage)

  # A readable file whose offsets disagree with the boxes.
  with np.load(out) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["mask_offsets"] = arrays["mask_offsets"].copy()
  arrays["mask_offsets"][1] += 1
  inconsistent = str(tmp_path / "inconsistent.npz")
  np.savez(inconsistent, **arrays)
  with pytest.raises(ValueError, match="inconsistent.npz.*mask_offsets"):
    pool_index.PoolIndex.load(inconsistent)

  with pytest.raises(FileNotFoundError, match="adcl_pool"):
    pool_index.PoolIndex.load(str(tmp_path / "missing.npz"))


def _index_entries(idx):
  return [(idx.name(j), idx.class_id(j), idx.score(j), idx.extent(j),
           idx.mask(j).tolist(), idx.rgb(j).tolist()) for j in range(len(idx))]


def _npz_entries(arrays):
  """The entries of an index read with numpy's own reader (the oracle)."""
  out = []
  for j, (y0, y1, x0, x1) in enumerate(arrays["extents"].tolist()):
    m0, m1 = arrays["mask_offsets"][j:j + 2]
    r0, r1 = arrays["rgb_offsets"][j:j + 2]
    out.append((str(arrays["names"][j]), int(arrays["classes"][j]), float(arrays["scores"][j]),
                (y0, y1, x0, x1), arrays["mask_data"][m0:m1].reshape(y1 - y0, x1 - x0).tolist(),
                arrays["rgb_data"][r0:r1].reshape(y1 - y0, x1 - x0, 3).tolist()))
  return out


def _built_index(tmp_path):
  """The index of ``_write_case``: its path and its arrays read by ``np.load``."""
  cases = _write_case(tmp_path)
  out = str(tmp_path / "pool.npz")
  pool.build_index([pool.shard_path(str(tmp_path / "shards"), n) for n in cases], out)
  with np.load(out) as z:
    return out, {k: z[k] for k in z.files}


def test_index_is_memory_mapped_not_read(tmp_path):
  out, want = _built_index(tmp_path)
  idx = pool_index.PoolIndex.load(out)
  assert _index_entries(idx) == _npz_entries(want) and len(idx) > 1

  # Every array is a read-only map of the file; the crops are views into it.
  for a in (idx.classes, idx.extents, idx.names, idx.mask(0), idx.rgb(1)):
    assert isinstance(a, np.memmap) and not a.flags.writeable
  # Not a copy: bytes changed in the file after loading show through.
  rgb = want["rgb_data"]
  with open(out, "r+b") as f:
    data = f.read()
    at = data.find(rgb.tobytes())
    assert at > 0 and data.find(rgb.tobytes(), at + 1) < 0
    f.seek(at)
    f.write((255 - rgb).tobytes())
  y0, y1, x0, x1 = idx.extent(0)
  np.testing.assert_array_equal(
      idx.rgb(0), 255 - want["rgb_data"][:3 * (y1 - y0) * (x1 - x0)].reshape(y1 - y0, x1 - x0, 3))


def test_compressed_index_of_an_earlier_version_still_loads(tmp_path):
  out, want = _built_index(tmp_path)
  old = str(tmp_path / "old.npz")
  np.savez_compressed(old, **want)
  idx = pool_index.PoolIndex.load(old)
  assert _index_entries(idx) == _npz_entries(want)
  assert not isinstance(idx.rgb(0), np.memmap) and not idx.rgb(0).flags.writeable


def test_url_index_is_mapped_from_one_local_copy(tmp_path, gcs):
  out, want = _built_index(tmp_path)
  url = f"{gcs.bucket}/run/adcl_pool/pool_index.npz"
  gcs.write(url, open(out, "rb").read())
  local = pool_index.local_copy(url)
  assert pool_index.local_copy(url) == local and not local.startswith("gs://")
  assert open(local, "rb").read() == open(out, "rb").read()
  assert isinstance(pool_index.PoolIndex.load(local).rgb(0), np.memmap)
  assert pool_index.local_copy(out) == out
  # Loaded straight from the URL, the index is read into memory.
  assert _index_entries(pool_index.PoolIndex.load(url)) == _npz_entries(want)
