"""UNLOCK, the adaptation method of the paper (docs/method.md §7.4-§7.6): its step.

Inputs: both streams (pseudo-labelled target crops with the pool's pastes,
unlabelled target crops); state: student, EMA teacher (the frozen source
parameters anchor the regulariser); one pure, jitted step.

Per step ``t`` (state ``{"params", "batch_stats", "opt", "teacher", "step",
"first_bad_step"}``; the frozen source parameters are an argument, never
part of the state or its checkpoints):

1. EMA teacher, before the forward and for ``t >= 1`` only, parameters only:
   ``teacher <- a·teacher + (1-a)·params`` with ``a = min(1 - 1/(t+1), ema_max)``.
2. Teacher on the unlabelled crops: dropout/drop-path off, BatchNorm on the
   batch's statistics *without* updating any stored ones (as the reference;
   docs/reference_differences.md item 6), ``stop_gradient``; labels and
   confidences at crop size (``models/predict.teacher_labels``, the
   semantic rule every predict function shares); one pseudo-weight scalar
   for the whole batch, top/bottom rows 0 (item 7).
3. ClassMix from the batch's PL label set, then colour jitter and blur on the
   mixed images (``train/classmix.py``, ``train/augment.py``).
4. ``L = L_clean + L_mix``: L_clean = semantic CE on the PL crops + both
   Mask R-CNN branches on the PL + pasted targets + ``reg_weight`` ·
   Σ_l mean((θ_l - θ_src,l)²) over all student parameters (BatchNorm
   statistics are not parameters); L_mix = pixel-weighted semantic CE on the
   mixed crops. The two student forwards draw independent dropout/drop-path
   masks and update the student's BatchNorm statistics in order (clean, then
   mixed), as the reference's two forwards do. One gradient of the sum equals
   the reference's two backwards before one optimiser step.

``mix_weight`` (1, the reference) scales ``L_mix``; 0 is the ablation without
the ClassMix branch: steps 2-3 and the mixed forward do not run at all (its
BatchNorm statistics would otherwise still move the student's), the clean
forward draws the same keys, and the EMA teacher is still updated.

``sequential_grads`` (config ``adapt.sequential_grads``, default False) takes
that gradient as the reference does, one term at a time: ``∇L_clean`` (its
forward and backward), then ``∇L_mix``, summed. The same gradient up to
float rounding; optimisation barriers guarantee that the teacher, the clean
and the mixed passes never hold activations at the same time, whatever a
backend's scheduler would do. (XLA:CPU already keeps them apart: its peak is
inside one pass, README "Running at the paper's size".) Off, the program is
today's, bit for bit.
"""
import functools

import jax
import jax.numpy as jnp

from unlock_jax import methods
from unlock_jax.data import keys
from unlock_jax.train import adapt as adapt_lib
from unlock_jax.train import losses as losses_lib
from unlock_jax.train import steps


def clean_loss(model, params, batch_stats, source_params, batch, rngs, *, cfg):
  """``L_clean``'s terms (semantic CE, both R-CNN branches, the regulariser) and
  the BN statistics after the clean forward; ``rngs``: (dropout, sampling) keys."""
  out, mut = model.apply(
      {"params": params, "batch_stats": batch_stats}, batch[keys.IMAGE], train=True,
      targets=steps.instance_targets(batch), rngs={"dropout": rngs[0], "sampling": rngs[1]},
      mutable=["batch_stats"])
  terms = steps.supervised_terms(out, batch, sem_normalize=cfg.sem_normalize)
  terms["param_reg"] = cfg.reg_weight * adapt_lib.param_regulariser(params, source_params)
  return terms, mut.get("batch_stats", batch_stats)


def mix_loss(model, params, batch_stats, mixed, rng, *, cfg):
  """``L_mix`` (pixel-weighted CE on the mixed crops) and the BN statistics after
  the mixed forward; ``rng``: its dropout key."""
  out_mix, mut = model.apply(
      {"params": params, "batch_stats": batch_stats}, mixed["image"], train=True,
      semantic_only=True, rngs={"dropout": rng}, mutable=["batch_stats"])
  loss = cfg.mix_weight * losses_lib.semantic_ce(
      out_mix["sem_logits"], mixed["labels"], normalize=cfg.sem_normalize,
      weight=mixed["weights"])
  return loss, mut.get("batch_stats", batch_stats)


def adapt_loss(model, params, batch_stats, source_params, batch, mixed, rng, *, cfg):
  """``L_clean + L_mix`` and its terms; returns the twice-updated BN statistics.

  ``mixed`` None (the ablation without ClassMix): ``L_clean`` alone, its
  forward drawing the same keys as with ClassMix.
  """
  r = jax.random.split(rng, 3)
  terms, bs = clean_loss(model, params, batch_stats, source_params, batch, r[:2], cfg=cfg)
  if mixed is not None:
    terms["mix/sem"], bs = mix_loss(model, params, bs, mixed, r[2], cfg=cfg)
  return sum(terms.values()), (terms, bs)


def sequential_grads(model, params, batch_stats, source_params, batch, mixed, rng, *, cfg):
  """:func:`adapt_loss`'s ``((loss, (terms, bs)), grads)``, one term at a time.

  ``∇L_clean`` is complete before the mixed forward starts: the barrier makes
  every input of the mixed pass (parameters, BN statistics, mixed batch) an
  output of the clean gradient, so XLA cannot schedule the two passes' live
  activations together. The gradient is ``∇L_clean + ∇L_mix``: equal to the
  joint one up to float summation order.
  """
  r = jax.random.split(rng, 3)  # the keys adapt_loss draws: the same masks

  def clean(p):
    terms, bs = clean_loss(model, p, batch_stats, source_params, batch, r[:2], cfg=cfg)
    return sum(terms.values()), (terms, bs)

  def mix(p, bs, mixed):
    return mix_loss(model, p, bs, mixed, r[2], cfg=cfg)

  # The teacher's labels (in ``mixed``) are computed before the clean pass.
  params, mixed = jax.lax.optimization_barrier((params, mixed))
  (_, (terms, bs)), g_clean = jax.value_and_grad(clean, has_aux=True)(params)
  g_clean, params, bs, mixed = jax.lax.optimization_barrier((g_clean, params, bs, mixed))
  (terms["mix/sem"], bs), g_mix = jax.value_and_grad(mix, has_aux=True)(params, bs, mixed)
  grads = jax.tree.map(jnp.add, g_clean, g_mix)
  return (sum(terms.values()), (terms, bs)), grads


def mixed_batch(model, teacher, batch_stats, batch, rng, *, cfg):
  """Teacher labels on the unlabelled crops, ClassMix of the PL crops, strong augmentation."""
  return adapt_lib.teacher_classmix(
      model, teacher, batch_stats, batch[keys.IMAGE], batch[keys.SEMANTIC],
      batch[keys.UNLABELED_IMAGE], rng, threshold=cfg.teacher_threshold,
      ignore_top=cfg.ignore_top, ignore_bottom=cfg.ignore_bottom,
      crop_height=cfg.rows_crop_height, jitter_p=cfg.jitter_p, blur_p=cfg.blur_p,
      strength=cfg.jitter_strength, sigma_scale=cfg.blur_sigma_scale)


def make_step(model, tx, schedule, mesh, state, *, cfg):
  """Jitted ``(state, batch, source_params, base_rng) -> (state, measurements)``.

  ``cfg`` = ``config.adapt`` (:data:`CONFIG_KEYS`). The state is donated; the
  source parameters are read only. ``mix_weight`` 0 is the ablation without
  the ClassMix branch: no teacher forward, no mixed forward (whose BatchNorm
  statistics would otherwise still move the student's), ``L = L_clean``; the
  EMA teacher is still kept.
  """
  with_classmix = cfg.mix_weight != 0
  def step_fn(state, batch, source_params, base_rng):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    r_mix, r_loss = jax.random.split(rng)
    teacher = adapt_lib.ema_update(state["teacher"], state["params"], step, cfg.ema_max)
    mixed = (mixed_batch(model, teacher, state["batch_stats"], batch, r_mix, cfg=cfg)
             if with_classmix else None)
    if cfg.get("sequential_grads", False) and with_classmix:
      grad_fn = functools.partial(sequential_grads, model, cfg=cfg)
    else:
      grad_fn = jax.value_and_grad(
          functools.partial(adapt_loss, model, cfg=cfg), has_aux=True)
    (loss, (terms, new_bs)), grads = grad_fn(
        state["params"], state["batch_stats"], source_params, batch, mixed, r_loss)
    new_state, m = steps.apply_gradients(dict(state, teacher=teacher), grads, loss,
                                         tx, schedule)
    new_state["batch_stats"] = new_bs
    m |= {f"loss/{k}": v for k, v in terms.items()}
    if with_classmix:
      m["teacher_pseudo_weight"] = mixed["teacher_confident"]
    return new_state, m

  return adapt_lib.jit_step(step_fn, mesh, state)


CONFIG_KEYS = ("ema_max", "teacher_threshold", "ignore_top", "ignore_bottom",
               "rows_crop_height", "jitter_p", "blur_p", "jitter_strength", "reg_weight",
               "mix_weight", "sem_normalize", "sequential_grads", "blur_sigma_scale")

METHOD = methods.Method(
    name="unlock", streams=("target_pseudo_labelled", "target_unlabelled"),
    config_keys=CONFIG_KEYS, init_state=adapt_lib.init_state, make_step=make_step)
