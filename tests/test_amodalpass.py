"""Tests for the assembled AmodalPASS network (tiny config, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models import amodalpass


def _init(cfg, shape=(2, 64, 64, 3)):
  model = amodalpass.build(cfg)
  x = jax.random.normal(jax.random.key(0), shape)
  variables = model.init({"params": jax.random.key(1),
                          "dropout": jax.random.key(2)}, x, train=False)
  return model, variables, x


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (1, 96, 160, 3)])
def test_output_shapes(shape):
  cfg = amodalpass.tiny_model_config()
  model, variables, x = _init(cfg, shape)
  out = model.apply(variables, x, train=False)
  b, h, w, _ = shape
  assert out["sem_logits"].shape == (b, h // 4, w // 4, cfg.num_classes)
  assert out["sem_logits"].dtype == jnp.float32
  dims = cfg.mit.dims
  for s, (f, c) in enumerate(zip(out["features"], dims)):
    stride = 4 * 2**s
    assert f.shape == (b, h // stride, w // stride, c)
  assert len(out["fpn"]) == 5
  for s, f in enumerate(out["fpn"]):
    stride = 4 * 2**s
    assert f.shape == (b, -(-h // stride), -(-w // stride), cfg.fpn_channels)
  assert np.isfinite(np.asarray(out["sem_logits"])).all()


def test_bfloat16_compute_keeps_float32_params():
  cfg = amodalpass.tiny_model_config()
  cfg.compute_dtype = "bfloat16"
  model, variables, x = _init(cfg)
  dtypes = {a.dtype for a in jax.tree.leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  out, _ = model.apply(variables, x, train=True,
                       rngs={"dropout": jax.random.key(3)},
                       mutable=["batch_stats"])
  assert out["features"][0].dtype == jnp.bfloat16
  assert out["sem_logits"].dtype == jnp.float32
  ref = model.apply(variables, x, train=False)
  cfg32 = amodalpass.tiny_model_config()
  ref32 = amodalpass.build(cfg32).apply(variables, x, train=False)
  # bf16 keeps ~3 significant digits; the logits must still agree roughly.
  np.testing.assert_allclose(np.asarray(ref["sem_logits"]),
                             np.asarray(ref32["sem_logits"]), atol=0.15,
                             rtol=0.1)


def test_batch_stats_update_only_in_train_mode():
  cfg = amodalpass.tiny_model_config()
  model, variables, x = _init(cfg)
  _, upd = model.apply(variables, x, train=True,
                       rngs={"dropout": jax.random.key(3)},
                       mutable=["batch_stats"])
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(upd["batch_stats"])
  assert len(before) == len(after) > 0
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  _, upd_eval = model.apply(variables, x, train=False,
                            mutable=["batch_stats"])
  for a, b in zip(before, jax.tree.leaves(upd_eval["batch_stats"])):
    np.testing.assert_array_equal(a, b)


def test_train_mode_is_stochastic_and_eval_is_not():
  cfg = amodalpass.tiny_model_config()
  cfg.drop_path_rate = 0.5
  model, variables, x = _init(cfg)
  run = lambda k: model.apply(variables, x, train=True,  # noqa: E731
                              rngs={"dropout": jax.random.key(k)},
                              mutable=["batch_stats"])[0]["sem_logits"]
  assert not np.allclose(run(4), run(5))
  e1 = model.apply(variables, x, train=False)["sem_logits"]
  e2 = model.apply(variables, x, train=False)["sem_logits"]
  np.testing.assert_array_equal(e1, e2)


def test_flags_change_param_tree():
  cfg = amodalpass.tiny_model_config()
  _, full, _ = _init(cfg)
  cfg.deformable = False
  cfg.simpool = False
  _, plain, _ = _init(cfg)
  bb_full, bb_plain = full["params"]["backbone"], plain["params"]["backbone"]
  for s in ("patch_embed2", "patch_embed4"):
    assert set(bb_full[s]) == {"offset_conv", "modulator_conv", "proj", "norm"}
    assert set(bb_plain[s]) == {"proj", "norm"}
  assert set(bb_plain["patch_embed1"]) == set(bb_full["patch_embed1"])
  for s in range(1, 5):
    assert "image_pool" in bb_full[f"block{s}_0"]["attn"]
    assert "image_pool" not in bb_plain[f"block{s}_0"]["attn"]
  assert set(bb_full["block1_0"]["attn"]["image_pool"]) == {
      "norm_patches", "wq", "wk"}
  # The last stage has sr_ratio 1: no reduction conv/norm.
  assert "sr" not in bb_full["block4_0"]["attn"]
  assert "sr" in bb_full["block1_0"]["attn"]


def test_head_and_neck_param_names_follow_reference():
  cfg = amodalpass.tiny_model_config()
  _, v, _ = _init(cfg)
  head = v["params"]["decode_head"]
  assert set(head) == {"embed_layers_0", "embed_layers_1", "embed_layers_2",
                       "embed_layers_3", "fuse_layer", "conv_seg"}
  fuse = head["fuse_layer"]
  assert set(fuse["image_pool_0"]) == {"norm_patches", "wq", "wk"}
  assert set(fuse["aspp_modules_1"]) == {"depthwise_conv", "pointwise_conv"}
  assert "bias" not in fuse["bottleneck"]["conv"]
  assert fuse["bottleneck"]["conv"]["kernel"].shape == (3, 3, 5 * 16, 16)
  assert set(v["batch_stats"]["decode_head"]["fuse_layer"]["bottleneck"][
      "bn"]) == {"mean", "var"}
  neck = v["params"]["neck"]
  assert set(neck) == {f"{k}_{i}" for k in ("lateral_convs", "fpn_convs")
                       for i in range(4)}


def test_bad_config_errors():
  cfg = amodalpass.tiny_model_config()
  cfg.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype"):
    amodalpass.build(cfg)
  cfg = amodalpass.tiny_model_config()
  cfg.backbone = "mit_b9"
  with pytest.raises(ValueError, match="mit_b9"):
    amodalpass.build(cfg)
