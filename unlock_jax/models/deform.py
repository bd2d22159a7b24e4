"""Modulated deformable convolution (DCNv2) and the deformable patch embedding.

Semantics follow mmcv's `modulated_deformable_im2col` kernel: the offset map has
2·kh·kw channels, channel 2k is dy and 2k+1 is dx of kernel tap k = i·kw + j;
tap k of output (ho, wo) samples the input at
(ho·s − p + i·d + dy, wo·s − p + j·d + dx) bilinearly, each of the four
corners contributing zero when it lies outside the map; the sample is
multiplied by the modulator (mask channel k) and the columns are contracted
with the kernel. With ``circular=True`` (a full 360° panorama) columns are
periodic: a corner's column is taken modulo the width, so samples left of
column 0 read the last columns and no column falls outside; rows keep the
zero rule.

Two equivalent samplers are provided:
  * "gather": four `take_along_axis` gathers of the corner features;
  * "dense": tent-function interpolation matrices relu(1 − |p − h|) ·
    relu(1 − |p − w|) contracted with the map by einsum, one kernel tap at a
    time (O(Ho·Wo·H·W·C) work, no gathers).
`benchmarks/deform.py` measures both (forward+backward, CPU, batch 1): at the
stage-2 input of a 400×400 crop (100×100×64) gather is ~17× faster, at the
stage-4 input (25×25×320) dense is ~1.8× faster, because its cost grows with
the input area while gather's does not. The default "auto" therefore picks
dense for inputs of at most `DENSE_MAX_PIXELS` pixels and gather above.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models import layers

Dtype = Any
IMPLS = ("gather", "dense")
DENSE_MAX_PIXELS = 1024  # measured cross-over region, see module doc


def resolve_impl(impl: str, height: int, width: int) -> str:
  """Maps "auto" to a sampler by input area; validates explicit names."""
  if impl == "auto":
    return "dense" if height * width <= DENSE_MAX_PIXELS else "gather"
  if impl not in IMPLS:
    raise ValueError(f"deformable conv impl must be 'auto' or one of {IMPLS},"
                     f" got {impl!r}")
  return impl


def sample_positions(offset: jax.Array, kernel_size: int, stride: int,
                     padding: int, dilation: int) -> tuple[jax.Array,
                                                           jax.Array]:
  """Absolute sampling rows/cols [B, Ho, Wo, K] (float32) from mmcv offsets."""
  _, ho, wo, c = offset.shape
  k = kernel_size * kernel_size
  if c != 2 * k:
    raise ValueError(f"offset has {c} channels, expected 2*{kernel_size}^2 = "
                     f"{2 * k}")
  offset = offset.astype(jnp.float32)
  taps_i = jnp.repeat(jnp.arange(kernel_size), kernel_size) * dilation
  taps_j = jnp.tile(jnp.arange(kernel_size), kernel_size) * dilation
  rows = jnp.arange(ho)[:, None, None] * stride - padding + taps_i
  cols = jnp.arange(wo)[None, :, None] * stride - padding + taps_j
  py = rows[None].astype(jnp.float32) + offset[..., 0::2]
  px = cols[None].astype(jnp.float32) + offset[..., 1::2]
  return py, px


def bilinear_gather(x: jax.Array, py: jax.Array, px: jax.Array,
                    circular: bool = False) -> jax.Array:
  """Samples x [B, H, W, C] at float positions [B, ...] with zero padding
  (``circular``: columns modulo W, rows zero-padded)."""
  b, h, w, c = x.shape
  pshape = py.shape
  py = py.reshape(b, -1)
  px = px.reshape(b, -1)
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  ly = py - y0
  lx = px - x0
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  flat = x.reshape(b, h * w, c)
  out = jnp.zeros((b, py.shape[1], c), x.dtype)
  for dy, wy in ((0, 1.0 - ly), (1, ly)):
    for dx, wx in ((0, 1.0 - lx), (1, lx)):
      yy = y0 + dy
      xx = x0 + dx
      if circular:
        inside = (yy >= 0) & (yy < h)
        xx = jnp.remainder(xx, w)
      else:
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
      idx = jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)
      corner = jnp.take_along_axis(flat, idx[..., None], axis=1)
      weight = jnp.where(inside, wy * wx, 0.0).astype(x.dtype)
      out = out + corner * weight[..., None]
  return out.reshape(*pshape, c)


def bilinear_dense(x: jax.Array, py: jax.Array, px: jax.Array,
                   circular: bool = False) -> jax.Array:
  """Same as `bilinear_gather` via tent interpolation matrices and einsum.

  py/px are [B, Ho, Wo, K]; the taps are processed one at a time with
  `lax.map` so the [B, Ho·Wo, H, W] weight tensor stays one tap large.
  ``circular``: the column tent is periodic (period W).
  """
  _, h, w, _ = x.shape
  hs = jnp.arange(h, dtype=jnp.float32)
  ws = jnp.arange(w, dtype=jnp.float32)

  def one_tap(pos):
    ty, tx = pos  # [B, Ho, Wo]
    wy = jax.nn.relu(1.0 - jnp.abs(ty[..., None] - hs)).astype(x.dtype)
    if circular:
      # Distance to each column within one period, plus the tent of the
      # column's copy one period away (both non-zero only when W = 1).
      dist = jnp.abs(jnp.mod(tx, w)[..., None] - ws)
      wx = jax.nn.relu(1.0 - dist) + jax.nn.relu(1.0 - (w - dist))
    else:
      wx = jax.nn.relu(1.0 - jnp.abs(tx[..., None] - ws))
    wx = wx.astype(x.dtype)
    # Each sample's bilinear weights are separable (row tent x column tent),
    # but every output has its own pair, so this is a dense [Ho·Wo, H·W]
    # matrix per tap: no gathers, O(Ho·Wo·H·W·C) work.
    return jnp.einsum("byxh,byxw,bhwc->byxc", wy, wx, x,
                      optimize="optimal")

  taps = (jnp.moveaxis(py, -1, 0), jnp.moveaxis(px, -1, 0))
  out = jax.lax.map(one_tap, taps)  # [K, B, Ho, Wo, C]
  return jnp.moveaxis(out, 0, 3)


def modulated_deform_conv(x: jax.Array, offset: jax.Array, mask: jax.Array,
                          kernel: jax.Array, bias: jax.Array | None, *,
                          stride: int = 1, padding: int = 0,
                          dilation: int = 1,
                          impl: str = "auto",
                          circular: bool = False) -> jax.Array:
  """DCNv2 on NHWC maps (one deformable group, one conv group).

  Args:
    x: input [B, H, W, Cin].
    offset: [B, Ho, Wo, 2K] in mmcv channel order (dy, dx per tap).
    mask: modulator [B, Ho, Wo, K].
    kernel: [kh, kw, Cin, Cout] (kh == kw).
    bias: [Cout] or None.
    stride, padding, dilation: as in PyTorch.
    impl: "gather", "dense" or "auto" (by input area) sampler.
    circular: columns are periodic (a full 360° panorama): samples wrap
      around modulo the width instead of reading zeros.

  Returns:
    [B, Ho, Wo, Cout].
  """
  impl = resolve_impl(impl, x.shape[1], x.shape[2])
  kh, kw, cin, cout = kernel.shape
  if kh != kw or x.shape[-1] != cin:
    raise ValueError(f"kernel {kernel.shape} does not fit input channels "
                     f"{x.shape[-1]} (square kernels only)")
  k = kh * kw
  if mask.shape[-1] != k or mask.shape[:3] != offset.shape[:3]:
    raise ValueError(f"mask shape {mask.shape} does not match offset "
                     f"{offset.shape} and {k} taps")
  py, px = sample_positions(offset, kh, stride, padding, dilation)
  sampler = bilinear_gather if impl == "gather" else bilinear_dense
  cols = sampler(x, py, px, circular)  # [B, Ho, Wo, K, Cin]
  cols = cols * mask[..., None].astype(cols.dtype)
  out = jnp.einsum("byxkc,kco->byxo", cols,
                   kernel.reshape(k, cin, cout).astype(cols.dtype))
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out


def _mmcv_dcn_init(key, shape, dtype=jnp.float32):
  """mmcv ModulatedDeformConv2d init: U(±1/sqrt(Cin·kh·kw))."""
  kh, kw, cin, _ = shape
  bound = (cin * kh * kw) ** -0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class ModulatedDeformConv(nn.Module):
  """Parameters `kernel` [k, k, Cin, Cout] and `bias` of an mmcv DCNv2 conv."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, offset, mask, *, circular: bool = False):
    k = self.kernel_size
    kernel = self.param("kernel", _mmcv_dcn_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    return modulated_deform_conv(
        x.astype(self.dtype), offset, mask.astype(self.dtype),
        kernel.astype(self.dtype), bias.astype(self.dtype),
        stride=self.stride, padding=self.padding, impl=self.impl,
        circular=circular)


class DeformablePatchEmbed(nn.Module):
  """Reference `DeformablePatchEmbed`: offset/modulator convs, DCNv2, LayerNorm.

  Offsets are clamped to ±(min(H, W) // 4) of the input map and the modulator
  is 2·sigmoid(conv). The offset and modulator convs start at zero (offset 0,
  modulator 1: an ordinary strided conv), the usual DCNv2 initialisation.
  ``circular=True`` (a full 360° panorama): the offset/modulator convs
  wrap-pad the columns and the deformable samples wrap around modulo the width.
  """
  features: int
  kernel_size: int = 3
  stride: int = 2
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, circular: bool = False) -> jax.Array:
    k, s = self.kernel_size, self.stride
    xp, pad = layers.conv_padding(x, k // 2, circular)
    conv = lambda n, name: nn.Conv(  # noqa: E731
        n, (k, k), strides=(s, s), padding=pad, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=nn.initializers.zeros,
        name=name)
    max_offset = min(x.shape[1], x.shape[2]) // 4
    offset = conv(2 * k * k, "offset_conv")(xp).astype(jnp.float32)
    offset = jnp.clip(offset, -max_offset, max_offset)
    modulator = 2.0 * jax.nn.sigmoid(
        conv(k * k, "modulator_conv")(xp).astype(jnp.float32))
    x = ModulatedDeformConv(self.features, k, s, k // 2, impl=self.impl,
                            dtype=self.dtype, name="proj")(
                                x, offset, modulator, circular=circular)
    return layers.layer_norm(1e-5, "norm", self.dtype)(x)
