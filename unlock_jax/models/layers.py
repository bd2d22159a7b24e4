"""Small layers shared by the backbone, the decode head and the FPN (NHWC)."""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# PyTorch BatchNorm momentum 0.1 (new = 0.9 old + 0.1 batch) is flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


def layer_norm(eps: float, name: str, dtype: Dtype) -> nn.LayerNorm:
  """A LayerNorm over the channel axis with PyTorch's exact variance."""
  # use_fast_variance=False computes E[(x - mean)^2]; the fast E[x^2]-mean^2
  # form loses digits against the PyTorch reference on large activations.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, = torch `nn.GELU()`, with a hand-written derivative.

  Same values as `jax.nn.gelu(x, approximate=False)`; autodiff of that graph
  made the Mix-FFN backward twice as slow on XLA:CPU (64 ms -> 31 ms at
  100×100×128), the explicit Φ(x) + x·φ(x) derivative fuses into one loop.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _gelu_exact_fwd(x):
  return gelu_exact(x), x


def _gelu_exact_bwd(x, g):
  cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
  pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
  return (g * (cdf + x * pdf).astype(g.dtype),)


gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)


# Rematerialisation policies by name (config ``model.remat`` for the backbone
# blocks, ``model.remat_head`` for the decode head's fuse layer): what the
# backward pass keeps from the forward instead of recomputing it.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every activation is kept
    "full": "nothing_saveable",  # keep only the module's inputs
    "dots": "dots_with_no_batch_dims_saveable",  # keep the weight matmuls' outputs
}


def remat_policy(value) -> str:
  """The policy name for ``value`` (a name, or a bool: False "none", True "full")."""
  if isinstance(value, bool):
    return "full" if value else "none"
  if value not in REMAT_POLICIES:
    raise ValueError(f"remat policy must be one of {sorted(REMAT_POLICIES)} (or a "
                     f"bool), got {value!r}")
  return value


def remat(module_cls, policy, static_argnums: tuple[int, ...] = (),
          prevent_cse: bool = True):
  """``module_cls`` under ``jax.checkpoint`` with the named policy ("none": as is).

  ``prevent_cse=False`` inside ``nn.scan``, whose loop already keeps XLA from
  merging the recomputation with the forward (as big_vision's ViT does).
  """
  name = remat_policy(policy)
  if name == "none":
    return module_cls
  return nn.remat(module_cls, static_argnums=static_argnums, prevent_cse=prevent_cse,
                  policy=getattr(jax.checkpoint_policies, REMAT_POLICIES[name]))


def torch_conv_init(key, shape, dtype=jnp.float32):
  """Kaiming normal fan-out init used by the reference for Conv2d weights."""
  kh, kw, cin_per_group, cout = shape
  del cin_per_group
  std = (2.0 / (kh * kw * cout)) ** 0.5
  return std * jax.random.normal(key, shape, dtype)


def trunc_normal_init(std: float = 0.02):
  """timm trunc_normal_(std) used by the reference for Linear weights."""
  return nn.initializers.truncated_normal(stddev=std)


def wrap_pad_w(x: jax.Array, left: int, right: int) -> jax.Array:
  """Pads NHWC maps horizontally by wrapping around (a 360° panorama's columns).

  The last ``left`` columns go in front and the first ``right`` behind, so
  column -1 is column W-1: the padding a full-width panorama has in reality.
  Pads wider than the map wrap more than once (a dilated conv on a narrow map).
  """
  w = x.shape[2]
  if left < 0 or right < 0:
    raise ValueError(f"wrap padding ({left}, {right}) must be >= 0")
  if not left and not right:
    return x
  if max(left, right) > w:
    cols = np.arange(-left, w + right) % w
    return jnp.take(x, jnp.asarray(cols), axis=2)
  parts = ([x[:, :, w - left:]] if left else []) + [x] + (
      [x[:, :, :right]] if right else [])
  return jnp.concatenate(parts, axis=2)


def pad_hw(x: jax.Array, ph: int, pw: int, circular: bool,
           extra_bottom: int = 0) -> jax.Array:
  """Zero-pads rows by ``ph`` (+ ``extra_bottom``) and columns by ``pw``,
  the columns by wrapping around when ``circular``."""
  if circular:
    x = wrap_pad_w(x, pw, pw)
    pw = 0
  return jnp.pad(x, ((0, 0), (ph, ph + extra_bottom), (pw, pw), (0, 0)))


def conv_padding(x: jax.Array, padding: int, circular: bool):
  """``(input, flax padding)`` of a conv with symmetric ``padding``.

  Flat: zeros on all sides (PyTorch's ``padding=p``). Circular (the input is a
  full 360° panorama): the columns are wrap-padded here and the conv pads only
  the rows with zeros, = torch ``padding_mode="circular"`` along W alone.
  """
  p = padding
  if not circular:
    return x, ((p, p), (p, p))
  return wrap_pad_w(x, p, p), ((p, p), (0, 0))


def _shift_add3x3(x: jax.Array, k: jax.Array, dilation: int,
                  circular: bool = False) -> jax.Array:
  """Σ_ij pad(x)[h+d·i, w+d·j] · k[i, j]: 3×3 depthwise correlation, 'same' padding."""
  h, w, d = x.shape[1], x.shape[2], dilation
  xp = pad_hw(x, d, d, circular)
  out = xp[:, 0:h, 0:w] * k[0, 0]
  for i in range(3):
    for j in range(3):
      if i or j:
        out = out + xp[:, d * i:d * i + h, d * j:d * j + w] * k[i, j]
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise3x3(x: jax.Array, k: jax.Array, dilation: int = 1,
                 circular: bool = False) -> jax.Array:
  """3×3 depthwise conv (padding = dilation) of x [B, H, W, C] with k [3, 3, C].

  Nine shifted multiply-adds with a hand-written backward pass: XLA:CPU runs
  grouped convolutions (`feature_group_count=C`) and their autodiff an order
  of magnitude slower than this (measured for benchmarks/backbone.py; the
  dilated ASPP convs of the decode head: 0.23 s → 0.02 s fwd+bwd at 24×24×256),
  while GPU/TPU fuse the elementwise form just as well. ``circular``: the
  columns are padded by wrapping around (a full 360° panorama), rows by zeros.
  """
  return _shift_add3x3(x, k, dilation, circular)


def _depthwise3x3_fwd(x, k, dilation, circular):
  return _shift_add3x3(x, k, dilation, circular), (x, k)


def _depthwise3x3_kernel_grad(x: jax.Array, g: jax.Array, dilation: int,
                              circular: bool = False) -> jax.Array:
  """dk[i, j, c] = Σ_bhw pad(x)[b, h+d·i, w+d·j, c] · g[b, h, w, c], float32.

  In a row-major layout padded to width W+2d, every tap is one contiguous
  window of the flattened map (the 2d extra columns of g are zero), and
  `lax.map` over the nine window offsets keeps XLA:CPU from fusing nine
  strided-slice reductions, which it runs ~4× slower (38 ms -> 11 ms at
  100×100×128).
  """
  b, h, w, c = x.shape
  d = dilation
  wp = w + 2 * d
  # One extra bottom row keeps the last window (offset 2d·wp + 2d) in range.
  xp = pad_hw(x, d, d, circular, extra_bottom=1).reshape(b, -1, c)
  gp = jnp.pad(g, ((0, 0), (0, 0), (0, 2 * d), (0, 0))).reshape(b, h * wp, c)
  xp = xp.astype(jnp.float32)
  gp = gp.astype(jnp.float32)
  offsets = jnp.asarray([d * (i * wp + j) for i in range(3) for j in range(3)])

  def one_tap(offset):
    window = jax.lax.dynamic_slice_in_dim(xp, offset, h * wp, axis=1)
    return jnp.sum(window * gp, axis=(0, 1))

  return jax.lax.map(one_tap, offsets).reshape(3, 3, c)


def _depthwise3x3_bwd(dilation, circular, res, g):
  x, k = res
  # The transpose of a correlation is the correlation with the flipped kernel
  # (with the same padding: zeros, or the wrap-around of a periodic axis).
  dx = _shift_add3x3(g, k[::-1, ::-1], dilation, circular)
  dk = _depthwise3x3_kernel_grad(x, g, dilation, circular).astype(k.dtype)
  return dx, dk


depthwise3x3.defvjp(_depthwise3x3_fwd, _depthwise3x3_bwd)


class DepthwiseConv3x3(nn.Module):
  """Parameters `kernel` [3, 3, 1, C] (+ `bias` [C]) of a depthwise Conv2d."""
  dilation: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, circular: bool = False) -> jax.Array:
    """``circular``: wrap-pad the columns (a full 360° panorama), not zeros."""
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init or torch_conv_init, (3, 3, 1, c),
                        jnp.float32)
    x = x.astype(self.dtype)
    y = depthwise3x3(x, kernel[:, :, 0, :].astype(self.dtype), self.dilation,
                     circular)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32).astype(self.dtype)
    return y


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` on NHWC maps (flax's names: ``scale``, ``bias``,
  batch_stats ``mean``, ``var``, so checkpoints and the converter are unchanged).

  Unlike ``flax.linen.BatchNorm``, the running variance is updated with the
  *unbiased* batch variance (× n/(n−1), n = elements per channel), as PyTorch
  does; normalisation uses the biased one, as both do. The difference matters
  where n is small: in the DAFormer head's image-pool branch n is the batch
  size, and flax's rule leaves that running variance at (B−1)/B of the
  reference's (0.75 at batch 4). ``momentum`` follows flax's convention
  (0.9 = PyTorch's 0.1).
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      n = math.prod(x.shape[:-1])
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var * (n / max(n - 1, 1))
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


class ConvModule(nn.Module):
  """mmcv ConvModule: conv (+ BatchNorm) (+ ReLU); submodules `conv`, `bn`.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    stride: square stride.
    padding: symmetric zero padding (PyTorch semantics).
    dilation: kernel dilation.
    groups: feature groups (= input channels for a depthwise conv).
    norm: whether a BatchNorm follows (then the conv has no bias, as mmcv's
      `bias='auto'`).
    act: whether a ReLU follows.
    dtype: compute dtype.
    kernel_init: conv weight init (default: the reference's fan-out normal).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  groups: int = 1
  norm: bool = True
  act: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               circular: bool = False) -> jax.Array:
    """``circular``: the input is a full 360° panorama; columns are padded by
    wrapping around, rows by zeros (same parameters either way)."""
    k, p = self.kernel_size, self.padding
    depthwise = (self.groups > 1 and self.groups == x.shape[-1] == self.features
                 and k == 3 and self.stride == 1 and p == self.dilation)
    if depthwise:  # same parameters as nn.Conv, fast on every backend
      x = DepthwiseConv3x3(self.dilation, not self.norm, self.dtype,
                           self.kernel_init, name="conv")(x, circular=circular)
    else:
      x, padding = conv_padding(x, p, circular)
      x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride),
                  padding=padding,
                  kernel_dilation=(self.dilation, self.dilation),
                  feature_group_count=self.groups, use_bias=not self.norm,
                  dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=self.kernel_init or torch_conv_init,
                  name="conv")(x)
    if self.norm:
      x = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                    epsilon=BN_EPS, dtype=self.dtype, name="bn")(x)
    if self.act:
      x = nn.relu(x)
    return x


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample.

  Uses the `"dropout"` rng collection; identity when `deterministic` or the
  rate is 0.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool,
               rate: jax.Array | None = None) -> jax.Array:
    """``rate`` (a traced scalar, e.g. scanned per block) overrides the attribute."""
    static = rate is None
    rate = self.rate if static else rate
    if deterministic or (static and rate == 0.0):
      return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    # A traced rate is float32: divide in x's dtype (a scan carry keeps its type).
    scale = keep if static else jnp.asarray(keep, x.dtype)
    return jnp.where(mask, x / scale, jnp.zeros_like(x))


def resize_bilinear(x: jax.Array, size: Sequence[int],
                    circular: bool = False) -> jax.Array:
  """Bilinear resize of NHWC maps, = torch `F.interpolate(align_corners=False)`.

  Antialiasing is off because PyTorch's bilinear mode does not antialias when
  downsampling; for upsampling both agree (half-pixel centres, edge clamp).
  ``circular`` (a full 360° panorama): columns interpolate across the seam
  (between the last and the first column) instead of clamping at the edges,
  so resizing commutes with rolling the panorama; rows clamp as before.
  """
  h, w = size
  if x.shape[1:3] == (h, w):
    return x
  if circular:
    return _resize_w_periodic(
        resize_bilinear(x, (h, x.shape[2])), w).astype(x.dtype)
  out = jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear",
                         antialias=False)
  return out.astype(x.dtype)


def _resize_w_periodic(x: jax.Array, w: int) -> jax.Array:
  """Linear resize of the columns of a periodic map to width ``w``.

  PyTorch's align_corners=False source position (j + ½)·W_in/w − ½, without
  the clamp: the two neighbours are taken modulo W_in.
  """
  w_in = x.shape[2]
  if w_in == w:
    return x
  src = (np.arange(w) + 0.5) * (w_in / w) - 0.5
  left = np.floor(src)
  frac = jnp.asarray(src - left, jnp.float32)[None, None, :, None]
  left = left.astype(np.int64)
  a = jnp.take(x, jnp.asarray(left % w_in), axis=2).astype(jnp.float32)
  b = jnp.take(x, jnp.asarray((left + 1) % w_in), axis=2).astype(jnp.float32)
  return a + (b - a) * frac


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Nearest resize of NHWC maps, = torch `F.interpolate(mode='nearest')`.

  PyTorch's legacy nearest picks source index floor(dst * in / out), which is
  not the half-pixel rule of `jax.image.resize`; the FPN depends on it when
  sizes are odd (13 -> 25).
  """
  h, w = size
  in_h, in_w = x.shape[1], x.shape[2]
  if (in_h, in_w) == (h, w):
    return x
  # Integer arithmetic reproduces floor(dst * (in / out)) for these sizes;
  # PyTorch computes the scale in float, which agrees for all sizes < 2^24.
  rows = jnp.asarray([min(int(i * (in_h / h)), in_h - 1) for i in range(h)])
  cols = jnp.asarray([min(int(j * (in_w / w)), in_w - 1) for j in range(w)])
  return x[:, rows][:, :, cols]
