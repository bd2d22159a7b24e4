"""FPN neck as mmdet's `FPN(num_outs=5, add_extra_convs=False)`, NHWC.

Lateral 1×1 convs, top-down sum with PyTorch-style nearest upsampling to the
finer level's size, 3×3 output convs (no norm, no activation), and a fifth level
from `max_pool2d(kernel 1, stride 2)` of the fourth, i.e. every other pixel.
Names: `lateral_convs_{i}/conv`, `fpn_convs_{i}/conv` (reference state dict).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models import layers

Dtype = Any


def _xavier_uniform():
  """mmdet FPN init: Xavier uniform weights, zero bias."""
  return nn.initializers.xavier_uniform()


class FPN(nn.Module):
  """Returns `len(features) + num_extra` maps of `channels` channels."""
  channels: int = 256
  num_outs: int = 5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *,
               circular: bool = False) -> list[jax.Array]:
    """``circular``: the maps are full 360° panoramas; the 3×3 output convs
    wrap the columns around (rows zero-padded). The laterals (1×1), the
    nearest upsampling and the stride-2 subsampling have no padding."""
    n = len(features)
    if self.num_outs < n:
      raise ValueError(f"FPN num_outs={self.num_outs} < {n} input levels")

    def conv(k, name):
      return layers.ConvModule(self.channels, k, padding=k // 2, norm=False,
                               act=False, dtype=self.dtype,
                               kernel_init=_xavier_uniform(), name=name)

    laterals = [conv(1, f"lateral_convs_{i}")(f, train=False)
                for i, f in enumerate(features)]
    for i in range(n - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + layers.resize_nearest(
          laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(3, f"fpn_convs_{i}")(lat, train=False, circular=circular)
            for i, lat in enumerate(laterals)]
    for _ in range(self.num_outs - n):
      outs.append(outs[-1][:, ::2, ::2])
    return outs
