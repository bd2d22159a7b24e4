"""UNLOCK's adaptation step (methods/unlock.py, train/adapt.py; docs/method.md §7.1, §7.4-§7.6;
docs/reference_differences.md items 6-7).

Expectations are computed here, independently: closed-form EMA / regulariser
formulas, BatchNorm momentum updates in float64 numpy from the BatchNorm inputs
captured with ``nn.intercept_methods``, a numpy bilinear resize and softmax,
AdamW's first-step size lr·mult.

Compilations are kept few (2 CPU cores): the full tiny model's real step
(EMA, student BatchNorm, groups, sharding, one compilation, NaN latch) and,
on the same backbone/head/neck parameters, the semantic-only model for one
captured ``adapt_loss`` call (BatchNorm order, dropout masks) and one
teacher comparison. Both models have drop-path 0 (BatchNorm inputs then do
not depend on the dropout rng); the semantic one has decode-head dropout 0.5
(masks easy to tell apart). The step's jitter/blur gates are 0 (both ops are
still in the program) so that ``x_u = x_pl`` makes the mixed image the clean one.

Each property was checked to fail under a matching mutation of the step (EMA
applied at t = 0; teacher's BatchNorm update kept; one dropout key for both
student forwards; teacher on running statistics; mixed forward from the old
statistics; regulariser summed instead of averaged).
"""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.support import reference
from tests.support.jit_traces import max_traces
from unlock_jax import constants
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data.layouts.common import boxes_from_masks
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import layers
from unlock_jax.models import predict as predict_lib
from unlock_jax.models import variables as variables_lib
from unlock_jax.methods import unlock
from unlock_jax.train import adapt, optim

B, H, W = 4, 32, 32
MOMENTUM = 0.9            # flax = PyTorch BatchNorm momentum 0.1


def _adapt_cfg(jitter_p=0.8, blur_p=0.5):
  return ml_collections.ConfigDict(dict(
      reg_weight=10.0, mix_weight=1.0, ema_max=0.999, teacher_threshold=0.968, ignore_top=11,
      ignore_bottom=88, rows_crop_height=400, jitter_p=jitter_p, blur_p=blur_p,
      jitter_strength=0.2, sem_normalize="all_pixels", blur_sigma_scale=1.0))


def _optim_cfg(lr, groups):
  return ml_collections.ConfigDict(dict(
      lr=lr, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, power=1.0, end_lr=0.0,
      warmup_steps=0, match="mmcv", groups=groups))


def _flat(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in leaves}


def _sem_batch(rng, same_unlabeled=False):
  image = rng.standard_normal((B, H, W, 3)).astype(np.float32)
  sem = rng.integers(0, 18, (B, H, W)).astype(np.int32)
  sem[:, :2] = 255
  x_u = image.copy() if same_unlabeled else rng.standard_normal((B, H, W, 3)).astype(np.float32)
  return {keys.IMAGE: image, keys.UNLABELED_IMAGE: x_u, keys.SEMANTIC: sem}


def _full_batch(rng, n=3):
  out = _sem_batch(rng)
  for p in ("modal", "amodal"):
    masks = np.zeros((B, n, H, W), np.uint8)
    valid = np.ones((B, n), bool)
    valid[:, -1] = False
    for i in range(B):
      for j in range(n - 1):
        y, x = rng.integers(0, H - 12, 2)
        masks[i, j, y:y + 10, x:x + 8] = 1
    out[f"{p}_masks"] = masks
    out[f"{p}_classes"] = rng.integers(0, 7, (B, n)).astype(np.int32)
    out[f"{p}_boxes"] = np.stack([boxes_from_masks(m) for m in masks])  # the pipeline's
    out[f"{p}_valid"] = valid
  return out


def _perturbed_stats(batch_stats, rng):
  """Running statistics far from anything a batch gives: mean ~ N(0, 2²), var ~ U(3, 6)."""
  def pert(path, v):
    name = str(getattr(path[-1], "key", path[-1]))
    v = np.asarray(v)
    if name == "mean":
      return (2.0 * rng.standard_normal(v.shape)).astype(np.float32)
    assert name == "var", name
    return rng.uniform(3.0, 6.0, v.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(pert, jax.device_get(batch_stats))


def _capturing(fn, paths):
  """``fn`` plus the inputs of every BatchNorm call and (in, out) of every Dropout, in call order.

  BatchNorm module paths are appended to ``paths`` at trace time.
  """
  def wrapped(*args):
    bn, drop = [], []

    def interceptor(next_fun, a, kw, ctx):
      out = next_fun(*a, **kw)
      if ctx.method_name == "__call__":
        if isinstance(ctx.module, layers.BatchNorm):
          bn.append(a[0])
          paths.append("/".join(ctx.module.path))
        elif isinstance(ctx.module, nn.Dropout):
          drop.append((a[0], out))
      return out

    with nn.intercept_methods(interceptor):
      res = fn(*args)
    return res, bn, drop
  return wrapped


def _bn_batch_stats(x) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and the unbiased variance (what PyTorch's running
  variance takes) over all but the channel axis, float64."""
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  m = x.mean(0)
  n = x.shape[0]
  return m, ((x - m) ** 2).sum(0) / max(n - 1, 1)


def _momentum(old, *batch_values):
  for b in batch_values:
    old = MOMENTUM * old + (1.0 - MOMENTUM) * b
  return old


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


# --- fixtures -----------------------------------------------------------------------------------

def _tiny(instance_heads: bool, dropout: float):
  mcfg = defaults.tiny_model_config()
  mcfg.instance_heads = instance_heads
  mcfg.drop_path_rate = 0.0   # BatchNorm inputs then do not depend on the dropout rng
  mcfg.dropout = dropout
  return amodalpass.build(mcfg)


@pytest.fixture(scope="module")
def full():
  """Full tiny model (both R-CNN branches), the adaptation groups, the real step.

  Jitter/blur gates are 0 (the program still contains both ops: the gates are
  traced) so that ``x_u = x_pl`` makes the mixed image equal the clean one.
  Base lr 1e-5 instead of the reference's 1e-7: the multipliers are the
  reference's and the smallest group's step (R-CNN heads, 1e-6) stays well
  above the float32 resolution of the weights.
  """
  assert jax.device_count() == 4, "conftest must give 4 fake CPU devices"
  mesh = shd.make_mesh()
  model = _tiny(instance_heads=True, dropout=0.1)
  # Jitted: op-by-op init of the full tiny model is slower than compiling it.
  variables = jax.device_get(jax.jit(
      lambda r: variables_lib.init_variables(model, r, (1, H, W, 3)))(jax.random.key(0)))
  lr = 1e-5
  tx, sched = optim.make(_optim_cfg(lr, constants.ADAPT_GROUPS), 100, variables["params"])
  fresh = lambda: adapt.init_state(variables, tx, mesh)
  with max_traces(1):  # every test's calls share one trace: a retrace raises
    step = unlock.make_step(model, tx, sched, mesh, fresh(),
                                 cfg=_adapt_cfg(jitter_p=0.0, blur_p=0.0))
  repl = shd.replicated(mesh)
  return types.SimpleNamespace(
      mesh=mesh, lr=lr, variables=variables, fresh=fresh, step=step, repl=repl,
      src=jax.device_put(variables["params"], repl),
      base=jax.device_put(jax.random.key(1), repl))


@pytest.fixture(scope="module")
def sem(full):
  """The semantic-only model (decode-head dropout 0.5) on the full model's backbone/head/neck."""
  model = _tiny(instance_heads=False, dropout=0.5)
  params = {k: full.variables["params"][k] for k in ("backbone", "decode_head", "neck")}
  return types.SimpleNamespace(model=model, params=params,
                               batch_stats=full.variables["batch_stats"],
                               cfg=_adapt_cfg(jitter_p=0.0, blur_p=0.0))


@pytest.fixture(scope="module")
def captured(sem):
  """One adapt_loss call (clean batch x_pl, hand-made mixed batch x_m) with BN/dropout capture."""
  rng = np.random.default_rng(3)
  batch = _sem_batch(rng)
  mixed = {"image": rng.standard_normal((B, H, W, 3)).astype(np.float32),
           "labels": rng.integers(0, 18, (B, H, W)).astype(np.int32),
           "weights": np.ones((B, H, W), np.float32)}
  old = _perturbed_stats(sem.batch_stats, rng)
  paths = []
  fn = jax.jit(_capturing(
      lambda p, bs, s, b, m, r: unlock.adapt_loss(sem.model, p, bs, s, b, m, r, cfg=sem.cfg),
      paths))
  (loss, (terms, new_bs)), bn_in, drop = jax.device_get(
      fn(sem.params, old, sem.params, batch, mixed, jax.random.key(7)))
  n = len(bn_in) // 2
  assert len(bn_in) == 2 * n and n > 0 and paths[:n] == paths[n:], paths
  return types.SimpleNamespace(batch=batch, old=old, paths=paths[:n], bn_clean=bn_in[:n],
                               bn_mixed=bn_in[n:], drop=drop, new_bs=new_bs, terms=terms,
                               loss=loss)


# --- 1. EMA teacher -----------------------------------------------------------------------------

def test_ema_alpha_formula():
  for t in range(6):
    np.testing.assert_allclose(float(adapt.ema_alpha(t)), min(1 - 1 / (t + 1), 0.999),
                               rtol=1e-6, atol=0)
  assert float(adapt.ema_alpha(0)) == 0.0
  np.testing.assert_allclose(float(adapt.ema_alpha(998)), 1 - 1 / 999, rtol=1e-6)
  for t in (999, 1000, 5000, 9999, 10**6):
    np.testing.assert_allclose(float(adapt.ema_alpha(t)), 0.999, rtol=1e-7)
  np.testing.assert_allclose(float(adapt.ema_alpha(5, ema_max=0.5)), 0.5)
  # ema_update on a toy tree: unchanged at t = 0, the recursion for t >= 1.
  teacher = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
  params = {"a": jnp.array([5.0, -2.0]), "b": {"c": jnp.array(0.0)}}
  got0 = jax.device_get(adapt.ema_update(teacher, params, jnp.int32(0)))
  np.testing.assert_array_equal(got0["a"], [1.0, 2.0])
  got3 = jax.device_get(adapt.ema_update(teacher, params, jnp.int32(3)))
  np.testing.assert_allclose(got3["a"], 0.75 * np.array([1.0, 2.0]) + 0.25 * np.array([5.0, -2.0]),
                             rtol=1e-6)
  np.testing.assert_allclose(got3["b"]["c"], 0.75 * 3.0, rtol=1e-6)


def test_teacher_is_ema_of_student_over_real_steps(full):
  """Teacher after step t = the recursion applied to the student read *before* step t.

  The teacher starts away from the student so that "unchanged at t = 0" is
  distinguishable from "copied from the student". Also checks the logged
  regulariser against numpy on the same parameters.
  """
  rng = np.random.default_rng(0)
  state = full.fresh()
  params0 = jax.device_get(state["params"])
  t0 = jax.tree.map(lambda p: (p + 0.05 * rng.standard_normal(p.shape)).astype(np.float32),
                    params0)
  state = dict(state, teacher=jax.device_put(t0, full.repl))
  expected = {k: v.astype(np.float64) for k, v in _flat(t0).items()}
  src = _flat(full.variables["params"])
  for t in range(3):
    student = {k: v.astype(np.float64) for k, v in _flat(jax.device_get(state["params"])).items()}
    if t >= 1:
      a = min(1.0 - 1.0 / (t + 1.0), 0.999)
      expected = {k: a * expected[k] + (1.0 - a) * student[k] for k in expected}
    reg = 10.0 * sum(np.mean((student[k] - src[k]) ** 2) for k in student)
    state, m = full.step(state, shd.put_batch(_full_batch(rng), full.mesh), full.src, full.base)
    got = _flat(jax.device_get(state["teacher"]))
    assert got.keys() == expected.keys()
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=f"t={t} {k}")
    # Not vacuous: the teacher is neither the student before nor after the step.
    new_student = _flat(jax.device_get(state["params"]))
    assert max(np.abs(got[k] - new_student[k]).max() for k in got) > 1e-2
    assert max(np.abs(got[k] - student[k]).max() for k in got) > 1e-2
    np.testing.assert_allclose(float(m["loss/param_reg"]), reg, rtol=1e-3, atol=1e-12)
  assert reg > 1e-6  # the student has moved away from the source by step 2
  assert int(state["step"]) == 3 and int(state["first_bad_step"]) == -1


# --- 2. Parameter regulariser -------------------------------------------------------------------

def test_param_regulariser_value_and_gradient():
  rng = np.random.default_rng(1)
  shapes = {"a": {"w": (3, 4), "b": (4,)}, "c": (2, 3, 5)}
  theta = jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                       is_leaf=lambda x: isinstance(x, tuple))
  src = jax.tree.map(lambda p: (p + rng.standard_normal(p.shape)).astype(np.float32), theta)
  ft, fs = _flat(theta), _flat(src)
  want = sum(np.mean((ft[k].astype(np.float64) - fs[k]) ** 2) for k in ft)
  np.testing.assert_allclose(float(adapt.param_regulariser(theta, src)), want, rtol=1e-6)
  grads = _flat(jax.grad(lambda p: 10.0 * adapt.param_regulariser(p, src))(theta))
  for k in ft:
    np.testing.assert_allclose(grads[k], 20.0 * (ft[k].astype(np.float64) - fs[k]) / ft[k].size,
                               rtol=1e-5, err_msg=k)
  assert float(adapt.param_regulariser(theta, theta)) == 0.0


# --- 3. Teacher BatchNorm -----------------------------------------------------------------------

def test_teacher_uses_batch_statistics_not_stored_ones(sem):
  rng = np.random.default_rng(2)
  # A classifier 100x larger than at init: peaked softmax, clear argmax.
  params = dict(sem.params, decode_head=dict(sem.params["decode_head"]))
  params["decode_head"]["conv_seg"] = dict(
      params["decode_head"]["conv_seg"],
      kernel=100.0 * params["decode_head"]["conv_seg"]["kernel"])
  bs = sem.batch_stats
  bs_pert = _perturbed_stats(bs, rng)
  x = rng.standard_normal((B, H, W, 3)).astype(np.float32)

  # Batch statistics, defined here: every BatchNorm replaced by a normaliser
  # with the batch's own mean / biased variance (two-pass) and the layer's
  # scale, bias, epsilon; eval mode otherwise (no dropout); stored stats unused.
  eps = {}

  def batchnorm_from_batch(next_fun, a, kw, ctx):
    if ctx.method_name == "__call__" and isinstance(ctx.module, layers.BatchNorm):
      x_in = a[0].astype(jnp.float32)
      m = jnp.mean(x_in, (0, 1, 2))
      v = jnp.mean(jnp.square(x_in - m), (0, 1, 2))
      eps[ctx.module.path] = ctx.module.epsilon
      scale = ctx.module.get_variable("params", "scale")
      bias = ctx.module.get_variable("params", "bias")
      return (x_in - m) / jnp.sqrt(v + ctx.module.epsilon) * scale + bias
    return next_fun(*a, **kw)

  @jax.jit
  def views(params, bs, bs_pert, x):
    teacher = predict_lib.teacher_labels(sem.model, params, bs, x)
    teacher_pert = predict_lib.teacher_labels(sem.model, params, bs_pert, x)
    # Running-average (eval) forward with the perturbed statistics.
    evl = sem.model.apply({"params": params, "batch_stats": bs_pert}, x, train=False)
    with nn.intercept_methods(batchnorm_from_batch):
      ref = sem.model.apply({"params": params, "batch_stats": bs_pert}, x, train=False)
    return teacher, teacher_pert, evl["sem_logits"], ref["sem_logits"]

  (lab, conf), (lab_p, conf_p), evl, ref_logits = jax.device_get(
      views(params, bs, bs_pert, x))
  # Invariant to the stored statistics.
  np.testing.assert_array_equal(lab, lab_p)
  np.testing.assert_allclose(conf, conf_p, rtol=1e-6, atol=1e-7)
  assert eps, "no BatchNorm intercepted"
  probs = _np_softmax(reference.resize_bilinear(ref_logits, (H, W)))
  np.testing.assert_allclose(conf, probs.max(-1), rtol=1e-4, atol=1e-5)
  top2 = np.sort(probs, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(lab[clear], probs.argmax(-1)[clear])
  # ... and not the running-average forward.
  probs_eval = _np_softmax(reference.resize_bilinear(evl, (H, W)))
  assert np.abs(probs_eval.max(-1) - conf).max() > 1e-2
  assert (probs_eval.argmax(-1) != lab).mean() > 0.05
  assert lab.shape == conf.shape == (B, H, W) and lab.dtype == np.int32


# --- 4. Student BatchNorm statistics: clean forward, then mixed forward -------------------------

def _bn_tree_expected(paths, old, *bn_inputs_per_forward):
  """Per BN path: the momentum update by each forward's batch statistics in turn."""
  out = {}
  for i, path in enumerate(paths):
    node = old
    for part in path.split("/"):
      node = node[part]
    stats = [_bn_batch_stats(f[i]) for f in bn_inputs_per_forward]
    out[path] = (_momentum(np.asarray(node["mean"], np.float64), *[s[0] for s in stats]),
                 _momentum(np.asarray(node["var"], np.float64), *[s[1] for s in stats]))
  return out


def _bn_tree_get(tree, path):
  node = tree
  for part in path.split("/"):
    node = node[part]
  return np.asarray(node["mean"]), np.asarray(node["var"])


def test_adapt_loss_updates_bn_clean_then_mixed(captured):
  c = captured
  assert len(c.paths) == len(set(c.paths))
  assert len(_flat(c.old)) == 2 * len(c.paths)  # every BatchNorm of the model was seen
  want = _bn_tree_expected(c.paths, c.old, c.bn_clean, c.bn_mixed)
  swapped = _bn_tree_expected(c.paths, c.old, c.bn_mixed, c.bn_clean)
  only_mixed = _bn_tree_expected(c.paths, c.old, c.bn_mixed)
  for path in c.paths:
    got = _bn_tree_get(c.new_bs, path)
    for j, name in enumerate(("mean", "var")):
      np.testing.assert_allclose(got[j], want[path][j], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{path}/{name}")
  # The order and the count matter, with these inputs.
  assert any(np.abs(_bn_tree_get(c.new_bs, p)[0] - swapped[p][0]).max() > 1e-3 for p in c.paths)
  assert any(np.abs(_bn_tree_get(c.new_bs, p)[0] - only_mixed[p][0]).max() > 1e-2
             for p in c.paths)


def test_step_bn_stats_are_two_student_updates_not_the_teachers(full, captured):
  """After one real step: stats = old updated by the clean and the mixed forward only.

  With x_u = x_pl and augmentation off, the mixed image is x_pl whatever the
  ClassMix mask, so both student forwards (and the teacher's) see the batch
  statistics of x_pl at the initial parameters: expected 0.81·old + 0.19·s.
  One update (0.9/0.1) or three (teacher included, 0.729/0.271) differ.
  """
  c = captured
  state = full.fresh()
  state = dict(state, batch_stats=jax.device_put(c.old, full.repl))
  batch = dict(_full_batch(np.random.default_rng(4)), **{
      keys.IMAGE: c.batch[keys.IMAGE], keys.UNLABELED_IMAGE: c.batch[keys.IMAGE],
      keys.SEMANTIC: c.batch[keys.SEMANTIC]})
  state, _ = full.step(state, shd.put_batch(batch, full.mesh), full.src, full.base)
  new_bs = jax.device_get(state["batch_stats"])
  two = _bn_tree_expected(c.paths, c.old, c.bn_clean, c.bn_clean)
  one = _bn_tree_expected(c.paths, c.old, c.bn_clean)
  three = _bn_tree_expected(c.paths, c.old, c.bn_clean, c.bn_clean, c.bn_clean)
  for path in c.paths:
    got = _bn_tree_get(new_bs, path)
    for j in range(2):
      np.testing.assert_allclose(got[j], two[path][j], rtol=1e-4, atol=1e-5, err_msg=path)
      assert np.abs(got[j] - one[path][j]).max() > 1e-3, path
      assert np.abs(got[j] - three[path][j]).max() > 1e-3, path


# --- 5. Independent dropout masks in the two student forwards ------------------------------------

def test_student_forwards_draw_different_dropout_masks(captured):
  drop = captured.drop
  assert len(drop) == 2, "expected one decode-head dropout per student forward"
  masks = []
  for x_in, x_out in drop:
    x_in, x_out = np.asarray(x_in), np.asarray(x_out)
    kept = (x_out != 0).any((1, 2))                       # [B, C]: channel-wise (Dropout2d)
    live = (x_in != 0).any((1, 2))
    sel = np.broadcast_to(kept[:, None, None], x_out.shape)
    np.testing.assert_allclose(x_out[sel], 2.0 * x_in[sel], rtol=1e-6)  # 1/(1-0.5)
    assert 0.2 < kept[live].mean() < 0.8
    masks.append((kept, live))
  (k1, l1), (k2, l2) = masks
  both = l1 & l2
  assert both.sum() >= 16
  assert (k1[both] != k2[both]).mean() > 0.2


# --- 6. + 7. The full step: adaptation groups, one compilation, sharding, NaN latch ---------------

def _group_lr_mult(path: str) -> float:
  """The adaptation recipe from docs/method.md §7.6, by our parameter paths."""
  if path.startswith("decode_head/"):
    return 1e4
  if path.startswith("neck/"):
    return 10.0
  if path.startswith(("modal/", "amodal/")):
    return 0.1
  return 1.0


def test_full_step_moves_groups_by_lr_times_multiplier(full):
  """AdamW's first step moves a weight with |g| >> eps by lr·mult (+ <= ~1 % decay, rounding)."""
  state = full.fresh()
  before = _flat(jax.device_get(state["params"]))
  rng = np.random.default_rng(5)
  state, m = full.step(state, shd.put_batch(_full_batch(rng), full.mesh), full.src, full.base)
  np.testing.assert_allclose(float(m["lr"]), full.lr, rtol=1e-6)
  after = _flat(jax.device_get(state["params"]))
  biggest = {}
  for k in before:
    mult = _group_lr_mult(k)
    d = np.abs(after[k].astype(np.float64) - before[k]).max() / (full.lr * mult)
    biggest[mult] = max(biggest.get(mult, 0.0), d)
  assert set(biggest) == {1e4, 10.0, 0.1, 1.0}
  for mult, ratio in biggest.items():
    assert 0.95 < ratio < 1.05, (mult, ratio, biggest)  # groups differ by >= 10x


def test_full_step_sharded_compiles_once_and_latches_nan(full):
  rng = np.random.default_rng(6)
  batch = shd.put_batch(_full_batch(rng), full.mesh)
  assert batch[keys.IMAGE].sharding.spec == jax.sharding.PartitionSpec("data")
  assert batch[keys.UNLABELED_IMAGE].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(batch[keys.IMAGE].addressable_shards) == 4
  assert batch[keys.IMAGE].addressable_shards[0].data.shape[0] == B // 4

  state = full.fresh()
  state, m = full.step(state, batch, full.src, full.base)
  m = jax.device_get(m)
  for name, v in m.items():
    assert np.isfinite(v), name
  for branch in ("modal", "amodal"):
    assert m[f"loss/{branch}/rpn_cls"] > 0 and m[f"loss/{branch}/mask"] > 0
  assert m["loss/sem"] > 0 and m["loss/mix/sem"] > 0
  assert m["loss/param_reg"] == 0.0  # student == source at step 0
  leaf = jax.tree.leaves(state["params"])[0]
  assert leaf.sharding.is_fully_replicated

  bad = _full_batch(rng)
  bad[keys.IMAGE][1] = np.nan
  state, m = full.step(state, shd.put_batch(bad, full.mesh), full.src, full.base)
  assert not np.isfinite(float(m["loss"]))
  state, _ = full.step(state, shd.put_batch(_full_batch(rng), full.mesh), full.src, full.base)
  assert int(state["step"]) == 3
  assert int(state["first_bad_step"]) == 1

  # A NaN only in the unlabelled crops (teacher / mixed branch) is caught too.
  state = full.fresh()
  bad = _full_batch(rng)
  bad[keys.UNLABELED_IMAGE][:] = np.nan
  state, _ = full.step(state, shd.put_batch(bad, full.mesh), full.src, full.base)
  assert int(state["step"]) == 1 and int(state["first_bad_step"]) == 0
  # Compiled once: `full.step` is traced at most once (max_traces in the fixture).
