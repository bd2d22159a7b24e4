"""The pieces adaptation methods share (docs/method.md §7.1, §7.4, §7.5): the EMA
teacher, the teacher-labelled ClassMix batch, the parameter regulariser, the
state from the source model, the jit.

Each method's step is in ``unlock_jax/methods/`` (UNLOCK's:
``methods/unlock.py``); ClassMix, colour jitter and blur, and the losses are
``train/classmix.py``, ``train/augment.py`` and ``train/losses.py``.
"""
import jax
import jax.numpy as jnp

from unlock_jax import sharding as shd
from unlock_jax.models import predict as predict_lib
from unlock_jax.train import augment
from unlock_jax.train import classmix


def ema_alpha(step, ema_max: float = 0.999):
  """``min(1 - 1/(t+1), ema_max)`` (0 at t = 0)."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(1.0 - 1.0 / (t + 1.0), ema_max)


def ema_update(teacher, params, step, ema_max: float = 0.999):
  """The teacher after step ``t``'s update (unchanged at t = 0)."""
  a = ema_alpha(step, ema_max)
  upd = jax.tree.map(lambda e, p: a * e + (1.0 - a) * p, teacher, params)
  return jax.tree.map(lambda u, e: jnp.where(step >= 1, u, e), upd, teacher)


def teacher_classmix(model, teacher, batch_stats, image, semantic, x_u, rng, *, threshold: float,
                     ignore_top: int, ignore_bottom: int, crop_height: int, jitter_p: float,
                     blur_p: float, strength: float, sigma_scale: float = 1.0) -> dict:
  """DACS's mixed batch: labelled crops ClassMixed into unlabelled ones the teacher labels.

  Teacher labels and its one pseudo-weight scalar on ``x_u``
  (``models/predict.teacher_labels``, ``classmix.teacher_pseudo_weight``);
  ClassMix of half the classes of the batch's ``semantic`` labels from
  ``image`` into ``x_u``; colour jitter and blur of the mixed images (σ's
  range times ``sigma_scale``, config ``adapt.blur_sigma_scale``). UNLOCK
  mixes its pseudo-labelled target crops, the UDA baseline its source crops.
  Returns ``{"image", "labels", "weights", "teacher_confident"}`` (the last
  the pseudo-weight scalar, for the logs).
  """
  t_lab, t_conf = predict_lib.teacher_labels(model, teacher, batch_stats, x_u)
  t_w = classmix.teacher_pseudo_weight(t_conf, threshold, ignore_top=ignore_top,
                                       ignore_bottom=ignore_bottom, crop_height=crop_height)
  r_mix, r_aug = jax.random.split(rng)
  mask = classmix.class_masks(semantic.astype(jnp.int32), r_mix)
  lab, w = classmix.mixed_targets(mask, semantic, t_lab, t_w)
  mixed = classmix.mix(mask, image, x_u)
  mixed = augment.strong_augment(mixed, r_aug, jitter_p=jitter_p, blur_p=blur_p,
                                 strength=strength, sigma_scale=sigma_scale)
  return {"image": mixed, "labels": lab, "weights": w, "teacher_confident": t_w.max()}


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
