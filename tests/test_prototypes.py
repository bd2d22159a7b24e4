"""OPLL prototype filter: the jitted sums and test vs a numpy implementation."""
import jax
import numpy as np

from unlock_jax import sharding as shd
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import layers
from unlock_jax.models import variables as variables_lib
from unlock_jax.pseudo import prototypes


def _setup():
  model = amodalpass.build(defaults.tiny_model_config())
  variables = variables_lib.init_variables(model, jax.random.key(0), (1, 32, 64, 3))
  rng = np.random.default_rng(0)
  image = rng.normal(size=(4, 32, 64, 3)).astype(np.float32)
  feats = np.asarray(jax.jit(lambda v, x: layers.resize_bilinear(
      model.apply(v, x, train=False)["sem_features"], (32, 64)))(variables, image),
                     np.float64)
  return model, variables, image, feats, rng


def test_sums_and_filter_match_numpy():
  model, variables, image, feats, rng = _setup()
  mesh = shd.make_mesh()
  label = rng.integers(0, 18, (4, 32, 64)).astype(np.int32)
  label[:, :5] = 255  # unlabelled rows contribute nothing
  label[label == 7] = 255  # class 7 never labelled -> no prototype
  weight = rng.uniform(0.2, 1.0, (4, 32, 64)).astype(np.float32)
  put = lambda x: shd.put_batch({"x": x}, mesh)["x"]
  s, w = prototypes.sums_fn(model, mesh)(variables, put(image), put(label), put(weight))
  acc = prototypes.Sums()
  acc.add(np.asarray(s).sum(0), np.asarray(w).sum(0))
  # Oracle: confidence-weighted class means, normalised.
  for c in range(18):
    sel = label == c
    if c == 7:
      assert acc.weights[c] == 0
      continue
    want = (feats[sel] * weight[sel][:, None]).sum(0) / weight[sel].sum()
    np.testing.assert_allclose(acc.sums[c] / acc.weights[c], want, rtol=2e-4, atol=1e-5)
  protos, present = acc.prototypes()
  assert not present[7] and present.sum() == 17
  np.testing.assert_allclose(np.linalg.norm(protos[present], axis=1), 1, rtol=1e-5)

  masks = np.zeros((4, 3, 32, 64), bool)
  masks[:, 0, 8:20, 10:30] = True
  masks[:, 1, 20:30, 40:60] = True  # third row: padding (empty mask)
  classes = np.array([[11, 13, 0]] * 4, np.int32)
  for margin in (0.0, 0.05):
    pk, km, ka = prototypes.filter_fn(model, mesh)(
        variables, put(image), put(label), put(masks), put(classes), put(masks),
        put(classes), protos, present, np.float32(margin))
    for b in range(4):
      want_pk, want_k = prototypes.reference_filter(
          feats[b], label[b], masks[b], classes[b], protos, present, margin)
      np.testing.assert_array_equal(np.asarray(pk)[b], want_pk)
      np.testing.assert_array_equal(np.asarray(km)[b], want_k)
      np.testing.assert_array_equal(np.asarray(ka)[b], want_k)
    # 255 is never kept.
    assert not np.asarray(pk)[label == 255].any()


def test_reference_filter_hand_case():
  protos = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
  present = np.array([True, True, False])
  feats = np.array([[[1.0, 0.2], [0.2, 1.0], [1.0, 0.9]]])  # 1x3 pixels
  label = np.array([[0, 0, 2]])
  keep, inst = prototypes.reference_filter(feats, label, np.ones((1, 1, 3), bool),
                                           np.array([1]), protos, present)
  # pixel 0: nearest is class 0 -> kept; pixel 1: nearest is 1 -> rejected;
  # pixel 2: class 2 has no prototype -> kept.
  np.testing.assert_array_equal(keep, [[True, False, True]])
  # Mask mean (0.733, 0.7) is nearer class 0 than its class 1 -> rejected,
  # but a 0.1 margin lets it through (cos gap 0.0225).
  assert not inst[0]
  _, inst = prototypes.reference_filter(feats, label, np.ones((1, 1, 3), bool),
                                        np.array([1]), protos, present, margin=0.1)
  assert inst[0]
