"""SimPool attention pooling (reference `mmdet/models/utils/simpool{,2}.py`).

The query is the plain token mean (not normalised), keys and values are the
LayerNorm'ed tokens, one head, bias-free `wq`/`wk`, no value projection and
softmax over tokens with scale dim**-0.5 (the reference's `gamma=None` path).
Both reference classes compute the same thing; `SimPool` only reshapes its
output to (B, C, 1, 1) for the decode head, which callers here do themselves.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models import layers

Dtype = Any


class SimPool(nn.Module):
  """Pools tokens [B, N, C] or maps [B, H, W, C] to one vector [B, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, c = x.shape[0], x.shape[-1]
    tokens = x.reshape(b, -1, c)
    # Mean in float32: 10^4 tokens summed in bfloat16 would lose the query.
    query = jnp.mean(tokens.astype(jnp.float32), axis=1).astype(self.dtype)
    normed = layers.layer_norm(1e-6, "norm_patches", self.dtype)(tokens)
    dense = lambda name: nn.Dense(  # noqa: E731
        c, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=layers.trunc_normal_init(), name=name)
    q = dense("wq")(query)
    k = dense("wk")(normed)
    logits = jnp.einsum("bc,bnc->bn", q, k,
                        preferred_element_type=jnp.float32) * (c ** -0.5)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return jnp.einsum("bn,bnc->bc", attn, normed)
