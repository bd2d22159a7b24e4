"""Tent (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021): the classic source-free baseline (docs/method.md §7.9).

Input: unlabelled target crops only (stream ``target_unlabelled``): no
predict, opll or adcl_pool stage runs before it. State: the student (no
teacher, no regulariser). Per step ``t``:

1. The student on the crops: dropout and drop-path off, every BatchNorm on
   the batch's own statistics (Tent's ``model.train()`` for BN; its networks
   have no dropout), the semantic logits resized to the crop as every
   prediction is (``models/predict.semantic_logits``).
2. ``L`` = the mean over crops and pixels of the Shannon entropy
   ``-Σ_c p_c log p_c`` of the softmax (``tent.softmax_entropy(x).mean(0)``).
3. One Adam step on the normalisation layers' affine parameters alone: the
   scale and bias of every LayerNorm (MiT, the SimPool head) and BatchNorm
   (the DAFormer head), found by module type (:func:`norm_labels`); the
   other parameters get no gradient and no optimiser state, and come out of
   the step bit for bit as they went in (not merely a zero learning rate).

Optimiser (``config.adapt.tent``): the original's (its repository's
``conf.py`` and ``tent.setup_optimizer``): Adam, lr 1e-3, β = (0.9, 0.999),
ε = 1e-8, no weight decay, a constant rate. ``config.adapt.optim`` (UNLOCK's
parameter groups) is not read.

Where it differs from the original, and why:

* Running statistics: the original deletes them and always normalises with
  the current batch's statistics. Here the adapted model is evaluated as
  every other row is, on whole panoramas with stored statistics, so the step
  stores the target batches' statistics as running averages (the model's BN
  momentum): the evaluated model normalises with target statistics, as the
  original's does.
* Offline: the original adapts on each test batch once, then predicts it;
  here it runs ``total_steps`` on target-train crops and is then evaluated
  on target val, which it never sees (as every method of this stage).
* LayerNorm: the original's networks have BatchNorm only; with a transformer
  backbone the normalisation layers are LayerNorms, whose affine parameters
  it updates too (as the Tent authors' later transformer experiments do).
"""
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from unlock_jax import methods
from unlock_jax.data import keys
from unlock_jax.models import layers
from unlock_jax.models import predict as predict_lib
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import adapt as adapt_lib
from unlock_jax.train import steps

NORM_TYPES = (nn.LayerNorm, nn.BatchNorm, nn.GroupNorm, layers.BatchNorm)
NORM, FROZEN = "norm", "frozen"
AFFINE = ("scale", "bias")


def norm_labels(model, params) -> dict:
  """``params``' tree of :data:`NORM` (affine parameter of a normalisation layer) or
  :data:`FROZEN`, by module type: the model's modules are traced once."""
  found = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, NORM_TYPES):
      found.add(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables_lib.param_shapes(model, (1, 64, 64, 3))

  def label(path, _):
    names = tuple(str(getattr(p, "key", p)) for p in path)
    return NORM if names[:-1] in found and names[-1] in AFFINE else FROZEN
  labels = jax.tree_util.tree_map_with_path(label, params)
  if NORM not in jax.tree.leaves(labels):
    raise ValueError("tent: the model has no normalisation layer with affine parameters")
  return labels


def make_optimizer(model, cfg, total_steps, params):
  """Adam on the normalisation affine parameters (``config.adapt.tent``), nothing elsewhere."""
  del total_steps  # a constant rate, as the original
  t = cfg.tent
  adam = optax.adamw(t.lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay)
  tx = optax.multi_transform({NORM: adam, FROZEN: optax.set_to_zero()},
                             norm_labels(model, params))
  return tx, optax.constant_schedule(t.lr)


def softmax_entropy(logits):
  """Per-pixel ``-Σ_c p_c log p_c`` of ``softmax(logits)`` over the last axis."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy_loss(model, params, batch_stats, image):
  """Mean entropy of the semantic softmax at crop size; BN statistics after the forward."""
  out, mut = model.apply({"params": params, "batch_stats": batch_stats}, image,
                         train=False, bn_train=True, semantic_only=True,
                         mutable=["batch_stats"])
  logits = predict_lib.semantic_logits(out, image.shape[1:3])
  return softmax_entropy(logits).mean(), mut.get("batch_stats", batch_stats)


def make_step(model, tx, schedule, mesh, state, *, cfg):
  """Jitted ``(state, batch, source_params, rng) -> (state, measurements)``."""
  del cfg  # everything it reads is in tx
  labels = norm_labels(model, state["params"])
  norm = lambda label, new, old: new if label == NORM else old

  def step_fn(state, batch, source_params, rng):
    del source_params, rng  # no regulariser; the forward draws nothing
    (loss, bs), grads = jax.value_and_grad(
        lambda p: entropy_loss(model, p, state["batch_stats"], batch[keys.UNLABELED_IMAGE]),
        has_aux=True)(state["params"])
    # No gradient outside the norms: XLA drops those weight gradients.
    grads = jax.tree.map(lambda l, g: norm(l, g, jnp.zeros_like(g)), labels, grads)
    new_state, m = steps.apply_gradients(state, grads, loss, tx, schedule)
    # p + 0 is not p for p = -0.0: the frozen leaves are the old ones, exactly.
    new_state["params"] = jax.tree.map(norm, labels, new_state["params"], state["params"])
    new_state["batch_stats"] = bs
    return new_state, m | {"loss/entropy": loss}

  return adapt_lib.jit_step(step_fn, mesh, state)


def init_state(variables, tx, mesh):
  return adapt_lib.init_state(variables, tx, mesh, teacher=False)


CONFIG_KEYS = ("tent",)

METHOD = methods.Method(
    name="tent", streams=("target_unlabelled",), config_keys=CONFIG_KEYS,
    init_state=init_state, make_step=make_step, make_optimizer=make_optimizer)
