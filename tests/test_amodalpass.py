"""Tests for the assembled AmodalPASS network (tiny config, CPU).

Variables come from `jax.eval_shape` filled with numpy randoms: compiling the
RNG-heavy `init` costs tens of seconds on CPU and is not what is under test.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models import amodalpass
from unlock_jax.models import defaults
from unlock_jax.models.rcnn import roi_heads


def _variables(cfg, shape=(2, 64, 64, 3), seed=0):
  model = amodalpass.build(cfg)
  x = jnp.zeros(shape)
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0),
                          "dropout": jax.random.key(1)}, x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    return jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def _eval_fn(dtype_name):
  cfg = defaults.tiny_model_config()
  cfg.compute_dtype = dtype_name
  model = amodalpass.build(cfg)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


@functools.cache
def _train_fn():
  model = amodalpass.build(defaults.tiny_model_config())
  return jax.jit(lambda v, x, k: model.apply(
      v, x, train=True, rngs={"dropout": k}, mutable=["batch_stats"]))


def _image(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (1, 96, 160, 3)])
def test_output_shapes(shape):
  cfg = defaults.tiny_model_config()
  variables = _variables(cfg, shape)
  out = _eval_fn("float32")(variables, _image(shape))
  b, h, w, _ = shape
  assert out["sem_logits"].shape == (b, h // 4, w // 4, cfg.num_classes)
  assert out["sem_logits"].dtype == jnp.float32
  for s, (f, c) in enumerate(zip(out["features"], cfg.mit.dims)):
    stride = 4 * 2**s
    assert f.shape == (b, h // stride, w // stride, c)
  assert len(out["fpn"]) == 5
  for s, f in enumerate(out["fpn"]):
    stride = 4 * 2**s
    assert f.shape == (b, -(-h // stride), -(-w // stride), cfg.fpn_channels)
  assert np.isfinite(np.asarray(out["sem_logits"])).all()


def test_bfloat16_compute_keeps_float32_params():
  cfg = defaults.tiny_model_config()
  cfg.compute_dtype = "bfloat16"
  variables = _variables(cfg)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)}
  x = _image((2, 64, 64, 3))
  out = _eval_fn("bfloat16")(variables, x)
  assert out["features"][0].dtype == jnp.bfloat16
  assert out["sem_logits"].dtype == jnp.float32
  ref = _eval_fn("float32")(variables, x)
  # bfloat16 keeps ~3 significant digits: close, not equal.
  err = np.abs(np.asarray(out["sem_logits"]) - np.asarray(ref["sem_logits"]))
  scale = np.abs(np.asarray(ref["sem_logits"])).mean()
  assert err.mean() < 0.1 * scale


def test_bfloat16_reaches_the_rcnn_branches():
  """One compute dtype: model.compute_dtype also sets the R-CNN heads' (RPN
  conv, box FCs, mask convs) activations; their parameters stay float32."""
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = True
  cfg.compute_dtype = "bfloat16"
  model = amodalpass.build(cfg)
  variables = _variables(cfg, shape=(1, 64, 64, 3))
  for b in ("modal", "amodal"):
    leaves = jax.tree.leaves(variables["params"][b])
    assert leaves and {a.dtype for a in leaves} == {jnp.dtype(jnp.float32)}
  layers = (nn.Dense, nn.Conv, roi_heads.TransposeConv2x2)
  out, state = jax.jit(lambda v, x: model.apply(
      v, x, train=False, mutable=["intermediates"],
      capture_intermediates=lambda m, name: isinstance(m, layers)))(
          variables, _image((1, 64, 64, 3)))
  inter = state["intermediates"]
  for b in ("modal", "amodal"):
    heads = {
        "rpn_conv": inter[b]["rpn_head"]["rpn_conv"],
        "shared_fcs_0": inter[b]["roi_head"]["bbox_head"]["shared_fcs_0"],
        "fc_cls": inter[b]["roi_head"]["bbox_head"]["fc_cls"],
        "convs_0": inter[b]["roi_head"]["mask_head"]["convs_0"],
        "upsample": inter[b]["roi_head"]["mask_head"]["upsample"],
        "conv_logits": inter[b]["roi_head"]["mask_head"]["conv_logits"]}
    for name, captured in heads.items():
      outs = jax.tree.leaves(captured)
      assert outs and all(a.dtype == jnp.bfloat16 for a in outs), (b, name)
    # Scores and boxes leave the branch in float32.
    assert out[b]["scores"].dtype == jnp.float32
    assert out[b]["boxes"].dtype == jnp.float32


def test_train_mode_updates_batch_stats_and_is_stochastic():
  cfg = defaults.tiny_model_config()
  variables = _variables(cfg)
  x = _image((2, 64, 64, 3))
  out1, upd1 = _train_fn()(variables, x, jax.random.key(3))
  out2, _ = _train_fn()(variables, x, jax.random.key(4))
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(upd1["batch_stats"])
  assert len(before) == len(after) > 0
  assert all(not np.allclose(a, b) for a, b in zip(before, after))
  # Dropout and drop-path draw from the "dropout" stream.
  assert not np.allclose(out1["sem_logits"], out2["sem_logits"])
  # Eval mode runs with batch_stats immutable: flax would raise on any
  # attempted update, so a successful call proves the stats are untouched.
  e1 = _eval_fn("float32")(variables, x)["sem_logits"]
  e2 = _eval_fn("float32")(variables, x)["sem_logits"]
  np.testing.assert_array_equal(e1, e2)


def test_flags_change_param_tree():
  cfg = defaults.tiny_model_config()
  full = _variables(cfg)
  cfg.deformable = False
  cfg.simpool = False
  plain = _variables(cfg)
  bb_full, bb_plain = full["params"]["backbone"], plain["params"]["backbone"]
  for s in ("patch_embed2", "patch_embed4"):
    assert set(bb_full[s]) == {"offset_conv", "modulator_conv", "proj", "norm"}
    assert bb_full[s]["offset_conv"]["kernel"].shape[-1] == 18
    assert bb_full[s]["modulator_conv"]["kernel"].shape[-1] == 9
    assert set(bb_plain[s]) == {"proj", "norm"}
  assert set(bb_plain["patch_embed1"]) == set(bb_full["patch_embed1"])
  for s in range(1, 5):
    assert "image_pool" in bb_full[f"block{s}_0"]["attn"]
    assert "image_pool" not in bb_plain[f"block{s}_0"]["attn"]
  assert set(bb_full["block1_0"]["attn"]["image_pool"]) == {
      "norm_patches", "wq", "wk"}
  assert "bias" not in bb_full["block1_0"]["attn"]["image_pool"]["wq"]
  # The last stage has sr_ratio 1: no reduction conv/norm.
  assert "sr" not in bb_full["block4_0"]["attn"]
  assert bb_full["block1_0"]["attn"]["sr"]["kernel"].shape == (8, 8, 8, 8)


def test_head_and_neck_param_names_follow_reference():
  cfg = defaults.tiny_model_config()
  v = _variables(cfg)
  head = v["params"]["decode_head"]
  assert set(head) == {"embed_layers_0", "embed_layers_1", "embed_layers_2",
                       "embed_layers_3", "fuse_layer", "conv_seg"}
  fuse = head["fuse_layer"]
  assert set(fuse["image_pool_0"]) == {"norm_patches", "wq", "wk"}
  assert set(fuse["aspp_modules_1"]) == {"depthwise_conv", "pointwise_conv"}
  assert fuse["aspp_modules_1"]["depthwise_conv"]["conv"]["kernel"].shape == (
      3, 3, 1, 64)
  assert "bias" not in fuse["bottleneck"]["conv"]
  assert fuse["bottleneck"]["conv"]["kernel"].shape == (3, 3, 5 * 16, 16)
  assert set(v["batch_stats"]["decode_head"]["fuse_layer"]["bottleneck"][
      "bn"]) == {"mean", "var"}
  neck = v["params"]["neck"]
  assert set(neck) == {f"{k}_{i}" for k in ("lateral_convs", "fpn_convs")
                       for i in range(4)}
  assert "bias" in neck["fpn_convs_0"]["conv"]


def test_bad_config_errors():
  cfg = defaults.tiny_model_config()
  cfg.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype"):
    amodalpass.build(cfg)
  cfg = defaults.tiny_model_config()
  cfg.backbone = "mit_b9"
  with pytest.raises(ValueError, match="mit_b9"):
    amodalpass.build(cfg)
