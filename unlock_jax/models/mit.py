"""Mix Transformer (SegFormer MiT) backbone with UNLOCK's AmodalPASS options.

NHWC throughout. Flax submodule names follow the reference PyTorch state dict
(`backbone.patch_embed1.proj` -> `patch_embed1/proj`, `backbone.block1.0.attn.q`
-> `block1_0/attn/q`, `backbone.norm1` -> `norm1`), so weight conversion is a
mechanical renaming plus layout transposes (`unlock_jax/tools/convert_torch.py`).

`deformable=True` turns the stage-2 and stage-4 patch embeddings into modulated
deformable convs and `simpool=True` adds the gating y <- y + y·sigmoid(SimPool(y))
after every attention block (reference `amodalpass.py`); with both off this is
the plain SegFormer MiT.
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models import deform
from unlock_jax.models import layers
from unlock_jax.models import simpool as simpool_lib

Dtype = Any


@dataclasses.dataclass(frozen=True)
class MiTSize:
  """Per-stage widths, depths, heads and key/value spatial-reduction ratios."""
  dims: tuple[int, ...]
  depths: tuple[int, ...]
  heads: tuple[int, ...] = (1, 2, 5, 8)
  sr_ratios: tuple[int, ...] = (8, 4, 2, 1)


# SegFormer / NVlabs sizes (mit_b5 = AmodalPASS-B5 apart from its two flags).
MIT_SIZES = {
    "mit_b0": MiTSize((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSize((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTSize((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTSize((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTSize((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTSize((64, 128, 320, 512), (3, 6, 40, 3)),
}


def mit_size(name: str) -> MiTSize:
  """Looks up a named MiT size ("mit_b0" .. "mit_b5")."""
  if name not in MIT_SIZES:
    raise ValueError(f"unknown MiT size {name!r}; expected one of "
                     f"{sorted(MIT_SIZES)} or explicit dims/depths/heads/"
                     "sr_ratios")
  return MIT_SIZES[name]


def _dense(features: int, name: str, dtype: Dtype,
           use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  param_dtype=jnp.float32,
                  kernel_init=layers.trunc_normal_init(), name=name)


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q·kᵀ/√d)·v for q [b, n, heads, d] and k, v [b, m, heads, d].

  The plain form is the fastest measured on XLA:CPU (benchmarks/backbone.py
  --parts): scores laid out [b, heads, keys, queries], or a flash-style
  custom VJP normalising after the value product, both ran slower.
  """
  logits = jnp.einsum("bnhd,bmhd->bhnm", q, k,
                      preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhnm,bmhd->bnhd", attn, v)


class Attention(nn.Module):
  """Efficient self-attention: keys/values from an sr×sr strided conv of x."""
  dim: int
  heads: int
  sr_ratio: int
  simpool: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    d = c // self.heads
    q = _dense(c, "q", self.dtype)(x).reshape(b, h * w, self.heads, d)
    kv_in = x
    if self.sr_ratio > 1:
      r = self.sr_ratio
      # VALID padding drops the last rows/cols like PyTorch's k=s=r conv.
      kv_in = nn.Conv(c, (r, r), strides=(r, r), padding="VALID",
                      dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=layers.torch_conv_init, name="sr")(kv_in)
      kv_in = layers.layer_norm(1e-5, "norm", self.dtype)(kv_in)
    kv = _dense(2 * c, "kv", self.dtype)(kv_in)
    # The fused kv layout is [k | v] along channels, heads contiguous in each.
    kv = kv.reshape(b, -1, 2, self.heads, d)
    k, v = kv[:, :, 0], kv[:, :, 1]
    y = attend(q, k, v).reshape(b, h, w, c)
    y = _dense(c, "proj", self.dtype)(y)
    if self.simpool:
      pooled = simpool_lib.SimPool(self.dtype, name="image_pool")(y)
      y = y + y * jax.nn.sigmoid(pooled)[:, None, None, :]
    return y


class DWConv(nn.Module):
  """3×3 depthwise conv of the Mix-FFN; wrapper named as the reference."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, circular: bool = False) -> jax.Array:
    return layers.DepthwiseConv3x3(1, True, self.dtype, name="dwconv")(
        x, circular=circular)


class MixFFN(nn.Module):
  """fc1 -> 3×3 depthwise conv -> exact GELU -> fc2."""
  dim: int
  mlp_ratio: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, circular: bool = False) -> jax.Array:
    x = _dense(self.dim * self.mlp_ratio, "fc1", self.dtype)(x)
    x = DWConv(self.dtype, name="dwconv")(x, circular=circular)
    x = layers.gelu_exact(x)  # torch nn.GELU() is the erf form
    return _dense(self.dim, "fc2", self.dtype)(x)


class Block(nn.Module):
  """Pre-norm transformer block with drop-path on both residual branches.

  ``circular`` (the Mix-FFN's depthwise conv wraps the columns around) is an
  attribute rather than a call argument so that it stays static under
  ``nn.scan`` and ``nn.remat``; it holds no parameters.
  """
  dim: int
  heads: int
  sr_ratio: int
  mlp_ratio: int
  drop_path: float
  simpool: bool
  norm_eps: float
  dtype: Dtype = jnp.float32
  scan_step: bool = False  # nn.scan body: (x, train, rate) -> (x, None)
  circular: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, rate: jax.Array | None = None):
    """``rate``: this block's drop-path rate when scanned (else the attribute)."""
    drop = layers.DropPath(self.drop_path)
    y = layers.layer_norm(self.norm_eps, "norm1", self.dtype)(x)
    y = Attention(self.dim, self.heads, self.sr_ratio, self.simpool,
                  self.dtype, name="attn")(y)
    x = x + drop(y, deterministic=not train, rate=rate)
    y = layers.layer_norm(self.norm_eps, "norm2", self.dtype)(x)
    y = MixFFN(self.dim, self.mlp_ratio, self.dtype, name="mlp")(
        y, circular=self.circular)
    x = x + drop(y, deterministic=not train, rate=rate)
    return (x, None) if self.scan_step else x


class OverlapPatchEmbed(nn.Module):
  """Strided conv with padding k//2 followed by LayerNorm (eps 1e-5)."""
  features: int
  kernel_size: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, circular: bool = False) -> jax.Array:
    """``circular``: wrap-pad the columns (a full 360° panorama), rows by zeros."""
    k = self.kernel_size
    x, padding = layers.conv_padding(x, k // 2, circular)
    x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride),
                padding=padding, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=layers.torch_conv_init,
                name="proj")(x)
    return layers.layer_norm(1e-5, "norm", self.dtype)(x)


class MiT(nn.Module):
  """Mix Transformer returning 4 NHWC maps at strides 4, 8, 16, 32.

  Attributes:
    dims, depths, heads, sr_ratios: per-stage sizes (see `MIT_SIZES`).
    mlp_ratio: Mix-FFN expansion.
    deformable: stage-2/4 patch embeddings are modulated deformable convs.
    simpool: SimPool gating after every attention block.
    drop_path_rate: stochastic depth, linear from 0 to this over all blocks
      (rng collection "dropout").
    norm_eps: LayerNorm eps of the blocks and stage norms (1e-6 in the
      reference; HF transformers uses 1e-5). Patch-embed and sr norms are
      always 1e-5 as in the reference.
    deform_impl: "auto", "gather" or "dense" DCNv2 sampler.
    remat: rematerialisation policy of each block in the backward pass
      (`layers.REMAT_POLICIES`: "none", "full", "dots"; a bool means
      "full"/"none").
    scan_blocks: run each stage's identical blocks as one `nn.scan` (stacked
      parameters `block{s}` with a leading block axis, instead of `block{s}_{j}`):
      B5's 52 blocks compile as 4. Same values as the unrolled form for the
      same weights (`stack_blocks` / `unstack_blocks` convert); drop-path masks
      are drawn from other rng splits, so training samples differ.
    dtype: compute dtype (params stay float32).
  """
  dims: Sequence[int]
  depths: Sequence[int]
  heads: Sequence[int] = (1, 2, 5, 8)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  mlp_ratio: int = 4
  deformable: bool = False
  simpool: bool = False
  drop_path_rate: float = 0.1
  norm_eps: float = 1e-6
  deform_impl: str = "auto"
  remat: str | bool = "none"
  scan_blocks: bool = False
  dtype: Dtype = jnp.float32

  def _check(self) -> None:
    n = {len(self.dims), len(self.depths), len(self.heads),
         len(self.sr_ratios)}
    if n != {4}:
      raise ValueError(f"MiT needs 4 stages, got dims={self.dims} depths="
                       f"{self.depths} heads={self.heads} sr_ratios="
                       f"{self.sr_ratios}")
    for dim, head in zip(self.dims, self.heads):
      if dim % head:
        raise ValueError(f"MiT dim {dim} is not divisible by heads {head}")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               circular: bool = False) -> list[jax.Array]:
    """``circular``: x is a full 360° panorama; every spatial op (patch
    embeds, their deformable sampling, the Mix-FFN convs) wraps the columns
    around instead of zero-padding them. Rows are zero-padded either way."""
    self._check()
    if x.ndim != 4:
      raise ValueError(f"MiT expects NHWC images, got shape {x.shape}")
    total = sum(self.depths)
    # torch.linspace(0, rate, total) as in the reference.
    rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    # Block.__call__(self, x, train, rate): train (argnum 2) is static.
    block_cls = layers.remat(Block, self.remat, static_argnums=(2,),
                             prevent_cse=not self.scan_blocks)
    x = x.astype(self.dtype)
    outs = []
    cur = 0
    for s in range(4):
      name = f"patch_embed{s + 1}"
      kernel, stride = (7, 4) if s == 0 else (3, 2)
      if self.deformable and s in (1, 3):
        x = deform.DeformablePatchEmbed(self.dims[s], kernel, stride,
                                        impl=self.deform_impl,
                                        dtype=self.dtype, name=name)(
                                            x, circular=circular)
      else:
        x = OverlapPatchEmbed(self.dims[s], kernel, stride, self.dtype,
                              name=name)(x, circular=circular)
      depth = self.depths[s]
      block_args = (self.dims[s], self.heads[s], self.sr_ratios[s], self.mlp_ratio)
      if self.scan_blocks:
        stage = nn.scan(block_cls, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, 0), length=depth)(
                            *block_args, 0.0, self.simpool, self.norm_eps,
                            self.dtype, scan_step=True, circular=circular,
                            name=f"block{s + 1}")
        x, _ = stage(x, train, jnp.asarray(rates[cur:cur + depth], jnp.float32))
      else:
        for j in range(depth):
          x = block_cls(*block_args, rates[cur + j], self.simpool, self.norm_eps,
                        self.dtype, circular=circular,
                        name=f"block{s + 1}_{j}")(x, train)
      cur += depth
      x = layers.layer_norm(self.norm_eps, f"norm{s + 1}", self.dtype)(x)
      outs.append(x)
    return outs


def mit(name: str, **kwargs) -> MiT:
  """Builds a named MiT ("mit_b0".."mit_b5"); kwargs override flags."""
  size = mit_size(name)
  return MiT(dims=size.dims, depths=size.depths, heads=size.heads,
             sr_ratios=size.sr_ratios, **kwargs)


def is_scanned(backbone_params) -> bool:
  """Whether a backbone parameter tree has the scanned layout (`block1`)."""
  return "block1" in backbone_params


def stack_blocks(backbone_params: dict, depths: Sequence[int]) -> dict:
  """Unrolled `block{s}_{j}` subtrees -> scanned `block{s}` (leading axis j)."""
  if is_scanned(backbone_params):
    return dict(backbone_params)
  out = {k: v for k, v in backbone_params.items() if not k.startswith("block")}
  for s, depth in enumerate(depths, 1):
    names = [f"block{s}_{j}" for j in range(depth)]
    missing = [n for n in names if n not in backbone_params]
    if missing or f"block{s}_{depth}" in backbone_params:
      raise ValueError(f"backbone parameters do not have {depth} blocks in stage {s} "
                       f"(missing {missing[:2]}); expected depths {tuple(depths)}")
    out[f"block{s}"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                    *[backbone_params[n] for n in names])
  return out


def unstack_blocks(backbone_params: dict) -> dict:
  """Scanned `block{s}` (leading axis j) -> unrolled `block{s}_{j}` subtrees."""
  if not is_scanned(backbone_params):
    return dict(backbone_params)
  out = {}
  for k, v in backbone_params.items():
    if k.startswith("block") and "_" not in k:
      depth = jax.tree.leaves(v)[0].shape[0]
      for j in range(depth):
        out[f"{k}_{j}"] = jax.tree.map(lambda x, j=j: x[j], v)
    else:
      out[k] = v
  return out
