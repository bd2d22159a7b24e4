"""The adaptation step's memory settings: same values, less memory held at once.

* ``adapt.sequential_grads`` (methods/unlock.sequential_grads): ``∇L_clean``
  then ``∇L_mix``, summed, against the joint ``∇(L_clean + L_mix)`` of
  ``adapt_loss`` (the oracle: autodiff of the sum), on the tiny semantic
  model with decode-head dropout 0.5 (a different mask in either forward
  would move the gradient far beyond float rounding). Off, the step's
  program has no barrier (today's program).
* ``model.rcnn.roi_chunk`` (rcnn/roi_align.multilevel_roi_align): the exact
  RoIAlign ``chunk`` RoIs at a time against all at once (the exact form is
  checked against mmcv's loop in tests/test_rcnn_roi_align.py), values and
  the features' gradient, with a padded last chunk.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unlock_jax import constants
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.methods import unlock
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import variables as variables_lib
from unlock_jax.models.rcnn import roi_align
from unlock_jax.train import adapt, optim

B, H, W = 4, 32, 32


def _cfg(sequential: bool):
  return ml_collections.ConfigDict(dict(
      reg_weight=10.0, mix_weight=1.0, ema_max=0.999, teacher_threshold=0.968, ignore_top=11,
      ignore_bottom=88, rows_crop_height=400, jitter_p=0.8, blur_p=0.5,
      jitter_strength=0.2, sem_normalize="all_pixels", sequential_grads=sequential,
      blur_sigma_scale=1.0))


@pytest.fixture(scope="module")
def sem():
  mcfg = defaults.tiny_model_config()
  mcfg.instance_heads = False
  mcfg.dropout = 0.5
  model = amodalpass.build(mcfg)
  variables = jax.jit(lambda r: variables_lib.init_variables(model, r, (1, H, W, 3)))(
      jax.random.key(0))
  rng = np.random.default_rng(0)
  sem_lab = rng.integers(0, 18, (B, H, W)).astype(np.int32)
  sem_lab[:, :2] = 255
  batch = {keys.IMAGE: rng.standard_normal((B, H, W, 3)).astype(np.float32),
           keys.UNLABELED_IMAGE: rng.standard_normal((B, H, W, 3)).astype(np.float32),
           keys.SEMANTIC: sem_lab}
  mixed = {"image": rng.standard_normal((B, H, W, 3)).astype(np.float32),
           "labels": rng.integers(0, 18, (B, H, W)).astype(np.int32),
           "weights": rng.uniform(0.0, 1.0, (B, H, W)).astype(np.float32)}
  # The source parameters away from the student's: the regulariser has a gradient.
  source = jax.tree.map(lambda p: p + 0.01 * jnp.ones_like(p), variables["params"])
  return model, variables, source, batch, mixed


def test_sequential_grads_equal_joint_grads(sem):
  model, variables, source, batch, mixed = sem
  args = (variables["params"], variables["batch_stats"], source, batch, mixed,
          jax.random.key(7))
  cfg = _cfg(True)
  joint = jax.jit(jax.value_and_grad(
      lambda *a: unlock.adapt_loss(model, *a, cfg=cfg), has_aux=True))(*args)
  seq = jax.jit(lambda *a: unlock.sequential_grads(model, *a, cfg=cfg))(*args)
  (loss_j, (terms_j, bs_j)), g_j = jax.device_get(joint)
  (loss_s, (terms_s, bs_s)), g_s = jax.device_get(seq)
  assert set(terms_s) == set(terms_j) == {"sem", "param_reg", "mix/sem"}
  for k in terms_j:
    np.testing.assert_allclose(terms_s[k], terms_j[k], rtol=1e-6, err_msg=k)
    assert terms_j[k] > 0, k
  np.testing.assert_allclose(loss_s, loss_j, rtol=1e-6)
  # BatchNorm statistics: the clean, then the mixed forward's update, in either form.
  for a, b in zip(jax.tree.leaves(bs_s), jax.tree.leaves(bs_j)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  flat_j = jax.tree_util.tree_flatten_with_path(g_j)[0]
  flat_s = jax.tree.leaves(g_s)
  assert len(flat_j) == len(flat_s)
  for (path, gj), gs in zip(flat_j, flat_s):
    scale = np.abs(gj).max()
    assert scale > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(gs, gj, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_sequential_flag_selects_the_program(sem):
  """Off: no optimisation barrier in the step (the joint program); on: the two
  barriers that order teacher, clean and mixed passes. Lowering only."""
  model, variables, source, batch, _ = sem
  mesh = shd.make_mesh()
  ocfg = ml_collections.ConfigDict(dict(
      lr=1e-5, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, power=1.0, end_lr=0.0,
      warmup_steps=0, match="mmcv", groups=constants.ADAPT_GROUPS))
  tx, sched = optim.make(ocfg, 10, variables["params"])
  state = adapt.init_state(variables, tx, mesh)
  repl = shd.replicated(mesh)
  inputs = (state, shd.put_batch(batch, mesh), jax.device_put(source, repl),
            jax.device_put(jax.random.key(1), repl))
  texts = {}
  for flag in (False, True):
    step = unlock.make_step(model, tx, sched, mesh, state, cfg=_cfg(flag))
    texts[flag] = step.lower(*inputs).as_text()
  assert "optimization_barrier" not in texts[False]
  assert texts[True].count("optimization_barrier") == 2


def test_chunked_roi_align_equals_all_at_once():
  rng = np.random.default_rng(1)
  c = 5
  feats = [jnp.asarray(rng.standard_normal((s, s, c)).astype(np.float32))
           for s in (64, 32, 16, 8)]  # a 256×256 image's levels at strides 4..32
  xy = rng.uniform(0, 200, (11, 2))
  wh = rng.uniform(4, 250, (11, 2))  # small to whole-image RoIs, one beyond the image
  boxes = np.concatenate([xy, np.minimum(xy + wh, 256)], 1)
  boxes = jnp.asarray(np.concatenate([boxes, [[0, 0, 256, 256], [-8, 250, 20, 270]]])
                      .astype(np.float32))
  assert set(np.asarray(roi_align.map_roi_levels(boxes)).tolist()) == {0, 1, 2}
  cot = jnp.asarray(rng.standard_normal((13, 7, 7, c)).astype(np.float32))

  def value_and_grad(chunk):
    f = lambda fs: roi_align.multilevel_roi_align(fs, boxes, 7, chunk=chunk)
    out, vjp = jax.vjp(f, feats)
    return out, vjp(cot)[0]

  ref, ref_g = jax.jit(lambda: value_and_grad(0))()
  for chunk in (4, 13):  # 13 = 3 chunks of 4 + 1 padded; 13 = no chunking
    out, g = jax.jit(lambda chunk=chunk: value_and_grad(chunk))()
    assert out.shape == (13, 7, 7, c)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, ref_g):
      assert np.isfinite(np.asarray(a)).all()
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
