"""MiT pieces, SimPool, resizes, DAFormer head and FPN against independent oracles.

Oracles are numpy written here or PyTorch functional ops (conv2d,
F.interpolate, max_pool2d, batch_norm) fed with our parameters transposed to
PyTorch layouts inside the test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models import daformer_head
from unlock_jax.models import fpn as fpn_lib
from unlock_jax.models import layers
from unlock_jax.models import mit
from unlock_jax.models import simpool

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _random_params(module, *args, seed=0, **kwargs):
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args,
                                              **kwargs))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if "'var'" in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return (rng.normal(size=s.shape) * 0.3).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _np_layer_norm(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _np_simpool(tokens, p):
  """Reference SimPool2.forward (gamma=None) for tokens [B, N, C]."""
  c = tokens.shape[-1]
  q = tokens.mean(1, keepdims=True) @ p["wq"]["kernel"]  # [B, 1, C]
  kv = _np_layer_norm(tokens, p["norm_patches"]["scale"],
                      p["norm_patches"]["bias"], 1e-6)
  k = kv @ p["wk"]["kernel"]
  logits = (q @ k.transpose(0, 2, 1)) * c ** -0.5  # [B, 1, N]
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  return (attn @ kv)[:, 0]


def test_simpool_matches_numpy_on_tokens_and_maps():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 7, 12)).astype(np.float32) * 2 + 0.5
  module = simpool.SimPool()
  v = _random_params(module, x)
  got_map = module.apply(v, x)
  got_tok = module.apply(v, x.reshape(2, 35, 12))
  ref = _np_simpool(x.reshape(2, 35, 12).astype(np.float64), v["params"])
  np.testing.assert_allclose(got_map, ref, atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(got_tok, ref, atol=1e-5, rtol=1e-4)


def test_attention_simpool_gating():
  """Gated output = y + y * sigmoid(SimPool(y)), y the ungated attention."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 6, 16)).astype(np.float32)
  gated = mit.Attention(16, 2, 2, simpool=True)
  v = _random_params(gated, x)
  plain_params = {k: w for k, w in v["params"].items() if k != "image_pool"}
  y = np.asarray(mit.Attention(16, 2, 2, simpool=False).apply(
      {"params": plain_params}, x), np.float64)
  pooled = _np_simpool(y.reshape(2, 48, 16), v["params"]["image_pool"])
  ref = y + y / (1 + np.exp(-pooled[:, None, None, :]))
  np.testing.assert_allclose(gated.apply(v, x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dilation", [1, 2, 6])
def test_depthwise3x3_value_and_grads_match_grouped_conv(dilation):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 7, 9, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 5)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(2, 7, 9, 5)), jnp.float32)
  d = dilation

  def grouped(x, k):
    return jax.lax.conv_general_dilated(
        x, k[:, :, None, :], (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=5,
        precision=jax.lax.Precision.HIGHEST)

  ours = lambda x, k: layers.depthwise3x3(x, k, d)  # noqa: E731
  np.testing.assert_allclose(ours(x, k), grouped(x, k), atol=1e-5, rtol=1e-5)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * probe)  # noqa: E731
  got = jax.grad(loss(ours), argnums=(0, 1))(x, k)
  ref = jax.grad(loss(grouped), argnums=(0, 1))(x, k)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gelu_exact_value_and_grad():
  x = jnp.linspace(-6.0, 6.0, 241)
  np.testing.assert_allclose(layers.gelu_exact(x),
                             F.gelu(_t(np.asarray(x))).numpy(), atol=1e-6)
  xt = _t(np.asarray(x)).requires_grad_(True)
  F.gelu(xt).sum().backward()
  np.testing.assert_allclose(jax.grad(lambda v: layers.gelu_exact(v).sum())(x),
                             xt.grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("src,dst", [((13, 7), (100, 50)), ((25, 25), (100, 100)),
                                     ((7, 13), (25, 50)), ((20, 30), (9, 14))])
def test_resize_bilinear_matches_torch(src, dst):
  x = np.random.default_rng(3).normal(size=(2, *src, 3)).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst,
                      mode="bilinear", align_corners=False)
  got = layers.resize_bilinear(jnp.asarray(x), dst)
  np.testing.assert_allclose(got, ref.numpy().transpose(0, 2, 3, 1),
                             atol=1e-5)


@pytest.mark.parametrize("src,dst", [((13, 64), (25, 128)), ((7, 4), (13, 7)),
                                     ((25, 13), (50, 25)), ((14, 3), (20, 7))])
def test_resize_nearest_matches_torch(src, dst):
  x = np.random.default_rng(4).normal(size=(1, *src, 2)).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst,
                      mode="nearest")
  got = layers.resize_nearest(jnp.asarray(x), dst)
  np.testing.assert_array_equal(got, ref.numpy().transpose(0, 2, 3, 1))


def _t(a):
  return torch.from_numpy(np.array(a, np.float32))  # writable copy


def _conv_w(kernel):
  """Flax HWIO kernel -> torch OIHW."""
  return _t(np.asarray(kernel).transpose(3, 2, 0, 1))


def test_fpn_matches_torch_functional():
  rng = np.random.default_rng(5)
  shapes = [(2, 25, 13, 4), (2, 13, 7, 6), (2, 7, 4, 8), (2, 4, 2, 10)]
  feats = [rng.normal(size=s).astype(np.float32) for s in shapes]
  module = fpn_lib.FPN(channels=6)
  v = _random_params(module, feats)
  got = module.apply(v, feats)
  p = v["params"]
  xs = [_t(f.transpose(0, 3, 1, 2)) for f in feats]
  lat = [F.conv2d(x, _conv_w(p[f"lateral_convs_{i}"]["conv"]["kernel"]),
                  _t(p[f"lateral_convs_{i}"]["conv"]["bias"]))
         for i, x in enumerate(xs)]
  for i in range(3, 0, -1):
    lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:],
                                            mode="nearest")
  outs = [F.conv2d(l, _conv_w(p[f"fpn_convs_{i}"]["conv"]["kernel"]),
                   _t(p[f"fpn_convs_{i}"]["conv"]["bias"]), padding=1)
          for i, l in enumerate(lat)]
  outs.append(F.max_pool2d(outs[-1], 1, stride=2))
  assert len(got) == 5
  for g, r in zip(got, outs):
    np.testing.assert_allclose(g, r.numpy().transpose(0, 2, 3, 1), atol=1e-4,
                               rtol=1e-4)


def _conv_module(x, p, stats, *, padding=0, dilation=1, groups=1):
  """mmcv ConvModule (conv, eval-mode BN, ReLU) with torch functional ops."""
  y = F.conv2d(x, _conv_w(p["conv"]["kernel"]), None, padding=padding,
               dilation=dilation, groups=groups)
  y = F.batch_norm(y, _t(stats["bn"]["mean"]), _t(stats["bn"]["var"]),
                   _t(p["bn"]["scale"]), _t(p["bn"]["bias"]), False, 0.1,
                   1e-5)
  return F.relu(y)


def test_daformer_head_matches_torch_functional_eval():
  rng = np.random.default_rng(6)
  shapes = [(2, 16, 12, 4), (2, 8, 6, 6), (2, 4, 3, 8), (2, 2, 2, 10)]
  feats = [rng.normal(size=s).astype(np.float32) for s in shapes]
  module = daformer_head.DAFormerHead(num_classes=5, embed_dims=6,
                                      channels=7, dilations=(1, 2, 3))
  v = _random_params(module, feats, train=False)
  got = module.apply(v, feats, train=False)
  p, s = v["params"], v["batch_stats"]
  embedded = []
  for i, f in enumerate(feats):
    e = f @ p[f"embed_layers_{i}"]["proj"]["kernel"] + p[f"embed_layers_{i}"][
        "proj"]["bias"]
    e = F.interpolate(_t(e.transpose(0, 3, 1, 2)), size=(16, 12),
                      mode="bilinear", align_corners=False)
    embedded.append(e)
  x = torch.cat(embedded, 1)  # [B, 24, 16, 12]
  fp, fs = p["fuse_layer"], s["fuse_layer"]
  tokens = x.numpy().transpose(0, 2, 3, 1).reshape(2, -1, 24)
  pooled = _np_simpool(tokens.astype(np.float64), fp["image_pool_0"])
  pooled = _conv_module(_t(pooled)[:, :, None, None], fp["image_pool_1"],
                        fs["image_pool_1"])
  outs = [pooled.expand(-1, -1, 16, 12)]
  outs.append(_conv_module(x, fp["aspp_modules_0"], fs["aspp_modules_0"]))
  for i, d in ((1, 2), (2, 3)):
    name = f"aspp_modules_{i}"
    y = _conv_module(x, fp[name]["depthwise_conv"],
                     fs[name]["depthwise_conv"], padding=d, dilation=d,
                     groups=24)
    outs.append(_conv_module(y, fp[name]["pointwise_conv"],
                             fs[name]["pointwise_conv"]))
  y = _conv_module(torch.cat(outs, 1), fp["bottleneck"], fs["bottleneck"],
                   padding=1)
  ref = F.conv2d(y, _conv_w(p["conv_seg"]["kernel"]),
                 _t(p["conv_seg"]["bias"]))
  assert got.shape == (2, 16, 12, 5) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref.numpy().transpose(0, 2, 3, 1),
                             atol=1e-4, rtol=1e-4)


def test_drop_path_is_per_sample_and_rescaled():
  x = jnp.ones((64, 3, 4, 2))
  y = layers.DropPath(0.25).apply({}, x, deterministic=False,
                                  rngs={"dropout": jax.random.key(0)})
  per_sample = np.asarray(y).reshape(64, -1)
  # Each sample is either dropped (0) or kept and scaled by 1/(1-rate).
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  assert np.all(per_sample.min(1) == per_sample.max(1))
  assert 0 < (per_sample[:, 0] == 0).sum() < 64
  np.testing.assert_array_equal(
      layers.DropPath(0.25).apply({}, x, deterministic=True), x)


def test_mit_named_sizes_and_strides():
  assert mit.mit_size("mit_b5").depths == (3, 6, 40, 3)
  assert mit.mit_size("mit_b0").dims == (32, 64, 160, 256)
  with pytest.raises(ValueError, match="mit_b7"):
    mit.mit_size("mit_b7")
  model = mit.MiT(dims=(4, 8, 12, 16), depths=(1, 1, 1, 1),
                  heads=(1, 2, 3, 4))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 50, 70, 3)),
                         train=False))
  outs = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 50, 70, 3)),
                                              train=False), shapes)
  # PyTorch conv rounding: 50 -> 13 -> 7 -> 4 -> 2, 70 -> 18 -> 9 -> 5 -> 3.
  assert [o.shape for o in outs] == [(1, 13, 18, 4), (1, 7, 9, 8),
                                     (1, 4, 5, 12), (1, 2, 3, 16)]
  with pytest.raises(ValueError, match="divisible"):
    mit.MiT(dims=(4, 8, 12, 16), depths=(1, 1, 1, 1),
            heads=(1, 3, 3, 4)).init(jax.random.key(0),
                                     jnp.zeros((1, 32, 32, 3)), train=False)
