"""DCNv2 (modulated deformable conv) against independent oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlock_jax.models import deform


def _mmcv_bilinear(img, h, w):
  """mmcv `dmcn_im2col_bilinear` for one point of img [H, W, C] (numpy)."""
  height, width, _ = img.shape
  if h <= -1 or h >= height or w <= -1 or w >= width:
    return np.zeros(img.shape[-1])
  h_low, w_low = int(np.floor(h)), int(np.floor(w))
  h_high, w_high = h_low + 1, w_low + 1
  lh, lw = h - h_low, w - w_low
  hh, hw = 1 - lh, 1 - lw
  out = np.zeros(img.shape[-1])
  if h_low >= 0 and w_low >= 0:
    out += hh * hw * img[h_low, w_low]
  if h_low >= 0 and w_high <= width - 1:
    out += hh * lw * img[h_low, w_high]
  if h_high <= height - 1 and w_low >= 0:
    out += lh * hw * img[h_high, w_low]
  if h_high <= height - 1 and w_high <= width - 1:
    out += lh * lw * img[h_high, w_high]
  return out


def _numpy_dcn(x, offset, mask, kernel, bias, stride, pad, dil=1):
  """Loop DCNv2 with mmcv's offset layout (dy, dx per tap k = i*kw + j)."""
  b, _, _, _ = x.shape
  kh, kw, _, cout = kernel.shape
  _, ho, wo, _ = offset.shape
  out = np.zeros((b, ho, wo, cout))
  for n in range(b):
    for y in range(ho):
      for z in range(wo):
        acc = bias.astype(np.float64).copy()
        for i in range(kh):
          for j in range(kw):
            k = i * kw + j
            py = y * stride - pad + i * dil + offset[n, y, z, 2 * k]
            px = z * stride - pad + j * dil + offset[n, y, z, 2 * k + 1]
            val = _mmcv_bilinear(x[n], py, px) * mask[n, y, z, k]
            acc += val @ kernel[i, j]
        out[n, y, z] = acc
  return out


def _inputs(seed=0, shape=(2, 9, 10, 4), cout=5, scale=2.5):
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  ho, wo = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
  x = rng.normal(size=shape).astype(np.float32)
  offset = (rng.normal(size=(b, ho, wo, 18)) * scale).astype(np.float32)
  # Some samples far outside the map exercise the zero padding.
  offset[0, 0, 0, :4] = [-7.0, 3.0, 1.5, -12.0]
  mask = rng.uniform(0, 2, size=(b, ho, wo, 9)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, c, cout)).astype(np.float32)
  bias = rng.normal(size=(cout,)).astype(np.float32)
  return x, offset, mask, kernel, bias


@pytest.mark.parametrize("impl", deform.IMPLS)
def test_zero_offsets_unit_mask_is_strided_conv(impl):
  x, offset, mask, kernel, bias = _inputs()
  offset[:] = 0
  mask[:] = 1
  got = deform.modulated_deform_conv(x, offset, mask, kernel, bias, stride=2,
                                     padding=1, impl=impl)
  ref = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST) + bias
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", deform.IMPLS)
def test_random_offsets_match_numpy_dcnv2(impl):
  x, offset, mask, kernel, bias = _inputs(seed=1)
  got = deform.modulated_deform_conv(x, offset, mask, kernel, bias, stride=2,
                                     padding=1, impl=impl)
  ref = _numpy_dcn(x, offset, mask, kernel, bias, stride=2, pad=1)
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_dilation_and_stride_one_match_numpy():
  x, _, _, kernel, bias = _inputs(seed=2, shape=(1, 6, 7, 3))
  rng = np.random.default_rng(3)
  offset = (rng.normal(size=(1, 6, 7, 18)) * 1.5).astype(np.float32)
  mask = rng.uniform(0, 1, size=(1, 6, 7, 9)).astype(np.float32)
  got = deform.modulated_deform_conv(x, offset, mask, kernel, bias, stride=1,
                                     padding=2, dilation=2)
  ref = _numpy_dcn(x, offset, mask, kernel, bias, stride=1, pad=2, dil=2)
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", deform.IMPLS)
def test_gradients_finite(impl):
  x, offset, mask, kernel, bias = _inputs(seed=4)

  def loss(x, offset, mask, kernel):
    y = deform.modulated_deform_conv(x, offset, mask, kernel, bias, stride=2,
                                     padding=1, impl=impl)
    return jnp.sum(y ** 2)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, offset, mask,
                                                         kernel)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
    assert np.abs(np.asarray(g)).sum() > 0


def test_patch_embed_clamps_offsets_and_modulates():
  """The module = numpy conv -> clamp -> 2*sigmoid -> DCNv2 -> LayerNorm."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 8, 12, 4)).astype(np.float32)
  module = deform.DeformablePatchEmbed(features=6)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  params = jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)["params"]
  got = module.apply({"params": params}, x)

  def conv(name):
    k, b = params[name]["kernel"], params[name]["bias"]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((1, 4, 6, k.shape[-1]))
    for y in range(4):
      for z in range(6):
        patch = xp[0, 2 * y:2 * y + 3, 2 * z:2 * z + 3]
        out[0, y, z] = np.einsum("ijc,ijco->o", patch, k) + b
    return out

  max_offset = min(8, 12) // 4
  raw = conv("offset_conv")
  assert np.abs(raw).max() > max_offset  # the clamp is exercised
  offset = np.clip(raw, -max_offset, max_offset)
  mask = 2.0 / (1.0 + np.exp(-conv("modulator_conv")))
  y = _numpy_dcn(x, offset, mask, params["proj"]["kernel"],
                 params["proj"]["bias"], stride=2, pad=1)
  mu = y.mean(-1, keepdims=True)
  var = y.var(-1, keepdims=True)
  ref = (y - mu) / np.sqrt(var + 1e-5) * params["norm"]["scale"] + params[
      "norm"]["bias"]
  np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)


def test_bad_shapes_raise():
  x, offset, mask, kernel, bias = _inputs()
  with pytest.raises(ValueError, match="offset has 17 channels"):
    deform.modulated_deform_conv(x, offset[..., :17], mask, kernel, bias,
                                 stride=2, padding=1)
  with pytest.raises(ValueError, match="impl"):
    deform.modulated_deform_conv(x, offset, mask, kernel, bias, stride=2,
                                 padding=1, impl="cuda")
