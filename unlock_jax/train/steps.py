"""Pure, jitted training steps and train-state creation.

State is a plain dict ``{"params", "batch_stats", "opt", "step",
"first_bad_step"}``. The step folds its RNG from ``(base key, step)`` so a
resumed run draws exactly what an uninterrupted one would. A non-finite loss
does not stop the device program; the step records the first such step in
``first_bad_step`` and the host loop raises at its next check, before any
checkpoint of the bad state can be written.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import losses as losses_lib


def init_state(model, tx, rng, image_shape: tuple[int, ...], mesh) -> dict:
  """Creates the replicated train state directly on the mesh."""
  def init(rng):
    variables = variables_lib.init_variables(model, rng, image_shape)
    params = variables["params"]
    return {"params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "first_bad_step": jnp.full((), -1, jnp.int32)}
  abstract = jax.eval_shape(init, rng)
  sharding = jax.tree.map(lambda _: shd.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=sharding)(rng)


def instance_targets(batch: dict) -> dict | None:
  """The R-CNN targets of both branches, or None for semantic-only batches."""
  if keys.MODAL_MASKS not in batch:
    return None
  return {p: {"masks": batch[f"{p}_masks"], "classes": batch[f"{p}_classes"],
              "boxes": batch[f"{p}_boxes"], "valid": batch[f"{p}_valid"]}
          for p in ("modal", "amodal")}


def supervised_terms(out: dict, batch: dict, *, sem_normalize: str) -> dict:
  """The loss terms of a labelled forward, in a fixed order: ``sem`` (semantic
  CE), then each R-CNN branch's losses as ``<branch>/<name>``."""
  terms = {"sem": losses_lib.semantic_ce(out["sem_logits"], batch[keys.SEMANTIC],
                                         normalize=sem_normalize)}
  for branch, branch_losses in out.get("losses", {}).items():
    for name, value in branch_losses.items():
      terms[f"{branch}/{name}"] = value
  return terms


def source_loss(model, params, batch_stats, batch, rng, *, loss_cfg):
  """Semantic CE + (when the model has instance heads) the R-CNN losses."""
  r_drop, r_samp = jax.random.split(rng)
  out, mutated = model.apply(
      {"params": params, "batch_stats": batch_stats}, batch[keys.IMAGE],
      train=True, targets=instance_targets(batch),
      rngs={"dropout": r_drop, "sampling": r_samp}, mutable=["batch_stats"])
  terms = supervised_terms(out, batch, sem_normalize=loss_cfg.sem_normalize)
  total = sum(terms.values())
  return total, (terms, mutated.get("batch_stats", batch_stats))


def apply_gradients(state: dict, grads, loss, tx, schedule) -> tuple[dict, dict]:
  """The optimiser half of every train step (source and adaptation).

  Returns the state with new ``params``, ``opt``, ``step`` and the
  non-finite latch ``first_bad_step`` (other entries copied), and the
  step's loss, gradient norm, parameter norm and base learning rate.
  """
  step = state["step"]
  updates, new_opt = tx.update(grads, state["opt"], state["params"])
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  bad = jnp.where((state["first_bad_step"] < 0) & ~finite, step,
                  state["first_bad_step"])
  new_state = dict(state, params=optax.apply_updates(state["params"], updates),
                   opt=new_opt, step=step + 1, first_bad_step=bad)
  measurements = {"loss": loss, "grad_norm": grad_norm,
                  "param_norm": optax.tree.norm(state["params"]),
                  "lr": schedule(step)}
  return new_state, measurements


def make_source_step(model, tx, schedule, mesh, state, *, loss_cfg):
  """Jitted ``(state, batch, base_rng) -> (state, measurements)``, state donated."""
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  repl = shd.replicated(mesh)

  def step_fn(state, batch, base_rng):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    grad_fn = jax.value_and_grad(
        functools.partial(source_loss, model, loss_cfg=loss_cfg), has_aux=True)
    (loss, (terms, new_bs)), grads = grad_fn(state["params"], state["batch_stats"],
                                             batch, rng)
    new_state, measurements = apply_gradients(state, grads, loss, tx, schedule)
    new_state["batch_stats"] = new_bs
    return new_state, measurements | {f"loss/{k}": v for k, v in terms.items()}

  return jax.jit(step_fn, out_shardings=(state_sharding, repl),
                 donate_argnums=(0,))
