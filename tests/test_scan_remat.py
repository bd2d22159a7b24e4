"""Compile-time and memory settings leave the network's numbers alone.

* ``scan_blocks``: one ``nn.scan`` per MiT stage over stacked parameters vs
  the unrolled blocks, same weights (``mit.stack_blocks``): equal outputs and
  equal gradients (float tolerance), and the layouts round-trip exactly;
* ``remat`` / ``remat_head``: ``jax.checkpoint`` recomputes the forward in
  the backward pass, so loss and gradients are those without it;
* ``compute_dtype="bfloat16"`` (f32 parameters, f32 logits and losses) agrees
  with float32 within bounds set by bf16's 8-bit mantissa;
* a checkpoint of the other layout is refused with the command that converts it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.data import keys
from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models import layers
from unlock_jax.models import mit
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import steps

DEPTHS = (2, 1, 3, 2)
MIT_KW = dict(dims=(8, 16, 24, 32), depths=DEPTHS, heads=(1, 2, 2, 4),
              simpool=True, drop_path_rate=0.1)


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def unrolled_params(image):
  v = mit.MiT(**MIT_KW).init(jax.random.key(0), image, train=False)
  # Random (not init-valued) norms and biases, so a mixed-up block shows.
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32),
                      v["params"])


def _features_loss(model, params, image):
  feats = model.apply({"params": params}, image, train=False)
  w = [np.linspace(-1, 1, f.shape[-1], dtype=np.float32) for f in feats]
  return sum(jnp.mean(f * wi) for f, wi in zip(feats, w)), feats


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_and_unrolled_give_equal_outputs_and_gradients(image, unrolled_params,
                                                                remat):
  scanned = mit.stack_blocks(unrolled_params, DEPTHS)
  assert set(scanned) - set(unrolled_params) == {"block1", "block2", "block3", "block4"}
  assert scanned["block3"]["mlp"]["fc1"]["kernel"].shape == (3, 24, 96)
  np.testing.assert_array_equal(scanned["block3"]["mlp"]["fc1"]["kernel"][2],
                                unrolled_params["block3_2"]["mlp"]["fc1"]["kernel"])
  # The scanned module's own tree has the stacked structure and shapes.
  own = jax.eval_shape(lambda: mit.MiT(scan_blocks=True, **MIT_KW).init(
      jax.random.key(0), image, train=False))["params"]
  assert jax.tree.structure(own) == jax.tree.structure(scanned)
  assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, scanned)

  fn = lambda m: jax.jit(jax.value_and_grad(  # noqa: E731
      lambda p, x: _features_loss(m, p, x), has_aux=True))
  (lu, fu), gu = fn(mit.MiT(**MIT_KW))(unrolled_params, image)
  (ls, fs), gs = fn(mit.MiT(scan_blocks=True, remat=remat, **MIT_KW))(scanned, image)
  for a, b in zip(fu, fs):
    np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(ls, lu, rtol=1e-5)
  gs = mit.unstack_blocks(gs)
  assert jax.tree.structure(gs) == jax.tree.structure(gu)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(gu)[0], jax.tree.leaves(gs)):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


def test_scanned_bfloat16_training_forward_keeps_its_dtype(image, unrolled_params):
  """The scanned drop-path rate is a float32 array; the bf16 carry stays bf16."""
  model = mit.MiT(scan_blocks=True, dtype=jnp.bfloat16, **MIT_KW)
  params = mit.stack_blocks(unrolled_params, DEPTHS)
  feats = jax.jit(lambda p, x: model.apply({"params": p}, x, train=True,
                                           rngs={"dropout": jax.random.key(1)}))(
                                               params, image)
  assert all(f.dtype == jnp.bfloat16 for f in feats)


def test_layouts_round_trip_and_refuse_wrong_depths(unrolled_params):
  back = mit.unstack_blocks(mit.stack_blocks(unrolled_params, DEPTHS))
  assert jax.tree.structure(back) == jax.tree.structure(unrolled_params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(unrolled_params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="stage 3"):
    mit.stack_blocks(unrolled_params, (2, 1, 4, 2))
  with pytest.raises(ValueError, match="stage 3"):
    mit.stack_blocks(unrolled_params, (2, 1, 2, 2))


def test_scanned_drop_path_uses_each_blocks_rate(image):
  """Train mode: the scanned rates are the unrolled ones (linear 0 .. rate)."""
  model = mit.MiT(scan_blocks=True, **dict(MIT_KW, drop_path_rate=0.0))
  v = model.init(jax.random.key(0), image, train=False)
  a = model.apply(v, image, train=True, rngs={"dropout": jax.random.key(1)})
  b = model.apply(v, image, train=False)
  for x, y in zip(a, b):  # rate 0 everywhere: training forward is deterministic
    np.testing.assert_allclose(x, y, atol=1e-6)
  model = mit.MiT(scan_blocks=True, **dict(MIT_KW, drop_path_rate=0.9))
  a = model.apply(v, image, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a[-1], b[-1], atol=1e-3)


def _tiny_cfg(**kw):
  cfg = defaults.tiny_model_config()
  cfg.mit.depths = (1, 1, 2, 1)
  cfg.deformable = False  # its compile dominates; remat wraps the blocks, not it
  for k, v in kw.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(2)
  return {keys.IMAGE: rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
          keys.SEMANTIC: rng.integers(0, 18, (2, 64, 64)).astype(np.int32)}


@pytest.fixture(scope="module")
def tiny_variables(batch):
  model = amodalpass.build(_tiny_cfg())
  return variables_lib.init_variables(model, jax.random.key(0), (1, 64, 64, 3))


def _loss_and_grads(cfg, variables, batch):
  model = amodalpass.build(cfg)
  loss_cfg = type("L", (), {"sem_normalize": "all_pixels"})
  fn = jax.jit(jax.value_and_grad(
      lambda p: steps.source_loss(model, p, variables["batch_stats"], batch,
                                  jax.random.key(3), loss_cfg=loss_cfg), has_aux=True))
  (loss, (_, new_bs)), grads = fn(variables["params"])
  return loss, grads, new_bs


def test_remat_leaves_loss_and_gradients_unchanged(tiny_variables, batch):
  """Training forward (dropout, drop-path, BatchNorm batch statistics) with and
  without: both policies, on the blocks and on the decode head."""
  loss0, g0, bs0 = _loss_and_grads(_tiny_cfg(), tiny_variables, batch)
  for policy, head in (("full", "full"), ("dots", "dots")):
    loss1, g1, bs1 = _loss_and_grads(_tiny_cfg(remat=policy, remat_head=head),
                                     tiny_variables, batch)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g0)[0],
                            jax.tree.leaves(g1)):
      np.testing.assert_allclose(b, a, atol=1e-7, rtol=1e-5,
                                 err_msg=f"{policy}: {jax.tree_util.keystr(path)}")
    for a, b in zip(jax.tree.leaves(bs0), jax.tree.leaves(bs1)):
      np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="model_cfg.remat_head.*'dots', 'full', 'none'"):
    amodalpass.build(_tiny_cfg(remat_head="everything"))
  assert layers.remat_policy(True) == "full" and layers.remat_policy(False) == "none"


def test_bfloat16_forward_agrees_with_float32(tiny_variables, batch):
  """Same f32 parameters; bf16 activations. bf16 keeps 8 significant bits
  (relative rounding 2^-9 per op); through ~20 layers the logits stay within a
  few percent of their scale, and the argmax flips only where two classes tie."""
  x = batch[keys.IMAGE]
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = amodalpass.build(_tiny_cfg(compute_dtype=dtype))
    out[dtype] = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(
        tiny_variables, x)
  f32, bf16 = out["float32"]["sem_logits"], out["bfloat16"]["sem_logits"]
  assert f32.dtype == bf16.dtype == jnp.float32  # logits (and so losses) in f32
  for name in ("features", "fpn"):
    assert all(f.dtype == jnp.bfloat16 for f in out["bfloat16"][name])
  f32, bf16 = np.asarray(f32, np.float64), np.asarray(bf16, np.float64)
  rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
  assert rel < 0.03, rel
  assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()
  top2 = np.sort(f32, -1)[..., -2:]
  decided = (top2[..., 1] - top2[..., 0]) > 0.05 * np.abs(f32).max()
  np.testing.assert_array_equal(bf16.argmax(-1)[decided], f32.argmax(-1)[decided])


def test_other_layout_is_refused_with_the_command_that_converts_it(tmp_path,
                                                                   tiny_variables):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from unlock_jax import checkpoint
  from unlock_jax import model_info
  from unlock_jax import sharding as shd
  from unlock_jax.tools import convert_layout

  folder = str(tmp_path / "unrolled")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(folder, jax.device_get(tiny_variables))
  ckptr.wait_until_finished()
  model_info.write(folder, _tiny_cfg(), (64, 256), (0.95, 0.95), "test")
  mesh = shd.make_mesh()
  scanned_model = amodalpass.build(_tiny_cfg(scan_blocks=True))
  target = checkpoint.abstract_variables(scanned_model, (1, 64, 64, 3), mesh)
  with pytest.raises(checkpoint.ArchitectureMismatchError) as err:
    checkpoint.load_variables(folder, target)
  cmd = model_info.convert_layout_command(folder, True)
  assert f"`{cmd}`" in str(err.value) and "scan_blocks=True" in str(err.value)

  out = str(tmp_path / "scanned")
  assert convert_layout.convert(folder, out, True) == "unrolled"
  assert model_info.read(out)["model"].scan_blocks
  restored, _ = checkpoint.load_variables(out, target)
  want = mit.stack_blocks(tiny_variables["params"]["backbone"], (1, 1, 2, 1))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(restored["params"]["backbone"])):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
  with pytest.raises(FileExistsError):
    convert_layout.convert(folder, out, True)
