"""OPLL thresholds (docs/method.md §5.1): streaming accumulators, and the two-level passes the
stage uses, against a sort-and-index oracle and the full histogram."""
import json

import numpy as np
import pytest

from unlock_jax.data import labels
from unlock_jax.pseudo import thresholds as th


def oracle(values, p, t):
  """§5.1 literally: sort, Python's round (half-even), clamp, min with t."""
  x = sorted(float(v) for v in np.asarray(values, np.float64).ravel())
  n = len(x)
  if n == 0:
    return {"tau": 0.0, "count": 0, "quantile": None}
  i = min(round(n * (1 - p)), n - 1)
  return {"tau": min(t, x[i]), "count": n, "quantile": x[i]}


# (n, p, index of the quantile in the sorted values), worked out by hand.
HAND = [
    (1, 0.1, 0), (2, 0.1, 1), (3, 0.1, 2), (4, 0.1, 3),  # round(n*0.9) == n: clamp
    (1, 0.3, 0), (2, 0.3, 1), (3, 0.3, 2),               # 0.7 -> 1 clamped; 1.4; 2.1
    (5, 0.8, 1),    # 5 * 0.19999999999999996 = 0.9999999999999998 -> 1
    (5, 0.5, 2), (3, 0.5, 2), (1, 0.5, 0), (7, 0.5, 4),  # half-even: 2.5, 1.5, 0.5, 3.5
    (5, 0.1, 4), (5, 0.3, 4),                            # 4.5 -> 4; 3.5 -> 4
    (15, 0.9, 1),   # 15 * 0.09999999999999998 = 1.4999999999999996 -> 1 (exact 1.5 -> 2)
]


@pytest.mark.parametrize("n,p,index", HAND)
def test_hand_cases(n, p, index):
  rng = np.random.default_rng(n)
  codes = np.array([1000 + 2000 * k for k in range(n)], np.uint16)  # distinct, ascending
  x = th.dequantize(codes).astype(np.float64)
  perm = rng.permutation(n)
  # Semantic: class 4 only.
  h = th.SemanticHistogram()
  h.add(np.full((1, n), 4, np.uint8), codes[perm][None])
  got = h.thresholds(p, 1.0)[4]
  assert got["count"] == n and got["quantile"] == x[index] and got["tau"] == x[index]
  assert got["tau_code"] == codes[index]
  # Instances: class 13 only; the scores are the same float32 values.
  s = th.ScoreLists()
  s.add(np.full(n, 13), x[perm].astype(np.float32))
  got = s.thresholds(p, 1.0)[13]
  assert got == {"tau": x[index], "count": n, "quantile": x[index]}
  assert got == oracle(x, p, 1.0)
  # The cap wins when below the quantile.
  assert s.thresholds(p, 0.01)[13]["tau"] == 0.01


def _random_image(rng, h=16, w=40, n_codes=40):
  """Semantic with empty (3, 7), tiny (n = 1..4: classes 0, 1, 2, 12) and big classes;
  few distinct codes, so many ties."""
  big = np.array([5, 6, 8, 10, 11, 13, 15, 17])
  sem = rng.choice(big, size=(h, w)).astype(np.uint8)
  flat = sem.reshape(-1)
  for cls, n in ((0, 1), (1, 2), (2, 3), (12, 4)):
    flat[rng.choice(flat.size, n, replace=False)] = cls
  palette = np.sort(rng.choice(65536, n_codes, replace=False)).astype(np.uint16)
  codes = rng.choice(palette, size=(h, w)).astype(np.uint16)
  return sem, codes


@pytest.mark.parametrize("p,t", [(0.8, 0.5), (0.3, 0.5), (0.5, 0.3), (0.1, 0.95), (0.1, 0.3)])
def test_histogram_matches_oracle_on_all_pixels(p, t):
  rng = np.random.default_rng(0)
  sem, codes = _random_image(rng)
  h = th.SemanticHistogram()
  h.add(sem, codes)
  got = h.thresholds(p, t)
  values = th.dequantize(codes).astype(np.float64)
  for cls in range(labels.NUM_CLASSES):
    want = oracle(values[sem == cls], p, t)
    assert {k: got[cls][k] for k in want} == want, cls
  assert got[3]["tau"] == 0.0 and got[3]["quantile"] is None and got[3]["tau_code"] == 0
  assert got[0]["count"] == 1 and got[12]["count"] == 4


@pytest.mark.parametrize("t", [0.3, 0.5, 0.95, 0.1, 1 / 3])
def test_tau_code_equals_float64_comparison(t):
  # Spread codes so the quantile exceeds t in most classes: tau = t, not exact in float32.
  rng = np.random.default_rng(1)
  sem, _ = _random_image(rng)
  codes = rng.integers(0, 65536, sem.shape).astype(np.uint16)
  h = th.SemanticHistogram()
  h.add(sem, codes)
  all_codes = np.arange(65536)
  all_values = th.dequantize(all_codes).astype(np.float64)
  got = h.thresholds(0.02, t)  # quantile ~0.98 in the big classes
  assert any(v["tau"] == t for v in got.values())
  for cls, v in got.items():
    want_keep = all_values >= v["tau"]
    assert np.array_equal(all_codes >= v["tau_code"], want_keep), cls
    assert v["tau_code"] == np.flatnonzero(want_keep)[0]


def test_histogram_valid_mask_and_bad_input():
  rng = np.random.default_rng(2)
  sem, codes = _random_image(rng)
  valid = rng.random(sem.shape) < 0.5
  h = th.SemanticHistogram()
  h.add(sem, codes, valid)
  values = th.dequantize(codes).astype(np.float64)
  got = h.thresholds(0.8, 0.5)
  for cls in range(labels.NUM_CLASSES):
    want = oracle(values[(sem == cls) & valid], 0.8, 0.5)
    assert {k: got[cls][k] for k in want} == want
  with pytest.raises(ValueError):
    h.add(np.full((2, 2), 18, np.uint8), np.zeros((2, 2), np.uint16))
  with pytest.raises(ValueError):
    h.add(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.float32))


def test_shards_merge_to_the_same_thresholds():
  rng = np.random.default_rng(3)
  images = [_random_image(rng) for _ in range(4)]
  dets = [(rng.choice([11, 13, 13, 16], size=n), np.round(rng.random(n), 2).astype(np.float32))
          for n in (5, 0, 3, 7)]
  one_h, one_s = th.SemanticHistogram(), th.ScoreLists()
  shards = [(th.SemanticHistogram(), th.ScoreLists()) for _ in range(2)]
  for k, ((sem, codes), (cls, sc)) in enumerate(zip(images, dets)):
    one_h.add(sem, codes)
    one_s.add(cls, sc)
    shards[k % 2][0].add(sem, codes)
    shards[k % 2][1].add(cls, sc)
  shards[0][0].merge(shards[1][0])
  shards[0][1].merge(shards[1][1])
  for p, t in ((0.8, 0.5), (0.3, 0.5), (0.5, 0.3)):
    assert shards[0][0].thresholds(p, t) == one_h.thresholds(p, t)
    assert shards[0][1].thresholds(p, t) == one_s.thresholds(p, t)
  # Resume from saved state.
  h2 = th.SemanticHistogram.from_state(one_h.state())
  s2 = th.ScoreLists.from_state(one_s.state())
  assert h2.thresholds(0.8, 0.5) == one_h.thresholds(0.8, 0.5)
  assert s2.thresholds(0.3, 0.5) == one_s.thresholds(0.3, 0.5)


def test_score_lists_against_oracle():
  rng = np.random.default_rng(4)
  classes = rng.choice([11, 13, 14, 17], size=60)
  classes[:2] = 12  # tiny class, n = 2
  scores = np.round(rng.random(60), 1).astype(np.float32)  # ties; 0.3 etc. not exact
  s = th.ScoreLists()
  s.add(classes[:30], scores[:30])
  s.add(classes[30:], scores[30:])
  for p, t in ((0.3, 0.5), (0.5, 0.3), (0.1, 0.95)):
    got = s.thresholds(p, t)
    assert sorted(got) == list(range(11, 18))
    for cls in range(11, 18):
      assert got[cls] == oracle(scores[classes == cls].astype(np.float64), p, t), cls
    assert got[15] == {"tau": 0.0, "count": 0, "quantile": None}
  with pytest.raises(ValueError):
    s.add(np.array([10]), np.array([0.5], np.float32))


def test_json_round_trip():
  s = th.ScoreLists()
  s.add(np.array([11, 11, 13]), np.array([0.3, 0.7, 0.9], np.float32))
  got = s.thresholds(0.3, 0.5)
  j = json.loads(json.dumps(th.to_json(got)))
  assert j["13"]["name"] == "car" and j["11"]["name"] == "pedestrians"
  assert j["12"] == {"tau": 0.0, "count": 0, "quantile": None, "name": "cyclists"}
  assert th.from_json(j) == got


def _dense(h):
  """The flat [18 * 65536] counts of a sparse histogram, by a Python loop."""
  out = np.zeros(18 * 65536, np.int64)
  for k, c in zip(h[0].tolist(), h[1].tolist()):
    out[k] += c
  return out


def test_sparse_histogram_and_add_sparse_equal_add():
  rng = np.random.default_rng(5)
  images = [_random_image(rng) for _ in range(3)]
  images.append(_random_image(rng, n_codes=2))  # two codes: every bin a tie
  sem, codes = _random_image(rng)
  codes[:] = 65535  # saturated, one code
  images.append((sem, codes))
  images.append((np.zeros((3, 5), np.uint8), np.zeros((3, 5), np.uint16)))  # key 0 only
  dense, sparse = th.SemanticHistogram(), th.SemanticHistogram()
  for sem, codes in images:
    h = th.sparse_histogram(sem, codes)
    assert h.dtype == np.int64 and h.shape[0] == 2
    assert (np.diff(h[0]) > 0).all() and (h[1] >= 1).all() and h[1].sum() == sem.size
    want = np.zeros(18 * 65536, np.int64)
    np.add.at(want, sem.ravel().astype(np.int64) * 65536 + codes.ravel(), 1)
    np.testing.assert_array_equal(_dense(h), want)
    dense.add(sem, codes)
    sparse.add_sparse(*h)
    np.testing.assert_array_equal(sparse.counts, dense.counts)
  assert not dense.counts[3].any() and not dense.counts[7].any()  # empty classes stay empty
  for p, t in ((0.8, 0.5), (0.3, 0.5), (0.1, 0.95), (0.5, 0.999)):
    assert sparse.thresholds(p, t) == dense.thresholds(p, t)


def test_sparse_histogram_unique_path_and_edge_cases():
  rng = np.random.default_rng(6)
  sem, codes = _random_image(rng)
  sem[0, :3] = 255  # ignore labels: a key range far beyond the image, so np.unique
  h = th.sparse_histogram(sem, codes)
  u, c = np.unique(sem.astype(np.int64) * 65536 + codes, return_counts=True)
  np.testing.assert_array_equal(h, np.stack([u, c]))
  assert h[0, -1] // 65536 == 255
  with pytest.raises(ValueError, match="0..17"):  # as add() rejects class 255
    th.SemanticHistogram().add_sparse(*h)
  empty = th.sparse_histogram(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint16))
  assert empty.shape == (2, 0)
  with pytest.raises(ValueError, match="uint16"):
    th.sparse_histogram(sem, codes.astype(np.int32))
  with pytest.raises(ValueError, match="differ"):
    th.sparse_histogram(sem[:2], codes)


def test_add_sparse_repeated_keys_and_bad_input():
  s = th.SemanticHistogram()
  s.add_sparse(np.array([5, 5, 65536 * 17 + 65535]), np.array([2, 3, 1], np.uint32))
  s.add_sparse(np.zeros(0, np.int64), np.zeros(0, np.int64))
  assert s.counts[0, 5] == 5 and s.counts[17, 65535] == 1 and s.counts.sum() == 6
  for keys, counts, match in ((np.array([-1]), np.array([1]), "0..17"),
                              (np.array([18 * 65536]), np.array([1]), "0..17"),
                              (np.array([1]), np.array([-1]), "non-negative"),
                              (np.array([1.0]), np.array([1]), "integers"),
                              (np.array([1, 2]), np.array([1]), r"\[K\]")):
    with pytest.raises(ValueError, match=match):
      s.add_sparse(keys, counts)
  assert s.counts.sum() == 6


# ------------------------------------------------------ two-level quantiles


def _two_level(hists, p, shards=1):
  """The two passes over sparse histograms (``shards`` accumulators merged per pass)."""
  coarse = [th.BlockCounts() for _ in range(shards)]
  for k, h in enumerate(hists):
    coarse[k % shards].add(th.sparse_blocks(h[0], h[1]))
  for c in coarse[1:]:
    coarse[0].merge(c)
  blocks, _ = coarse[0].locate(p)
  fine = [th.FineCounts(blocks) for _ in range(shards)]
  for k, h in enumerate(hists):
    fine[k % shards].add(th.sparse_fine(h[0], h[1], blocks))
  for f in fine[1:]:
    fine[0].merge(f)
  return th.SemanticQuantiles(coarse[0], fine[0], p)


def _images_across_blocks(rng):
  """Random images whose codes straddle block edges (1023/1024, 0, 65535), with ties,
  empty classes (3, 7), tiny ones (0, 1, 2, 12) and big ones."""
  images = []
  edges = np.array([0, 1, 1022, 1023, 1024, 1025, 2047, 2048, 40000, 64511, 64512, 65535])
  for k in range(5):
    sem, codes = _random_image(rng, n_codes=[40, 2, 300, 5, 12][k])
    if k % 2:
      codes = rng.choice(edges, size=codes.shape).astype(np.uint16)
    images.append((sem, codes))
  sem, codes = _random_image(rng)
  codes[:] = 65535
  images.append((sem, codes))
  return images


@pytest.mark.parametrize("p", [0.8, 0.1, 0.3, 0.5, 0.9, 0.0, 1.0, 0.55])
def test_two_level_equals_full_histogram(p):
  rng = np.random.default_rng(11)
  images = _images_across_blocks(rng)
  full = th.SemanticHistogram()
  for sem, codes in images:
    full.add(sem, codes)
  hists = [th.sparse_histogram(*im) for im in images]
  for shards in (1, 3):
    two = _two_level(hists, p, shards)
    for t in (0.5, 0.95, 1.0, 0.0):
      assert two.thresholds(p, t) == full.thresholds(p, t), (shards, t)
  got = two.thresholds(p, 1.0)
  assert got[3] == got[7] == {"tau": 0.0, "count": 0, "quantile": None, "tau_code": 0}
  assert [got[c]["count"] for c in (0, 1, 2, 12)] == [6, 12, 18, 24]  # 6 images hold them
  for cls in range(18):  # and the oracle on all the pixels
    vals = np.concatenate([th.dequantize(c[s == cls]) for s, c in images])
    want = oracle(vals, p, 1.0)
    assert {k: got[cls][k] for k in want} == want, cls


def test_two_level_random_histograms_many_p():
  """Random sparse histograms (huge counts, one-pixel classes) and 40 random p."""
  rng = np.random.default_rng(12)
  hists = []
  for _ in range(4):
    keys = np.unique(rng.integers(0, 18 * 65536, rng.integers(1, 3000)))
    counts = rng.choice([1, 2, 15, 16, 255, 256, 70000, 2**31], keys.size)
    hists.append(np.stack([keys, counts]))
  hists.append(np.array([[5 * 65536 + 1023], [1]]))  # class 5: one more pixel
  full = th.SemanticHistogram()
  for h in hists:
    full.add_sparse(*h)
  for p in np.concatenate([rng.random(40), [0.8, 0.1]]):
    assert _two_level(hists, p, 2).thresholds(p, 0.7) == full.thresholds(p, 0.7)


def test_two_level_helpers_and_errors():
  h = np.array([[3, 1024, 1025, 2 * 65536 + 65535], [2, 1, 4, 7]])
  b = th.sparse_blocks(*h)
  assert b.shape == (3, 64) and b[0, 0] == 2 and b[0, 1] == 5 and b[2, 63] == 7 and b.sum() == 14
  assert th.sparse_blocks(*h, num_classes=18).shape == (18, 64)
  assert th.sparse_blocks(np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0, 64)
  f = th.sparse_fine(*h, [1, -1, 63, 5])
  assert f.shape == (4, 1024) and f[0, 0] == 1 and f[0, 1] == 4 and f[2, 1023] == 7
  assert f.sum() == 12  # key 3 is in class 0's block 0, not chosen
  c = th.BlockCounts()
  c.add(b)  # fewer rows: zero-padded
  assert c.counts[:3].sum() == 14
  c.add(np.zeros((20, 64), np.int64))  # extra rows, empty: fine
  with pytest.raises(ValueError, match="0..17"):
    c.add(np.eye(19, 64, k=-18, dtype=np.int64))  # a pixel of class 18
  with pytest.raises(ValueError, match="non-negative"):
    c.add(-np.ones((1, 64), np.int64))
  blocks, ranks = c.locate(0.8)  # class 0: n = 7, i = round(1.4) = 1 -> block 0, rank 1
  assert blocks[0] == 0 and ranks[0] == 1 and blocks[1] == -1 and blocks[2] == 63
  fine = th.FineCounts(blocks)
  with pytest.raises(ValueError, match="different blocks"):
    fine.merge(th.FineCounts(np.where(blocks >= 0, 0, -1)))
  with pytest.raises(ValueError, match="blocks must be"):
    th.FineCounts([64])
  fine.add(th.sparse_fine(*h, blocks))
  with pytest.raises(ValueError, match="pass 2 but"):  # fine counts short of pass 1's
    th.SemanticQuantiles(c, th.FineCounts(blocks), 0.8)
  q = th.SemanticQuantiles(c, fine, 0.8)
  assert q.thresholds(0.8, 1.0)[0]["quantile"] == float(th.dequantize(np.uint16(3)))
  with pytest.raises(ValueError, match="p = 0.8"):
    q.thresholds(0.3, 1.0)
  with pytest.raises(ValueError, match="put the p = 0.1 quantiles"):
    th.SemanticQuantiles(c, fine, 0.1)


def test_stage_compute_thresholds_two_passes_and_rerun(tmp_path, monkeypatch):
  """``pseudo/opll.compute_thresholds`` on a store of three entries equals the full
  histogram; a rerun with the same fingerprint does not read the store."""
  from tests.support import maps  # pylint: disable=g-import-not-at-top
  from unlock_jax.pseudo import store  # pylint: disable=g-import-not-at-top
  from unlock_jax.pseudo import opll  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(13)
  d, out = str(tmp_path / "store"), str(tmp_path / "out")
  full, scores = th.SemanticHistogram(), th.ScoreLists()
  images = _images_across_blocks(rng)[:3]
  for k, (sem, codes) in enumerate(images):
    dets = maps.ellipse_dets(rng, *sem.shape, 3)
    empty = maps.no_dets(*sem.shape)
    store.write_prediction(d, f"c/p{k}", sem, codes, dets, empty)
    full.add(sem, codes)
    scores.add(dets["classes"], dets["scores"])
  names = store.list_predictions(d)
  for p in (0.8, 0.1):
    acc = opll.compute_thresholds(d, names, out, p, f"fp{p}")
    assert acc["semantic"].thresholds(p, 0.5) == full.thresholds(p, 0.5)
    assert acc["semantic"].thresholds(p, 1.0) == full.thresholds(p, 1.0)
    assert acc["modal"].thresholds(0.3, 0.5) == scores.thresholds(0.3, 0.5)
    assert acc["amodal"].thresholds(0.5, 0.3) == th.ScoreLists().thresholds(0.5, 0.3)

  def boom(*args, **kwargs):
    raise AssertionError("a finished threshold computation must not read the store again")
  monkeypatch.setattr(store, "load_blocks", boom)
  monkeypatch.setattr(store, "load_fine", boom)
  again = opll.compute_thresholds(d, names, out, 0.1, "fp0.1")
  assert again["semantic"].thresholds(0.1, 0.5) == full.thresholds(0.1, 0.5)
  with pytest.raises(AssertionError, match="must not read"):  # another fingerprint
    opll.compute_thresholds(d, names, out, 0.1, "fp-other")
