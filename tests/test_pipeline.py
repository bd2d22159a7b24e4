"""grain pipelines and host transforms: determinism, resumable state, sharding, padding."""
import numpy as np
import pytest

from unlock_jax import sharding as shd
from unlock_jax.data import keys, pipeline, transforms


class FakeReader:
  """n images whose pixel values encode their index (so batches can be traced)."""

  def __init__(self, n=10, h=8, w=24):
    self.n, self.h, self.w = n, h, w

  def __len__(self):
    return self.n

  def load(self, i):
    rng = np.random.default_rng(i)
    sem = rng.integers(0, 18, (self.h, self.w)).astype(np.uint8)
    image = np.full((self.h, self.w, 3), i, np.uint8)
    return {"name": str(i), "image": image, "semantic": sem}


def _ids(batch):
  # Undo the normalisation of channel 0 to recover the source index.
  return np.rint(batch[keys.IMAGE][:, 0, 0, 0] * transforms.STD[0]
                 + transforms.MEAN[0]).astype(int).tolist()


def _iter(reader, **kw):
  args = dict(batch_size=2, crop_size=(8, 8), seed=3, cat_max_ratio=0.75)
  args.update(kw)
  return pipeline.train_iterator(reader, **args)


def test_train_iterator_is_deterministic_and_resumable():
  reader = FakeReader()
  a = _iter(reader)
  first = [next(a) for _ in range(3)]
  state = a.get_state()
  rest = [next(a) for _ in range(4)]
  b = _iter(reader)
  b.set_state(state)
  resumed = [next(b) for _ in range(4)]
  for x, y in zip(rest, resumed):
    np.testing.assert_array_equal(x[keys.IMAGE], y[keys.IMAGE])
    np.testing.assert_array_equal(x[keys.SEMANTIC], y[keys.SEMANTIC])
  c = _iter(reader)
  np.testing.assert_array_equal(next(c)[keys.IMAGE], first[0][keys.IMAGE])
  assert first[0][keys.IMAGE].shape == (2, 8, 8, 3)
  assert first[0][keys.IMAGE].dtype == np.float32
  assert first[0][keys.SEMANTIC].dtype == np.int32
  # An epoch visits every example once (5 batches of 2 over 10 examples).
  d = _iter(reader)
  seen = sum((_ids(next(d)) for _ in range(5)), [])
  assert sorted(seen) == list(range(10))


def test_processes_get_disjoint_shards():
  reader = FakeReader(n=12)
  seen = []
  for p in range(3):
    it = _iter(reader, process_index=p, process_count=3)
    ids = sum((_ids(next(it)) for _ in range(2)), [])
    assert len(set(ids)) == 4
    seen.append(set(ids))
  assert set.union(*seen) == set(range(12))
  assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])


def test_too_small_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="fewer than the per-process batch size"):
    _iter(FakeReader(n=3), batch_size=4)


def test_eval_batches_pad_and_mask():
  reader = FakeReader(n=5)
  batches = list(pipeline.eval_batches(reader, global_batch_size=4, image_size=(8, 24)))
  assert len(batches) == 2
  mask = np.concatenate([b[keys.MASK] for b in batches])
  index = np.concatenate([b[keys.INDEX] for b in batches])
  assert mask.tolist() == [True] * 5 + [False] * 3
  assert index.tolist() == [0, 1, 2, 3, 4, -1, -1, -1]
  assert batches[1]["_host_gt"][1] is None
  # Two processes: same number of steps, rows split within each global batch.
  parts = [list(pipeline.eval_batches(reader, global_batch_size=4, image_size=(8, 24),
                                      process_index=p, process_count=2)) for p in range(2)]
  assert [len(p) for p in parts] == [2, 2]
  assert parts[0][0][keys.INDEX].tolist() == [0, 1]
  assert parts[1][0][keys.INDEX].tolist() == [2, 3]
  assert parts[1][1][keys.INDEX].tolist() == [-1, -1]


def test_eval_steps_are_counted_once():
  """``process_rows`` has ``num_eval_steps`` rows (hand-counted: ceil(n / batch))."""
  for n, bs, procs, steps in ((5, 4, 1, 2), (8, 4, 2, 2), (9, 4, 2, 3), (1, 8, 4, 1)):
    assert pipeline.num_eval_steps(n, bs) == steps
    for p in range(procs):
      rows = pipeline.process_rows(n, bs, p, procs)
      assert rows.shape == (steps, bs // procs)


def test_put_batch_leaves_host_keys_out():
  mesh = shd.make_mesh()
  batch = {keys.IMAGE: np.zeros((4, 2, 2, 3), np.float32), keys.MASK: np.ones(4, bool),
           "_host_gt": [None] * 4}
  out = shd.put_batch(batch, mesh)
  assert sorted(out) == sorted([keys.IMAGE, keys.MASK])
  assert out[keys.IMAGE].shape == (4, 2, 2, 3)


class _ScriptedRng:
  """Returns scripted x offsets (y is always 0 for full-height crops)."""

  def __init__(self, xs):
    self.xs = list(xs)

  def integers(self, lo, hi):
    return 0 if hi - lo == 1 else self.xs.pop(0)


def test_crop_box_follows_cat_max_ratio():
  sem = np.zeros((4, 40), np.uint8)
  sem[:, 30:] = 1
  # x1=0 and x1=32 give one class; x1=26 gives 4 of 8 columns of class 1 (0.5 < 0.75).
  box = transforms.random_crop_box(sem, (4, 8), _ScriptedRng([0, 32, 26, 0]), 0.75)
  assert box == (0, 4, 26, 34)
  # Ten failures: the eleventh draw is used unchecked (mmseg behaviour).
  box = transforms.random_crop_box(sem, (4, 8), _ScriptedRng([0] * 10 + [1, 26]), 0.75)
  assert box == (0, 4, 1, 9)
  # No class-ratio rule: the first draw is taken.
  assert transforms.random_crop_box(sem, (4, 8), _ScriptedRng([0, 26]), 1.0) == (0, 4, 0, 8)
  # Ignore pixels do not count as a class.
  sem2 = np.full((4, 40), 255, np.uint8)
  sem2[:, :4] = 3
  assert transforms.random_crop_box(sem2, (4, 8), _ScriptedRng([0] * 11), 0.75) == (0, 4, 0, 8)
  with pytest.raises(ValueError, match="larger than the image"):
    transforms.random_crop_box(sem, (5, 8), np.random.default_rng(0))


class _CountingRng:
  """``integers`` from a seeded generator, counting the calls."""

  def __init__(self, seed):
    self.rng, self.calls = np.random.default_rng(seed), 0

  def integers(self, lo, hi):
    self.calls += 1
    return self.rng.integers(lo, hi)


def _mmseg_crop(seg, crop_size, rng, cat_max_ratio, ignore_index=255):
  """mmseg 0.x ``RandomCrop.__call__``'s box, transcribed (np.random → rng)."""
  def get_crop_bbox():
    margin_h = max(seg.shape[0] - crop_size[0], 0)
    margin_w = max(seg.shape[1] - crop_size[1], 0)
    offset_h = rng.integers(0, margin_h + 1)
    offset_w = rng.integers(0, margin_w + 1)
    return offset_h, offset_h + crop_size[0], offset_w, offset_w + crop_size[1]

  crop_bbox = get_crop_bbox()
  if cat_max_ratio < 1.:
    for _ in range(10):
      y1, y2, x1, x2 = crop_bbox
      labels, cnt = np.unique(seg[y1:y2, x1:x2], return_counts=True)
      cnt = cnt[labels != ignore_index]
      if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
        break
      crop_bbox = get_crop_bbox()
  return crop_bbox


@pytest.mark.parametrize("kind", ["never_ok", "sometimes_ok", "no_rule"])
def test_crop_box_draws_as_mmseg(kind):
  """Same boxes and the same number of draws as mmseg's loop (11 at most)."""
  for seed in range(20):
    maps = np.random.default_rng(seed)
    if kind == "never_ok":  # one class (and ignore): every check fails
      sem = np.where(maps.random((12, 30)) < 0.3, 255, 7).astype(np.uint8)
    else:
      sem = np.zeros((12, 30), np.uint8)
      sem[:, maps.integers(5, 25):] = 1
    ratio = 1.0 if kind == "no_rule" else 0.75
    ours, theirs = _CountingRng(seed), _CountingRng(seed)
    got = transforms.random_crop_box(sem, (6, 8), ours, ratio)
    want = _mmseg_crop(sem, (6, 8), theirs, ratio)
    assert tuple(int(v) for v in want) == got
    assert ours.calls == theirs.calls
    if kind == "never_ok":
      assert ours.calls == 2 * 11
    if kind == "no_rule":
      assert ours.calls == 2


def test_boxes_and_flip_against_loops():
  rng = np.random.default_rng(1)
  masks = np.zeros((3, 10, 12), np.uint8)
  masks[0, 2:5, 3:9] = 1
  masks[1, 7, 0] = 1
  masks[1, 0, 11] = 255  # ignore pixel: counted only by the reference rule
  boxes = transforms.boxes_from_masks(masks)  # inclusive, as get_bbox_coord
  np.testing.assert_array_equal(boxes[0], [3, 2, 8, 4])
  np.testing.assert_array_equal(boxes[1], [0, 7, 0, 7])
  np.testing.assert_array_equal(boxes[2], [0, 0, 0, 0])
  np.testing.assert_array_equal(transforms.boxes_from_masks(masks, "nonzero")[1], [0, 0, 11, 7])
  ex = {keys.IMAGE: rng.integers(0, 255, (10, 12, 3)).astype(np.uint8),
        keys.SEMANTIC: rng.integers(0, 18, (10, 12)).astype(np.uint8),
        keys.MODAL_MASKS: masks, keys.MODAL_BOXES: boxes,
        keys.MODAL_VALID: np.array([True, True, False])}
  f = transforms.hflip(ex)
  np.testing.assert_array_equal(f[keys.MODAL_BOXES][:2],
                                transforms.boxes_from_masks(masks[:, :, ::-1])[:2])
  np.testing.assert_array_equal(f[keys.MODAL_BOXES][2], [0, 0, 0, 0])
  c = transforms.crop(ex, (0, 10, 4, 12))
  assert c[keys.MODAL_VALID].tolist() == [True, False, False]  # instance 1 cropped away
  np.testing.assert_array_equal(c[keys.MODAL_BOXES][0], [0, 2, 4, 4])
