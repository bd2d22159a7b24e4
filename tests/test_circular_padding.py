"""Circular horizontal padding (``circular=True``: the input is a full 360° panorama).

Oracles written here: every padded layer with ``circular=True`` equals the
same layer without horizontal padding (``lax.conv`` with VALID columns) on an
input wrap-padded by numpy, and PyTorch's ``Conv2d(padding_mode="circular")``
with the circular padding on W alone; the deformable samplers against a numpy
bilinear sampler whose columns are taken modulo W; the full tiny network
(deformable patch embeds with non-zero offsets, SimPool, DAFormer head, FPN)
is roll-equivariant in circular mode and not in flat mode; parameters do not
depend on the mode and ``circular=False`` is the default program.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unlock_jax.models import amodalpass
from unlock_jax.models import daformer_head
from unlock_jax.models import defaults
from unlock_jax.models import deform
from unlock_jax.models import fpn as fpn_lib
from unlock_jax.models import layers
from unlock_jax.models import mit
from unlock_jax.models import predict as predict_lib
from unlock_jax.models.rcnn import rpn

HI = jax.lax.Precision.HIGHEST


def np_wrap(x, left, right):
  """Wrap-pads the columns (axis 2) by numpy concatenation (pads up to W)."""
  x = np.asarray(x)
  assert max(left, right) <= x.shape[2]
  return np.concatenate([x[:, :, x.shape[2] - left:], x, x[:, :, :right]], axis=2)


def np_wrap_idx(x, left, right):
  """Wrap-pads the columns by modular indexing (any width)."""
  w = x.shape[2]
  return np.asarray(x)[:, :, np.arange(-left, w + right) % w]


def valid_w_conv(x, kernel, *, stride=1, pad_h=0, dilation=1, groups=1):
  """The layer without horizontal padding: zero rows, VALID columns (NHWC, HWIO)."""
  return jax.lax.conv_general_dilated(
      jnp.asarray(x), jnp.asarray(kernel), (stride, stride), ((pad_h, pad_h), (0, 0)),
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, precision=HI)


def np_layer_norm(y, p, eps=1e-5):
  y = np.asarray(y, np.float64)
  mu = y.mean(-1, keepdims=True)
  var = ((y - mu) ** 2).mean(-1, keepdims=True)
  return (y - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def init(mod, *args, **kw):
  """Random variables of ``mod`` (see :func:`random_variables`)."""
  return random_variables(mod, args, np.random.default_rng(100), **kw)


def run(mod, variables, *args, **kw):
  """``mod.apply`` jitted (one compile instead of op-by-op dispatch)."""
  return jax.jit(lambda v, *a: mod.apply(v, *a, **kw))(variables, *args)


def random_variables(model, args, rng, **kw):
  """Random variables of the init's shapes (``init`` compiles for longer than
  the forward): unit-variance kernels, LayerNorm scales around 1, stored
  BatchNorm statistics (0, 1); the deformable offset and modulator convs
  non-zero (zero at init) so that samples move by a few pixels and wrap."""
  args = args if isinstance(args, tuple) else (args,)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))

  def fill(path, leaf):
    name = path[-1].key
    n = rng.normal(size=leaf.shape).astype(np.float32)
    if name in ("mean", "var"):
      return np.full(leaf.shape, float(name == "var"), np.float32)
    if name == "kernel" and path[-2].key in ("offset_conv", "modulator_conv"):
      return 0.5 * n
    if name == "kernel":
      return n / np.sqrt(np.prod(leaf.shape[:-1]))
    return n * 0.1 + (name == "scale")

  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: np.asarray(fill(path, leaf), np.float32), shapes)


def rand(rng, *shape):
  return rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("left,right", [(0, 0), (2, 3), (4, 4), (9, 6)])
def test_wrap_pad_w_matches_numpy(left, right):
  x = rand(np.random.default_rng(0), 2, 3, 4, 5)
  got = np.asarray(layers.wrap_pad_w(jnp.asarray(x), left, right))
  want = np_wrap_idx(x, left, right)
  if max(left, right) <= 4:
    np.testing.assert_array_equal(want, np.concatenate(
        [x[:, :, 4 - left:], x, x[:, :, :right]], axis=2))
  np.testing.assert_array_equal(got, want)
  assert got[0, 0, left - 1 if left else 0, 0] == x[0, 0, -1 if left else 0, 0]


def test_patch_embed_conv_is_valid_conv_of_wrapped_input():
  rng = np.random.default_rng(1)
  x = rand(rng, 2, 12, 20, 3)
  mod = mit.OverlapPatchEmbed(8, 7, 4)
  v = init(mod, x)
  p = v["params"]
  got = run(mod, v, x, circular=True)
  conv = valid_w_conv(np_wrap(x, 3, 3), p["proj"]["kernel"], stride=4, pad_h=3)
  want = np_layer_norm(conv + p["proj"]["bias"], p["norm"])
  assert got.shape == (2, 3, 5, 8)
  np.testing.assert_allclose(got, want, atol=2e-5)
  # Not vacuous: the zero-padded conv differs at the ends only.
  flat = run(mod, v, x)
  assert np.abs(np.asarray(flat - got)[:, :, [0, -1]]).max() > 1e-2
  np.testing.assert_allclose(flat[:, :, 1:-1], got[:, :, 1:-1], atol=2e-5)


@pytest.mark.parametrize("dilation", [1, 2, 9])
def test_depthwise3x3_and_its_gradient(dilation):
  rng = np.random.default_rng(2)
  x, k, g = rand(rng, 2, 5, 7, 3), rand(rng, 3, 3, 3), rand(rng, 2, 5, 7, 3)
  d = dilation  # 9 > W = 7: the padding wraps more than once

  def explicit(x, k):
    cols = np.arange(-d, x.shape[2] + d) % x.shape[2]
    return valid_w_conv(jnp.take(x, cols, axis=2), k[:, :, None, :], pad_h=d,
                        dilation=d, groups=x.shape[-1])

  got = layers.depthwise3x3(jnp.asarray(x), jnp.asarray(k), d, True)
  want = valid_w_conv(np_wrap_idx(x, d, d), k[:, :, None, :], pad_h=d, dilation=d,
                      groups=3)
  np.testing.assert_allclose(got, want, atol=1e-5)
  ours = lambda x, k: jnp.sum(layers.depthwise3x3(x, k, d, True) * g)  # noqa: E731
  ref = lambda x, k: jnp.sum(explicit(x, k) * g)  # noqa: E731
  for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1, stride=2, norm=False, act=False),  # dense conv
    dict(kernel_size=3, padding=6, dilation=6, groups=4, norm=True, act=True),  # ASPP dw
])
def test_conv_module_is_valid_conv_of_wrapped_input(kw):
  rng = np.random.default_rng(3)
  x = rand(rng, 2, 9, 16, 4)
  mod = layers.ConvModule(4, **kw)
  v = init(mod, x, train=False)
  got = run(mod, v, x, train=False, circular=True)
  p, k = kw["padding"], v["params"]["conv"]["kernel"]
  y = valid_w_conv(np_wrap(x, p, p), k, stride=kw.get("stride", 1), pad_h=p,
                   dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
  if kw["norm"]:  # stored statistics (0, 1): y / sqrt(1 + eps) · scale + bias
    bn = v["params"]["bn"]
    y = y / np.sqrt(1 + layers.BN_EPS) * bn["scale"] + bn["bias"]
  else:
    y = y + v["params"]["conv"]["bias"]
  if kw["act"]:
    y = np.maximum(y, 0)
  np.testing.assert_allclose(got, y, atol=1e-5)


def test_fpn_is_numpy_fpn_with_wrapped_convs():
  rng = np.random.default_rng(4)
  feats = [rand(rng, 1, 8 >> i, 32 >> i, 3 + i) for i in range(4)]
  mod = fpn_lib.FPN(channels=5, num_outs=5)
  v = init(mod, feats)
  got = run(mod, v, feats, circular=True)
  p = v["params"]
  lat = [f @ np.asarray(p[f"lateral_convs_{i}"]["conv"]["kernel"][0, 0])
         + p[f"lateral_convs_{i}"]["conv"]["bias"] for i, f in enumerate(feats)]
  for i in range(3, 0, -1):  # exact halves: nearest upsampling is a repeat
    lat[i - 1] = lat[i - 1] + np.repeat(np.repeat(lat[i], 2, 1), 2, 2)
  want = [valid_w_conv(np_wrap(l, 1, 1), p[f"fpn_convs_{i}"]["conv"]["kernel"], pad_h=1)
          + p[f"fpn_convs_{i}"]["conv"]["bias"] for i, l in enumerate(lat)]
  want.append(want[-1][:, ::2, ::2])
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_rpn_conv_is_valid_conv_of_wrapped_input():
  rng = np.random.default_rng(5)
  feats = [rand(rng, 2, 4, 8, 6), rand(rng, 2, 2, 4, 6)]
  mod = rpn.RPNHead(num_anchors=3, feat_channels=7)
  v = init(mod, feats)
  p = v["params"]
  cls, reg = run(mod, v, feats, circular=True)
  for f, c, r in zip(feats, cls, reg):
    h = np.maximum(valid_w_conv(np_wrap(f, 1, 1), p["rpn_conv"]["kernel"], pad_h=1)
                   + p["rpn_conv"]["bias"], 0)
    want_c = h @ np.asarray(p["rpn_cls"]["kernel"][0, 0]) + p["rpn_cls"]["bias"]
    want_r = h @ np.asarray(p["rpn_reg"]["kernel"][0, 0]) + p["rpn_reg"]["bias"]
    np.testing.assert_allclose(c, want_c.reshape(2, -1), atol=1e-5)
    np.testing.assert_allclose(r, want_r.reshape(2, -1, 4), atol=1e-5)


def np_sample_periodic(x, py, px):
  """Bilinear samples of x [B,H,W,C] at [B,...] positions: rows zero outside, columns mod W."""
  b, h, w, c = x.shape
  out = np.zeros(py.shape + (c,))
  for idx in np.ndindex(*py.shape):
    y, xx = py[idx], px[idx]
    y0, x0 = int(np.floor(y)), int(np.floor(xx))
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
      for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
        if 0 <= yy < h:
          out[idx] += wy * wx * x[idx[0], yy, xc % w]
  return out


@pytest.mark.parametrize("impl", ["gather", "dense"])
def test_deformable_sampling_wraps_columns(impl):
  rng = np.random.default_rng(6)
  x = rand(rng, 2, 4, 5, 3)
  py = rng.uniform(-1.5, 4.5, size=(2, 3, 4, 9)).astype(np.float32)
  px = rng.uniform(-6.5, 11.5, size=(2, 3, 4, 9)).astype(np.float32)  # beyond ±W
  sampler = deform.bilinear_gather if impl == "gather" else deform.bilinear_dense
  got = sampler(jnp.asarray(x), jnp.asarray(py), jnp.asarray(px), True)
  np.testing.assert_allclose(got, np_sample_periodic(x, py, px), atol=1e-5)


def np_deform_conv(x, offset, mask, kernel, bias, stride, pad):
  """DCNv2 with periodic columns: tap (i, j) of output (ho, wo) samples
  (ho·s − p + i + dy, wo·s − p + j + dx) (mmcv channel order dy, dx)."""
  b, ho, wo, _ = offset.shape
  k = kernel.shape[0]
  ii, jj = np.divmod(np.arange(k * k), k)
  py = np.arange(ho)[:, None, None] * stride - pad + ii + offset[..., 0::2]
  px = np.arange(wo)[None, :, None] * stride - pad + jj + offset[..., 1::2]
  cols = np_sample_periodic(x, py, px) * mask[..., None]  # [B, Ho, Wo, K, C]
  return np.einsum("byxkc,kco->byxo", cols,
                   kernel.reshape(k * k, *kernel.shape[2:])) + bias


@pytest.mark.parametrize("impl", ["gather", "dense"])
def test_deformable_patch_embed_wraps_offsets_and_samples(impl):
  rng = np.random.default_rng(7)
  x = rand(rng, 1, 8, 12, 4)
  mod = deform.DeformablePatchEmbed(6, 3, 2, impl=impl)
  v = init(mod, x)
  # Non-zero offset/modulator convs (zero at init): offsets up to the clamp
  # ±min(H, W)//4 = 2, so samples cross the seam.
  p = jax.tree.map(lambda a: a, v["params"])
  for name in ("offset_conv", "modulator_conv"):
    p[name] = {"kernel": rand(rng, *p[name]["kernel"].shape),
               "bias": rand(rng, *p[name]["bias"].shape)}
  got = run(mod, {"params": p}, x, circular=True)
  xw = np_wrap(x, 1, 1)
  offset = np.clip(valid_w_conv(xw, p["offset_conv"]["kernel"], stride=2, pad_h=1)
                   + p["offset_conv"]["bias"], -2, 2)
  mask = 2 / (1 + np.exp(-np.asarray(
      valid_w_conv(xw, p["modulator_conv"]["kernel"], stride=2, pad_h=1)
      + p["modulator_conv"]["bias"])))
  assert (np.abs(offset) == 2).mean() > 0.3  # many samples cross the seam
  y = np_deform_conv(x, np.asarray(offset), mask, np.asarray(p["proj"]["kernel"]),
                     np.asarray(p["proj"]["bias"]), 2, 1)
  np.testing.assert_allclose(got, np_layer_norm(y, p["norm"]), atol=1e-4)


def torch_circular_w(x, weight, bias, *, stride=1, pad=1, dilation=1, groups=1):
  """torch ``Conv2d(padding_mode="circular")`` wrapping W only: the rows are
  zero-padded first, the conv's own padding (0, p) is circular."""
  xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
  wt = torch.from_numpy(np.asarray(weight)).permute(3, 2, 0, 1).contiguous()
  conv = torch.nn.Conv2d(xt.shape[1], wt.shape[0], wt.shape[-1], stride=stride,
                         padding=(0, pad), dilation=dilation, groups=groups,
                         padding_mode="circular")
  with torch.no_grad():
    conv.weight.copy_(wt)
    conv.bias.copy_(torch.from_numpy(np.asarray(bias)))
    y = conv(torch.nn.functional.pad(xt, (0, 0, pad, pad)))  # zero rows
    # The same via F.pad(mode="circular") on W and a padding-free conv.
    y2 = torch.nn.functional.conv2d(
        torch.nn.functional.pad(torch.nn.functional.pad(xt, (pad, pad, 0, 0),
                                                        mode="circular"),
                                (0, 0, pad, pad)),
        wt, conv.bias, stride=stride, dilation=dilation, groups=groups)
  torch.testing.assert_close(y, y2)
  return y.permute(0, 2, 3, 1).numpy()


def test_convs_match_torch_circular_padding():
  rng = np.random.default_rng(8)
  x = rand(rng, 2, 16, 24, 4)
  # Patch embed 7×7 / 4 (LayerNorm checked separately above).
  mod = mit.OverlapPatchEmbed(8, 7, 4)
  v = init(mod, x)
  _, st = run(mod, v, x, circular=True, capture_intermediates=True,
              mutable=["intermediates"])
  got = st["intermediates"]["proj"]["__call__"][0]
  kp = v["params"]["proj"]
  np.testing.assert_allclose(got, torch_circular_w(x, kp["kernel"], kp["bias"], stride=4,
                                                   pad=3), atol=1e-4)
  # Dense 3×3 and the dilated depthwise ConvModule (ASPP) without BN.
  for kw in (dict(padding=1), dict(padding=2, dilation=2, groups=4)):
    cm = layers.ConvModule(4, 3, norm=False, act=False, **kw)
    cv = init(cm, x, train=False)["params"]["conv"]
    got = run(cm, {"params": {"conv": cv}}, x, train=False, circular=True)
    np.testing.assert_allclose(got, torch_circular_w(
        x, cv["kernel"], cv["bias"], pad=kw["padding"], dilation=kw.get("dilation", 1),
        groups=kw.get("groups", 1)), atol=1e-4)


# The full network: tiny model, 64×256 panorama, offsets made non-zero.
H, W = 64, 256
MODES = {False: "flat", True: "circular"}


@pytest.fixture(scope="module")
def net():
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = False
  model = amodalpass.build(cfg)
  rng = np.random.default_rng(9)
  image = rand(rng, 1, H, W, 3)
  variables = random_variables(model, image, rng, train=False)

  @jax.jit
  def forward(v, x):
    res = {}
    for circular in (False, True):
      out, st = model.apply(v, x, train=False, circular=circular, mutable=["intermediates"],
                            capture_intermediates=lambda m, _: m.name == "offset_conv")
      res[MODES[circular]] = (out["sem_logits"],
                              predict_lib.semantic_logits(out, (H, W), circular))
    res["offsets"] = [st["intermediates"]["backbone"][s]["offset_conv"]["__call__"][0]
                      for s in ("patch_embed2", "patch_embed4")]
    return res

  ks = (0, 1, 3, 6)
  batch = np.concatenate([np.roll(image, 32 * k, axis=2) for k in ks])
  return dict(model=model, cfg=cfg, variables=variables, image=image, ks=ks,
              out=jax.tree.map(np.asarray, forward(variables, batch)))


def test_network_is_roll_equivariant_in_circular_mode(net):
  out = net["out"]
  for circular in (True, False):
    sem, full = out[MODES[circular]]
    scale = np.abs(sem).max()
    errs = []
    for i, k in enumerate(net["ks"][1:], 1):
      errs.append(max(np.abs(sem[i] - np.roll(sem[0], 8 * k, axis=1)).max(),
                      np.abs(full[i] - np.roll(full[0], 32 * k, axis=1)).max()) / scale)
    if circular:
      assert max(errs) < 1e-4, errs
    else:  # flat zero padding depends on where the panorama was cut
      assert min(errs) > 0.05, errs
  # The deformable samples really move, up to the clamps ±min(h, w)//4
  # (4 px at stage 2's 16×64 input, 1 px at stage 4's 4×16).
  for offsets, clamp in zip(out["offsets"], (4, 1)):
    assert np.abs(offsets).max() > clamp and (np.abs(offsets) > 1).mean() > 0.2


def test_flat_is_the_default_and_params_do_not_depend_on_the_mode(net):
  out = net["out"]
  assert np.abs(out["circular"][0] - out["flat"][0]).max() > 1e-2
  # Without the argument the network is the flat (zero-padded) program.
  model, v, x = net["model"], net["variables"], net["image"]
  jaxpr = lambda **kw: str(jax.make_jaxpr(  # noqa: E731
      lambda v, x: model.apply(v, x, train=False, **kw))(v, x))
  assert jaxpr() == jaxpr(circular=False) != jaxpr(circular=True)
  # One parameter tree for every mode (a zero-padded checkpoint loads in
  # both), instance heads included.
  cfg = defaults.tiny_model_config()
  cfg.instance_heads = True
  model = amodalpass.build(cfg)
  x = jnp.zeros((1, H, W, 3))
  shapes = [jax.eval_shape(lambda c=c: model.init(jax.random.key(0), x, train=False,
                                                  circular=c)) for c in (False, True)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])


def test_scanned_rematerialised_and_bf16_backbones_in_circular_mode():
  """One ``nn.scan`` per stage + full remat, circular: the features of the
  rolled panorama are the rolled features, the gradient (through remat and
  the Mix-FFN depthwise convs' custom VJP) matches finite differences, and
  bfloat16 agrees within its precision. The patch embeds, deformable ones
  included, sit outside the scanned blocks (checked above)."""
  kw = dict(dims=(8, 8, 16, 16), depths=(1, 2, 1, 1), heads=(1, 1, 2, 2))
  rng = np.random.default_rng(11)
  x = rand(rng, 1, 32, 128, 3)
  model = mit.MiT(scan_blocks=True, remat="full", **kw)
  params = random_variables(model, x, rng, train=False)["params"]
  wts = [rand(rng, d) for d in kw["dims"]]

  def loss(p, x):
    feats = model.apply({"params": p}, x, train=False, circular=True)
    return sum(jnp.mean(f * w) for f, w in zip(feats, wts)), feats

  forward = jax.jit(loss)
  _, f0 = forward(params, x)
  _, f1 = forward(params, np.roll(x, 32, axis=2))
  for i, (a, b) in enumerate(zip(f0, f1)):
    np.testing.assert_allclose(b, np.roll(a, 32 >> (i + 2), axis=2), atol=1e-4)
  # Directional derivatives: the image, and block 2 of stage 2's depthwise kernel.
  gp, gx = jax.jit(jax.grad(lambda p, x: loss(p, x)[0], (0, 1)))(params, x)
  dw = ("block2", "mlp", "dwconv", "dwconv", "kernel")
  get = lambda t: t[dw[0]][dw[1]][dw[2]][dw[3]][dw[4]]  # noqa: E731
  eps = 1e-2

  def at(sign, dx, dp):
    p = params
    if dp is not None:
      p = jax.tree.map(lambda a: a, params)
      p[dw[0]][dw[1]][dw[2]][dw[3]][dw[4]] = get(params) + sign * eps * dp
    return float(forward(p, x if dx is None else x + sign * eps * dx)[0])

  for dx, dp in ((rand(rng, *x.shape), None), (None, rand(rng, *get(params).shape))):
    numeric = (at(1, dx, dp) - at(-1, dx, dp)) / (2 * eps)
    analytic = float(np.sum(gx * dx)) if dx is not None else float(np.sum(get(gp) * dp))
    assert abs(analytic) > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)
  bf = run(mit.MiT(scan_blocks=True, dtype=jnp.bfloat16, **kw), {"params": params}, x,
           train=False, circular=True)
  for a, b in zip(f0, bf):
    a, b = np.asarray(a, np.float64), np.asarray(b.astype(jnp.float32), np.float64)
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 0.03


def test_rematerialised_head_in_circular_mode():
  """The decode head's fuse layer under remat (``circular`` static through
  ``nn.remat``) is roll-equivariant on its stride-4 grid like the plain head."""
  rng = np.random.default_rng(12)
  feats = [rand(rng, 1, 8 >> i, 32 >> i, 8) for i in range(4)]
  kw = dict(num_classes=5, embed_dims=8, channels=8, dilations=(1, 2, 3))
  v = init(daformer_head.DAFormerHead(**kw), feats, train=False)
  rolled = [np.roll(f, 8 >> i, axis=2) for i, f in enumerate(feats)]
  a = run(daformer_head.DAFormerHead(**kw), v, feats, train=False, circular=True)
  b = run(daformer_head.DAFormerHead(remat="full", **kw), v, rolled, train=False,
          circular=True)
  np.testing.assert_allclose(b, np.roll(a, 8, axis=2), atol=1e-5)
