"""DAFormer decode head with a SimPool image-pool branch (DAFormerHeadSimPool).

Reference `mmdet/models/decode_heads/daformer_head_simpool.py`: per level a
linear embedding (no norm/act), bilinear resize to the stride-4 grid
(align_corners=False), concat, then `fuse_layer` = depthwise-separable ASPP
(dilation 1 is a plain 1×1 ConvModule) plus a SimPool image-pool branch
(1×1 ConvModule, broadcast), a 3×3 bottleneck ConvModule, channel dropout
(`nn.Dropout2d`) and a 1×1 classifier `conv_seg`. Names follow the reference
state dict (`embed_layers_0/proj`, `fuse_layer/aspp_modules_1/depthwise_conv/
conv`, `fuse_layer/image_pool_1/bn`, ...).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models import layers
from unlock_jax.models import simpool as simpool_lib

Dtype = Any


class SepASPPWithSimPool(nn.Module):
  """The reference `ASPPWrapper(sep=True, pool=True)` with SimPool pooling.

  ``circular`` (wrap the columns around in the dilated and bottleneck convs)
  is an attribute so that it stays static under ``nn.remat``.
  """
  channels: int
  dilations: Sequence[int] = (1, 6, 12, 18)
  dtype: Dtype = jnp.float32
  circular: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, h, w, c = x.shape
    pooled = simpool_lib.SimPool(self.dtype, name="image_pool_0")(x)
    pooled = layers.ConvModule(self.channels, 1, dtype=self.dtype,
                               name="image_pool_1")(
                                   pooled[:, None, None, :], train=train)
    # Bilinear resize of a 1×1 map is a broadcast.
    outs = [jnp.broadcast_to(pooled, (b, h, w, self.channels))]
    for i, d in enumerate(self.dilations):
      name = f"aspp_modules_{i}"
      if d == 1:
        outs.append(layers.ConvModule(self.channels, 1, dtype=self.dtype,
                                      name=name)(x, train=train))
      else:
        outs.append(_SepConv(self.channels, d, self.dtype, name=name)(
            x, train=train, circular=self.circular))
    y = jnp.concatenate(outs, axis=-1)
    return layers.ConvModule(self.channels, 3, padding=1, dtype=self.dtype,
                             name="bottleneck")(y, train=train,
                                                circular=self.circular)


class _SepConv(nn.Module):
  """mmcv DepthwiseSeparableConvModule: dw 3×3 (BN+ReLU), pw 1×1 (BN+ReLU)."""
  channels: int
  dilation: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               circular: bool = False) -> jax.Array:
    c = x.shape[-1]
    x = layers.ConvModule(c, 3, padding=self.dilation, dilation=self.dilation,
                          groups=c, dtype=self.dtype,
                          name="depthwise_conv")(x, train=train,
                                                 circular=circular)
    return layers.ConvModule(self.channels, 1, dtype=self.dtype,
                             name="pointwise_conv")(x, train=train)


class DAFormerHead(nn.Module):
  """Semantic logits [B, H/4, W/4, num_classes] (float32) from 4 maps.

  Attributes:
    num_classes: output classes (18 in UNLOCK).
    embed_dims: width of each per-level linear embedding.
    channels: ASPP / bottleneck width.
    dilations: ASPP dilations.
    dropout: channel dropout rate before `conv_seg` (rng "dropout").
    remat: rematerialisation policy of the fuse layer (ASPP on the 4·embed_dims
      concatenation at stride 4, the head's largest activations;
      `layers.REMAT_POLICIES`).
    dtype: compute dtype.
  """
  num_classes: int
  embed_dims: int = 256
  channels: int = 256
  dilations: Sequence[int] = (1, 6, 12, 18)
  dropout: float = 0.1
  remat: str | bool = "none"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *, train: bool,
               with_features: bool = False, bn_train: bool | None = None,
               circular: bool = False):
    """Logits, or ``(logits, bottleneck features [B,H/4,W/4,channels])``.

    The features (before dropout and ``conv_seg``) are what OPLL's prototype
    filter compares; under jit they cost nothing when unused. ``bn_train``
    (default: ``train``) selects BatchNorm's batch statistics apart from
    dropout: UNLOCK's EMA teacher runs BN on batch statistics with dropout off.
    ``circular`` (full 360° panoramas): the resizes to stride 4 interpolate
    across the seam and the ASPP/bottleneck convs wrap the columns around.
    """
    bn = train if bn_train is None else bn_train
    size = features[0].shape[1:3]
    embedded = []
    for i, f in enumerate(features):
      e = _Embed(self.embed_dims, self.dtype, name=f"embed_layers_{i}")(f)
      embedded.append(layers.resize_bilinear(e, size, circular=circular))
    x = jnp.concatenate(embedded, axis=-1)
    fuse = layers.remat(SepASPPWithSimPool, self.remat, static_argnums=(2,))
    x = fuse(self.channels, tuple(self.dilations), self.dtype, circular,
             name="fuse_layer")(x, bn)
    feats = x
    # nn.Dropout2d zeroes whole channels per sample.
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2))(
        x, deterministic=not train)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                     param_dtype=jnp.float32,
                     kernel_init=nn.initializers.normal(0.01),
                     name="conv_seg")(x)
    logits = logits.astype(jnp.float32)
    return (logits, feats) if with_features else logits


class _Embed(nn.Module):
  """The reference `MLP` embedding: one Linear named `proj`."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=layers.trunc_normal_init(), name="proj")(x)
