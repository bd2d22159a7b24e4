"""Static-shape replacement for mmdet's ``RandomSampler``.

mmdet draws up to ``int(num * pos_fraction)`` positives uniformly at random
and fills the rest of the budget ``num`` with random negatives (fewer samples
if negatives run out). Here every candidate gets an independent uniform key
and ``lax.top_k`` picks the largest keys, which is a uniform random subset of
the requested size. Outputs are boolean selections (for dense losses) or fixed
``num`` index lists with a validity mask (for RoI heads).
"""
import jax
import jax.numpy as jnp


def random_keys(key: jax.Array, n: int) -> jnp.ndarray:
  """``n`` uniforms where entry i depends only on (key, i), not on n."""
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(
      jnp.arange(n))


def sample_pos_neg(u: jnp.ndarray, is_pos: jnp.ndarray, is_neg: jnp.ndarray,
                   num: int, pos_fraction: float
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Random balanced subset as boolean masks ``(pos_sel [M], neg_sel [M])``.

  ``u`` are per-candidate uniform keys in [0, 1).
  """
  m = u.shape[0]
  num_pos_max = int(num * pos_fraction)
  k_pos = min(num_pos_max, m)
  pos_key = jnp.where(is_pos, u, -1.0)
  pos_val, pos_idx = jax.lax.top_k(pos_key, k_pos)
  pos_sel = jnp.zeros((m,), bool).at[pos_idx].set(pos_val >= 0)
  n_pos = jnp.sum(pos_sel)
  k_neg = min(num, m)
  neg_key = jnp.where(is_neg, u, -1.0)
  neg_val, neg_idx = jax.lax.top_k(neg_key, k_neg)
  take = (neg_val >= 0) & (jnp.arange(k_neg) < num - n_pos)
  neg_sel = jnp.zeros((m,), bool).at[neg_idx].max(take)
  return pos_sel, neg_sel


def gather_selected(pos_sel: jnp.ndarray, neg_sel: jnp.ndarray, num: int
                    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Indices ``[num]`` of the selected candidates, positives first.

  Returns ``(idx, valid, is_pos)``; unused slots have ``valid=False``.
  """
  m = pos_sel.shape[0]
  # Positives rank above negatives, selected above unselected; within a group
  # the lower index comes first (top_k is stable on ties).
  prio = pos_sel.astype(jnp.int32) * 2 + neg_sel.astype(jnp.int32)
  k = min(num, m)
  val, idx = jax.lax.top_k(prio, k)
  valid = val > 0
  is_pos = val == 2
  if k < num:
    pad = num - k
    idx = jnp.concatenate([idx, jnp.zeros((pad,), idx.dtype)])
    valid = jnp.concatenate([valid, jnp.zeros((pad,), bool)])
    is_pos = jnp.concatenate([is_pos, jnp.zeros((pad,), bool)])
  return idx, valid, is_pos
