"""ClassMix masks, mixing, and the teacher's pseudo-weight vs NumPy restatements of the rules.

docs/method.md §7.4.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax.train import classmix


def batch_labels():
  """[4,16,16] labels whose batch set {0, 3, 7, 12, 255} no single image holds entirely."""
  lab = np.zeros((4, 16, 16), np.int32)
  lab[0, :8] = 3
  lab[0, 8:, :4] = 255
  lab[1, :, 8:] = 7
  lab[2] = 7
  lab[2, :2] = 3
  lab[3, 4:12, 4:12] = 12   # 12 only in image 3, 255 only in image 0
  return lab


_choose = jax.jit(jax.vmap(classmix.choose_classes, in_axes=(None, 0)))
_masks = jax.jit(jax.vmap(classmix.class_masks, in_axes=(None, 0)))


def test_subsets_from_the_batch_set_with_ceil_half_size():
  keys = jax.random.split(jax.random.key(0), 50)
  for lab, batch_set in (
      (batch_labels(), {0, 3, 7, 12, 255}),                            # n = 5 → 3
      (np.where(batch_labels() == 12, 200, batch_labels()), {0, 3, 7, 200, 255}),
      (np.concatenate([batch_labels()[:3], np.full((1, 16, 16), 17)]), {0, 3, 7, 17, 255}),
      (np.where(batch_labels() == 255, 1, batch_labels()), {0, 1, 3, 7, 12}),
      (np.random.default_rng(0).choice([*range(18), 255], (4, 16, 16)), None),   # n = 19 → 10
      (np.full((4, 16, 16), 255, np.int32), {255}),                   # n = 1 → 1
  ):
    want_set = set(np.unique(lab).tolist()) if batch_set is None else batch_set
    assert set(np.unique(lab).tolist()) == want_set
    n = len(want_set)
    chosen = np.asarray(_choose(jnp.asarray(lab), keys))        # [K,B,256]
    masks = np.asarray(_masks(jnp.asarray(lab), keys))          # [K,B,H,W]
    for kk in range(len(keys)):
      for b in range(4):
        picked = set(np.flatnonzero(chosen[kk, b]).tolist())
        assert picked <= want_set and len(picked) == (n + n % 2) // 2
        np.testing.assert_array_equal(masks[kk, b], np.isin(lab[b], sorted(picked)))


def test_even_class_count():
  lab = np.where(batch_labels() == 0, 5, batch_labels())
  lab[1, 0, 0] = 0   # {0, 3, 5, 7, 12, 255}: n = 6 → 3
  chosen = np.asarray(_choose(jnp.asarray(lab), jax.random.split(jax.random.key(1), 20)))
  assert np.all(chosen.sum(-1) == 3)


def test_uniform_subsets_255_drawable_and_independent_images():
  n_keys = 3000
  lab = batch_labels()
  chosen = np.asarray(_choose(jnp.asarray(lab), jax.random.split(jax.random.key(2), n_keys)))
  classes = [0, 3, 7, 12, 255]
  se = lambda p, n: 5 * math.sqrt(p * (1 - p) / n)
  for c in classes:   # each class (255 included) is in a random 3-of-5 subset w.p. 3/5
    assert abs(chosen[:, :, c].mean() - 0.6) < se(0.6, 4 * n_keys)
  code = (chosen[:, :, classes] * (2 ** np.arange(5))).sum(-1)   # [K,B] subset id
  subsets = [sum(2 ** i for i in s) for s in itertools.combinations(range(5), 3)]
  for sid in subsets:   # all C(5,3) = 10 subsets equally likely
    assert abs(np.mean(code == sid) - 0.1) < se(0.1, 4 * n_keys)
  assert set(np.unique(code).tolist()) == set(subsets)
  for a, b in ((0, 1), (1, 2), (2, 3)):   # images draw independently: P(same subset) = 1/10
    assert abs(np.mean(code[:, a] == code[:, b]) - 0.1) < se(0.1, n_keys)


def test_mix_images_and_labels():
  rng = np.random.default_rng(0)
  mask = rng.random((2, 8, 8)) < 0.5
  a, b = rng.normal(size=(2, 2, 8, 8, 3)).astype(np.float32)
  m = mask[..., None].astype(np.float32)
  np.testing.assert_array_equal(classmix.mix(jnp.asarray(mask), a, b), m * a + (1 - m) * b)
  la, lb = rng.integers(0, 256, (2, 2, 8, 8))
  np.testing.assert_array_equal(classmix.mix(jnp.asarray(mask), la, lb),
                                mask * la + (1 - mask) * lb)


def np_pseudo_weight(conf, top, bottom):
  q = np.count_nonzero(conf >= np.float32(0.968)) / conf.size   # over ALL pixels of the batch
  w = np.full(conf.shape, q)
  w[:, :top] = 0
  if bottom:
    w[:, -bottom:] = 0
  return w


def test_teacher_pseudo_weight_scalar_and_rows():
  rng = np.random.default_rng(1)
  weight = jax.jit(classmix.teacher_pseudo_weight)
  for hgt, top, bottom in ((400, 11, 88), (64, 2, 14), (200, 6, 44), (16, 0, 4)):
    assert classmix.ignored_rows(hgt) == (top, bottom)
    conf = rng.uniform(0.9, 1.0, (2, hgt, 8)).astype(np.float32)
    conf[0, 20 % hgt, :3] = np.float32(0.968)                  # equality counts as confident
    conf[1, :top + 1] = 1.0                                     # confident pixels in ignored rows count
    got = np.asarray(weight(jnp.asarray(conf)))
    want = np_pseudo_weight(conf, top, bottom)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)
    inside = got[:, top:hgt - bottom]
    assert np.all(inside == inside[0, 0, 0]) and 0 < inside[0, 0, 0] < 1   # one scalar per batch
    assert np.all(got[:, :top] == 0) and np.all(got[:, hgt - bottom:] == 0)
  assert classmix.ignored_rows(64, ignore_bottom=0) == (2, 0)
  conf = np.ones((1, 64, 4), np.float32)
  w = np.asarray(classmix.teacher_pseudo_weight(jnp.asarray(conf), ignore_bottom=0))
  assert np.all(w[:, 2:] == 1) and np.all(w[:, :2] == 0)


def test_mixed_targets():
  rng = np.random.default_rng(2)
  mask = rng.random((2, 8, 8)) < 0.4
  pl = rng.choice([0, 3, 11, 255], (2, 8, 8)).astype(np.uint8)
  teacher = rng.integers(0, 18, (2, 8, 8)).astype(np.int32)
  tw = rng.uniform(0, 1, (2, 8, 8)).astype(np.float32)
  lab, w = classmix.mixed_targets(jnp.asarray(mask), jnp.asarray(pl), jnp.asarray(teacher),
                                  jnp.asarray(tw))
  m = mask.astype(np.int64)
  np.testing.assert_array_equal(lab, m * pl + (1 - m) * teacher)
  np.testing.assert_array_equal(w, (m * 1.0 + (1 - m) * tw).astype(np.float32))
  assert lab.dtype == jnp.int32 and w.dtype == jnp.float32


def test_jit_compiles_once_for_a_fixed_shape():
  traces = []

  def step(lab, conf, key):
    traces.append(1)
    mask = classmix.class_masks(lab, key)
    return classmix.mixed_targets(mask, lab, lab, classmix.teacher_pseudo_weight(conf))

  f = jax.jit(step)
  rng = np.random.default_rng(3)
  for seed in range(3):
    lab = rng.integers(0, 20, (2, 16, 16)).astype(np.int32)
    conf = rng.uniform(0.9, 1, (2, 16, 16)).astype(np.float32)
    jax.block_until_ready(f(lab, conf, jax.random.key(seed)))
  assert len(traces) == 1
