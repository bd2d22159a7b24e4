"""The pieces adaptation methods share (docs/method.md §7.1, §7.5): the EMA
teacher, the parameter regulariser, the state from the source model, the jit.

Each method's step is in ``unlock_jax/methods/`` (UNLOCK's:
``methods/unlock.py``); ClassMix, colour jitter and blur, and the losses are
``train/classmix.py``, ``train/augment.py`` and ``train/losses.py``.
"""
import jax
import jax.numpy as jnp

from unlock_jax import sharding as shd


def ema_alpha(step, ema_max: float = 0.999):
  """``min(1 - 1/(t+1), ema_max)`` (0 at t = 0)."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(1.0 - 1.0 / (t + 1.0), ema_max)


def ema_update(teacher, params, step, ema_max: float = 0.999):
  """The teacher after step ``t``'s update (unchanged at t = 0)."""
  a = ema_alpha(step, ema_max)
  upd = jax.tree.map(lambda e, p: a * e + (1.0 - a) * p, teacher, params)
  return jax.tree.map(lambda u, e: jnp.where(step >= 1, u, e), upd, teacher)


def param_regulariser(params, source_params):
  """``Σ_l mean((θ_l - θ_src,l)²)`` over every parameter leaf (F.mse_loss per tensor)."""
  sq = jax.tree.map(lambda p, s: jnp.mean(jnp.square(p.astype(jnp.float32) - s)),
                    params, source_params)
  return sum(jax.tree.leaves(sq))


def jit_step(step_fn, mesh, state):
  """``step_fn(state, batch, source_params, rng)`` jitted: the state donated and
  kept on its sharding, the measurements replicated."""
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(step_fn, out_shardings=(state_sharding, shd.replicated(mesh)),
                 donate_argnums=(0,))


def init_state(variables, tx, mesh, *, teacher: bool = True) -> dict:
  """Adaptation state from the source variables: student (and EMA teacher) = source."""
  def init(variables):
    params = variables["params"]
    state = {"params": params, "batch_stats": variables.get("batch_stats", {}),
             "opt": tx.init(params)}
    if teacher:
      state["teacher"] = jax.tree.map(jnp.copy, params)
    return state | {"step": jnp.zeros((), jnp.int32),
                    "first_bad_step": jnp.full((), -1, jnp.int32)}
  abstract = jax.eval_shape(init, variables)
  sharding = jax.tree.map(lambda _: shd.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=sharding)(variables)
