"""Adaptation crops across the 360° seam (``config.adapt.wrap_crops``, docs/method.md §7.2.4).

Oracles written here: a wrapped crop is the flat crop of the panorama rolled
(``np.roll``) so that its window starts at column 0; the wrapped paste is
the flat paste on the rolled panorama with a pool rebuilt from the rolled
full-size masks (plain tight extents); the draw sequence (mmseg's RandomCrop
with ``cat_max_ratio``: ≤ 10 checked redraws + 1 unchecked) is reimplemented
on the same random stream; column coverage is counted over many draws.
"""
import os

import numpy as np
import pytest

from configs import default
from unlock_jax import fingerprint
from unlock_jax.data import adcl_paste
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import maskcodec
from unlock_jax.data import packed_labels
from unlock_jax.data import pipeline
from unlock_jax.data import pool_index
from unlock_jax.data import transforms
from unlock_jax.pseudo import pool

H, W = 16, 64        # panorama
CH, CW = 16, 24      # crop
IGNORE = labels.IGNORE


# ------------------------------------------------------------------ oracles

def _ok(sem, ratio):
  """mmseg RandomCrop's class-ratio test, written out."""
  v = sem[sem != IGNORE]
  _, counts = np.unique(v, return_counts=True)
  return counts.size > 1 and counts.max() / counts.sum() < ratio


def _oracle_box(sem, crop, rng, ratio, wrap):
  """The crop draw as mmseg's loop: one draw, then up to 10 check-and-redraw
  rounds; x1 from [0, W) with wrap, [0, W-w] without."""
  h, w = sem.shape
  ch, cw = crop

  def draw():
    y1 = int(rng.integers(0, h - ch + 1))
    x1 = int(rng.integers(0, w if wrap else w - cw + 1))
    return y1, x1

  y1, x1 = draw()
  if ratio < 1:
    for _ in range(10):
      if _ok(np.roll(sem, -x1, axis=1)[y1:y1 + ch, :cw], ratio):
        break
      y1, x1 = draw()
  return y1, x1


def _rolled_crop(a, y1, x1, ch, cw, row_axis=0):
  """Rows y1..y1+ch and columns x1..x1+cw-1 modulo the width, by np.roll."""
  a = np.roll(a, -x1, axis=row_axis + 1)
  lead = (slice(None),) * row_axis
  return a[lead + (slice(y1, y1 + ch), slice(0, cw))]


def _flat_index(objs, size=(H, W)):
  """PoolIndex of ``objs`` = [(class, full mask, full rgb)] with plain tight
  extents (no wrapped ones): the flat paste's input."""
  ext, masks, rgbs = [], [], []
  for _, m, rgb in objs:
    y0, y1, x0, x1 = maskcodec.tight_extent(m != 0)
    ext.append((y0, y1, x0, x1))
    masks.append(m[y0:y1, x0:x1].ravel())
    rgbs.append(rgb[y0:y1, x0:x1].ravel())
  n = len(objs)
  a = {"image_size": np.asarray(size, np.int32),
       "names": np.array([f"c/p{i}" for i in range(n)], dtype=str).reshape(-1),
       "classes": np.asarray([o[0] for o in objs], np.int32),
       "det_index": np.zeros(n, np.int32), "scores": np.ones(n, np.float32),
       "k": np.zeros(n, np.int32), "extents": np.asarray(ext, np.int32).reshape(-1, 4),
       "mask_data": np.concatenate(masks).astype(np.uint8),
       "rgb_data": np.concatenate(rgbs).astype(np.uint8)}
  for key, chunks in (("mask", masks), ("rgb", rgbs)):
    a[f"{key}_offsets"] = np.cumsum([0] + [c.size for c in chunks], dtype=np.int64)
  return pool_index.PoolIndex(a)


def _rolled_objs(objs, x1):
  return [(c, np.roll(m, -x1, axis=1), np.roll(rgb, -x1, axis=1)) for c, m, rgb in objs]


# ------------------------------------------------------------------ scenes

def _blob(rng, cy, cx, ry, rx, shape=(H, W)):
  """Ellipse of 1s with a ring of 255 (shared pixels), centred at column cx
  modulo the width (so it may cross the seam)."""
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  dx = (xx - cx + shape[1] // 2) % shape[1] - shape[1] // 2
  d = ((yy - cy) / ry) ** 2 + (dx / rx) ** 2
  m = np.zeros(shape, np.uint8)
  m[d <= 1.6] = 255
  m[d <= 1.0] = 1
  if rng.random() < 0.5:
    m[m == 255] = 0
  return m


def _pool_objs(rng, n=14):
  """Pool objects of 11..17 at random columns, a third of them across the seam."""
  objs = []
  for i in range(n):
    cx = int(rng.integers(W - 3, W + 3)) % W if i % 3 == 0 else int(rng.integers(0, W))
    m = _blob(rng, int(rng.integers(3, H - 3)), cx, rng.uniform(1.5, 3), rng.uniform(1.5, 4))
    rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    objs.append((int(rng.integers(11, 18)), m, rgb))
  return objs


def _panorama(rng):
  """RGB, a semantic map of stripes (several classes, some 255) and instance masks
  in {0, 1, 255}, one of them across the seam."""
  image = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
  cols = rng.integers(0, 11, W // 4).repeat(4)
  sem = np.broadcast_to(np.roll(cols, int(rng.integers(0, W))), (H, W)).astype(np.uint8).copy()
  sem[rng.random((H, W)) < 0.05] = IGNORE
  unc = rng.random((H, W)) < 0.1
  inst = {}
  for branch, n in (("modal", 3), ("amodal", 4)):
    masks = np.stack([_blob(rng, int(rng.integers(3, H - 3)), (W - 1 if k == 0 else
                                                               int(rng.integers(0, W))),
                            rng.uniform(2, 4), rng.uniform(2, 6)) == 1 for k in range(n)])
    inst[branch] = {"masks": masks, "classes": rng.integers(11, 18, n).astype(np.int32),
                    "scores": rng.random(n).astype(np.float32),
                    "det_index": np.arange(n, dtype=np.int32), "uncertain": unc}
  return image, sem, inst


class _Reader:
  def __init__(self, images):
    self._images = images
    self.keys = [f"c/p{i}" for i in range(len(images))]

  def __len__(self):
    return len(self._images)

  def load_image(self, i):
    return self._images[i]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Three panoramas with packed labels and a pool index (objects across the seam
  with wrapped extents, as pseudo/pool.py writes them), on disk."""
  root = tmp_path_factory.mktemp("wrap")
  rng = np.random.default_rng(0)
  images, full = [], []
  for i in range(3):
    image, sem, inst = _panorama(rng)
    packed_labels.write_packed(os.path.join(root, "packed", f"c/p{i}.npz"), f"c/p{i}", sem,
                               inst["modal"], inst["amodal"])
    images.append(image)
    full.append(packed_labels.load_packed(os.path.join(root, "packed", f"c/p{i}.npz")))
  objs, paths = [], []
  for i, group in enumerate(np.array_split(np.arange(14), 3)):  # objects of 3 panoramas
    rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    group = [(c, m, rgb) for c, m, _ in (_pool_objs(rng, len(group)))]
    paths.append(os.path.join(root, "shards", f"s{i}.npz"))
    pool.write_shard(paths[-1], pool.entry_record(
        f"c/s{i}", rgb, [{"class_id": c, "det_index": k, "score": 1.0, "mask": m, "k": 0}
                         for k, (c, m, _) in enumerate(group)]))
    objs.extend(group)  # in the index's order (by panorama name, then entry)
  pool.build_index(paths, os.path.join(root, "pool.npz"))
  return {"root": str(root), "images": images, "labels": full, "pool_objs": objs,
          "pool_path": os.path.join(root, "pool.npz")}


# ------------------------------------------------------------------ tests

def test_window_is_the_rolled_crop():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 255, (3, H, W)).astype(np.uint8)
  for x1 in (0, 5, W - CW, W - CW + 1, W - 1):
    box = (2, 2 + 10, x1, x1 + CW)
    np.testing.assert_array_equal(transforms.window(a, box, row_axis=1),
                                  _rolled_crop(a, 2, x1, 10, CW, row_axis=1))
    np.testing.assert_array_equal(transforms.window(a[0], box), _rolled_crop(a[0], 2, x1, 10, CW))
  np.testing.assert_array_equal(transforms.window(a[0], (0, H, 7, 7 + W)), np.roll(a[0], -7, 1))
  for bad in ((0, H, W, W + 4), (0, H, 3, 3 + W + 1), (0, H, -1, 5)):
    with pytest.raises(ValueError, match="crop columns"):
      transforms.window(a[0], bad)


@pytest.mark.parametrize("wrap", [False, True])
def test_crop_draws_match_mmseg_loop_on_the_wrapped_crop(wrap):
  """Same boxes as the loop written here (≤ 10 checked redraws, then one unchecked),
  the check on the (rolled) crop; many draws hit the redraw limit."""
  rng = np.random.default_rng(2)
  sem = np.full((H, W), 3, np.uint8)
  sem[:, W - 6:] = 5            # a second class only near the seam
  sem[:, :3] = 7
  sem[rng.random((H, W)) < 0.03] = IGNORE
  tries = []
  for seed in range(300):
    got = transforms.random_crop_box(sem, (CH, CW), np.random.default_rng(seed), 0.75, wrap=wrap)
    r = np.random.default_rng(seed)
    y1, x1 = _oracle_box(sem, (CH, CW), r, 0.75, wrap)
    assert got == (y1, y1 + CH, x1, x1 + CW)
    tries.append(got[2] + CW > W)
  # With the wrap, accepted crops hold both seam classes and often straddle.
  assert (np.mean(tries) > 0.2) == wrap


def test_column_coverage_is_uniform_with_wrap_and_thin_at_the_edges_without():
  """P(column c covered) = w/W for every c with the wrapped draw; the flat draw gives
  min(c, W-w) - max(0, c-w+1) + 1 over W-w+1: 1/(W-w+1) at both edges."""
  n = 20000
  sem = np.zeros((H, W), np.uint8)
  counts = {}
  straddle = 0
  for wrap in (False, True):
    rng = np.random.default_rng(3)
    cover = np.zeros(W, np.int64)
    for _ in range(n):
      _, _, x1, x2 = transforms.random_crop_box(sem, (CH, CW), rng, 1.0, wrap=wrap)
      cover[np.arange(x1, x2) % W] += 1
      straddle += wrap and x2 > W
    counts[wrap] = cover / n
  c = np.arange(W)
  flat_p = (np.minimum(c, W - CW) - np.maximum(0, c - CW + 1) + 1) / (W - CW + 1)
  tol = 5 * np.sqrt(0.25 / n)  # 5 binomial standard deviations at most
  np.testing.assert_allclose(counts[False], flat_p, atol=tol)
  np.testing.assert_allclose(counts[True], np.full(W, CW / W), atol=tol)
  assert counts[False][0] < 0.1 * CW / W and counts[False][-1] < 0.1 * CW / W
  assert abs(straddle / n - (CW - 1) / W) < tol
  # Exactly: each of the W equally likely x1 covers w columns, each column by w of them.
  exact = np.zeros(W, np.int64)
  for x1 in range(W):
    exact[np.arange(x1, x1 + CW) % W] += 1
  assert (exact == CW).all()


@pytest.mark.parametrize("width", [CW, W])
def test_wrapped_paste_equals_flat_paste_on_the_rolled_panorama(width):
  """Every window position, straddling or not, crop as wide as the panorama included
  (an object across the seam then shows in two pieces): same image, labels, boxes."""
  rng = np.random.default_rng(4)
  objs = _pool_objs(rng)
  wrapped = pool_index.PoolIndex(_index_arrays(objs))
  assert (wrapped.extents[:, 3] > W).any()  # some entries wrap (pseudo/pool.py's extents)
  image, sem, inst = _panorama(rng)
  modal = {"masks": inst["modal"]["masks"].astype(np.uint8), "classes": inst["modal"]["classes"]}
  amodal = {"masks": inst["amodal"]["masks"].astype(np.uint8),
            "classes": inst["amodal"]["classes"]}
  pasted_seam = 0
  for x1 in range(W):
    cands = rng.permutation(len(objs))
    box = (0, CH, x1, x1 + width)

    def crop(a, row_axis=0):
      return np.ascontiguousarray(_rolled_crop(a, 0, x1, CH, width, row_axis))

    args = (crop(image), crop(sem), {"masks": crop(modal["masks"], 1), "classes": modal["classes"]},
            {"masks": crop(amodal["masks"], 1), "classes": amodal["classes"]})
    got = adcl_paste.paste(*args, box, wrapped, None, candidates=cands, wrap=True)
    want = adcl_paste.paste(*args, (0, CH, 0, width), _flat_index(_rolled_objs(objs, x1)),
                            None, candidates=cands)
    _assert_paste_equal(got, want)
    crossing = [j for j in got["pasted"] if (objs[j][1][:, 0] != 0).any()
                and (objs[j][1][:, -1] != 0).any()]
    pasted_seam += bool(crossing) and (x1 + width > W)
  assert pasted_seam >= 3  # objects across the seam were pasted into straddling windows


def _index_arrays(objs):
  recs = [pool.entry_record(f"c/p{i:04d}", rgb, [{"class_id": c, "det_index": 0, "score": 1.0,
                                                   "mask": m, "k": 0}])
          for i, (c, m, rgb) in enumerate(objs)]
  a = {"image_size": np.asarray((H, W), np.int32),
       "names": np.array([str(r["name"]) for r in recs], dtype=str).reshape(-1)}
  for key in ("classes", "det_index", "scores", "k", "extents", "mask_data", "rgb_data"):
    a[key] = np.concatenate([r[key] for r in recs])
  for key in ("mask_offsets", "rgb_offsets"):
    a[key] = np.cumsum(np.concatenate([[0]] + [np.diff(r[key]) for r in recs]), dtype=np.int64)
  return a


def _assert_paste_equal(got, want):
  for k in ("image", "semantic", "pasted", "candidates"):
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert got["num_pasted"] == want["num_pasted"]
  for b in ("modal", "amodal"):
    for k in ("masks", "classes", "boxes"):
      np.testing.assert_array_equal(got[b][k], want[b][k], err_msg=f"{b} {k}")


def test_paste_refuses_a_window_across_the_seam_unless_wrap():
  objs = _pool_objs(np.random.default_rng(5), n=3)
  index = pool_index.PoolIndex(_index_arrays(objs))
  empty = {"masks": np.zeros((0, CH, CW), np.uint8), "classes": np.zeros((0,), np.int32)}
  args = (np.zeros((CH, CW, 3), np.uint8), np.zeros((CH, CW), np.uint8), empty, empty,
          (0, CH, W - 4, W - 4 + CW), index, None)
  with pytest.raises(ValueError, match="wrap=True"):
    adcl_paste.paste(*args, candidates=[0])
  adcl_paste.paste(*args, candidates=[0], wrap=True)
  with pytest.raises(ValueError, match="leaves"):  # wider than the panorama
    adcl_paste.paste(np.zeros((CH, W + 1, 3), np.uint8), np.zeros((CH, W + 1), np.uint8),
                     {"masks": np.zeros((0, CH, W + 1), np.uint8), "classes": empty["classes"]},
                     {"masks": np.zeros((0, CH, W + 1), np.uint8), "classes": empty["classes"]},
                     (0, CH, 3, 4 + W), index, None, candidates=[0], wrap=True)


def _oracle_pair(data, pl, u, seed, wrap, max_instances=8):
  """One adaptation pair from the random stream ``seed``, by np.roll and the flat paste."""
  rng = np.random.default_rng(seed)
  lab = data["labels"][pl]
  y1, x1 = _oracle_box(lab["semantic"], (CH, CW), rng, 0.75, wrap)
  image = _rolled_crop(data["images"][pl], y1, x1, CH, CW)
  sem = _rolled_crop(lab["semantic"], y1, x1, CH, CW)
  branches = {b: {"classes": lab[b]["classes"],
                  "masks": _rolled_crop(lab[b]["masks"], y1, x1, CH, CW, row_axis=1)}
              for b in ("modal", "amodal")}
  if rng.random() < 0.5:
    image, sem = image[:, ::-1], sem[:, ::-1]
    for b in branches.values():
      b["masks"] = b["masks"][:, :, ::-1]
  objs = data["pool_objs"]
  cands = rng.choice(len(objs), size=len(objs), replace=False)  # the pool is under 80
  out = adcl_paste.paste(np.ascontiguousarray(image), np.ascontiguousarray(sem),
                         branches["modal"], branches["amodal"], (y1, y1 + CH, 0, CW),
                         _flat_index(_rolled_objs(objs, x1)), None, candidates=cands)
  ex = {keys.IMAGE: transforms.normalize(out["image"]),
        keys.SEMANTIC: out["semantic"].astype(np.int32)}
  for b in ("modal", "amodal"):
    for k, v in adcl_paste.pad_instances(out[b], max_instances).items():
      ex[f"{b}_{k}"] = v
  uy1 = int(rng.integers(0, H - CH + 1))
  ux1 = int(rng.integers(0, W if wrap else W - CW + 1))
  uimage = _rolled_crop(data["images"][u], uy1, ux1, CH, CW)
  if rng.random() < 0.5:
    uimage = uimage[:, ::-1]
  ex[keys.UNLABELED_IMAGE] = transforms.normalize(np.ascontiguousarray(uimage))
  return ex, x1, out["num_pasted"]


@pytest.mark.parametrize("wrap", [False, True])
def test_adapt_pair_equals_the_rolled_oracle(data, wrap):
  """Image, OPLL semantic, modal/amodal masks/boxes/classes and the unlabelled crop,
  byte for byte; wrap=False is the flat draw (x1 in [0, W-w]) of the reference."""
  transform = pipeline.AdaptPairTransform(
      _Reader(data["images"]), os.path.join(data["root"], "packed"), data["pool_path"],
      (CH, CW), 0.75, True, 8, {}, wrap)
  straddled = pasted = 0
  for seed in range(60):
    pl, u = seed % 3, (seed * 7 + 1) % 3
    got = transform((pl, u), np.random.default_rng(seed))
    want, x1, n = _oracle_pair(data, pl, u, seed, wrap)
    assert sorted(got) == sorted(want)
    for k in want:
      assert got[k].dtype == want[k].dtype, k
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    straddled += x1 + CW > W
    pasted += n if x1 + CW > W else 0
  assert (straddled >= 8) if wrap else straddled == 0
  assert pasted >= 3 or not wrap


@pytest.mark.parametrize("wrap", [False, True])
def test_unlabelled_stream_alone_wraps_too(data, wrap):
  """The unlabelled stream of methods without pseudo-labels takes the same crops."""
  t = pipeline.UnlabelledTransform(_Reader(data["images"]), (CH, CW), True, wrap)
  straddled = 0
  for seed in range(40):
    rng = np.random.default_rng(seed)
    y1 = int(rng.integers(0, H - CH + 1))
    x1 = int(rng.integers(0, W if wrap else W - CW + 1))
    want = _rolled_crop(data["images"][seed % 3], y1, x1, CH, CW)
    if rng.random() < 0.5:
      want = want[:, ::-1]
    got = t(seed % 3, np.random.default_rng(seed))[keys.UNLABELED_IMAGE]
    np.testing.assert_array_equal(got, transforms.normalize(np.ascontiguousarray(want)))
    straddled += x1 + CW > W
  assert (straddled >= 5) if wrap else straddled == 0


def test_adapt_iterator_with_wrap_is_deterministic_and_resumable(data):
  def make():
    return pipeline.adapt_iterator(
        _Reader(data["images"]), packed_dir=os.path.join(data["root"], "packed"),
        pool_path=data["pool_path"], batch_size=2, crop_size=(CH, CW), seed=3,
        max_instances=8, wrap_crops=True)

  it = make()
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  later = [next(it) for _ in range(2)]
  again = make()
  for want in first:
    got = next(again)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  resumed = make()
  resumed.set_state(state)
  for want in later:
    got = next(resumed)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  b = first[0]
  assert b[keys.IMAGE].shape == (2, CH, CW, 3) and b[keys.UNLABELED_IMAGE].shape == (2, CH, CW, 3)
  assert b["modal_masks"].shape == (2, 8, CH, CW) and b[keys.SEMANTIC].dtype == np.int32


def test_source_training_never_wraps():
  """TrainTransform's crops (pinhole source images) stay inside the image."""
  sem = np.zeros((H, W), np.uint8)
  sem[:, ::5] = 1

  class Src:
    def load(self, i):
      return {"image": np.zeros((H, W, 3), np.uint8), "semantic": sem}

  t = pipeline.TrainTransform(Src(), (CH, CW), 0.75, flip=False)
  for seed in range(50):
    rng = np.random.default_rng(seed)
    y1, x1 = _oracle_box(sem, (CH, CW), rng, 0.75, wrap=False)
    got = t(0, np.random.default_rng(seed))
    np.testing.assert_array_equal(got[keys.SEMANTIC], sem[y1:y1 + CH, x1:x1 + CW])


def test_adapt_fingerprint_names_wrap_crops(tmp_path):
  """A rerun with the other crop rule is refused rather than resumed."""
  c = default.get_config()
  assert c.adapt.wrap_crops is False  # the reference's flat crops by default
  flat = fingerprint.compute(c, str(tmp_path), "adapt").as_record(str(tmp_path))
  c.adapt.wrap_crops = True
  wrapped = fingerprint.compute(c, str(tmp_path), "adapt").as_record(str(tmp_path))
  assert flat["settings"]["adapt.wrap_crops"] is False
  assert wrapped["settings"]["adapt.wrap_crops"] is True
  assert flat["fingerprint"] != wrapped["fingerprint"]
