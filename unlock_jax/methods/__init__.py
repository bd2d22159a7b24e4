"""Adaptation methods, one module each, chosen by ``config.adapt.method``.

A method is a :class:`Method`: the input streams its step reads, the
``config.adapt`` keys it reads beyond the stage's own (their defaults live
in configs/default.py, as every key's: building a config imports no JAX),
how its state starts from the source variables, and a factory of its jitted
step. ``stages/adapt.py`` is the same wiring for all of them: the input, the
source model, the loop with its checkpoints, evaluations and summary.

The shared pieces are library functions every method calls: the EMA teacher,
the parameter regulariser, the state and the jit (``train/adapt.py``),
ClassMix (``train/classmix.py``), colour jitter and blur
(``train/augment.py``), the losses (``train/losses.py``, ``train/steps.py``).
Adding a method touches its module, its keys in configs/default.py (and
docs/configuration.md) and its tests; a test may register one of its own::

  methods.METHODS.register("mine", methods.Method(...))
"""
import dataclasses
from typing import Any, Callable

from unlock_jax import registry

# What the adapt stage feeds a step, by name: the batch keys each stream adds
# (``data/keys.py``; ``methods/inputs.py`` builds them, reading only the
# data a method's streams need). Instance keys come with instance heads.
STREAMS = {
    # Target crops with their OPLL labels and the ADCL pool's pasted objects:
    # image, semantic, modal_* and amodal_* (masks, classes, boxes, valid).
    "target_pseudo_labelled": ("image", "semantic"),
    # Target crops without labels (no pseudo-label stage needed):
    # unlabeled_image. With target_pseudo_labelled, one is drawn per PL crop.
    "target_unlabelled": ("unlabeled_image",),
    # Labelled source crops as train_source draws them (config.input), as many
    # as target crops: source_image, source_semantic, source_modal_* and
    # source_amodal_* (the keys train_source's batches have, prefixed source_).
    "source_labelled": ("source_image", "source_semantic"),
}
# Read by the stage for every method, so no method lists them in config_keys.
STAGE_KEYS = ("method", "source_checkpoint", "total_steps", "batch_size", "crop_size",
              "cat_max_ratio", "flip", "wrap_crops", "max_instances", "num_workers", "paste",
              "optim", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "evals",
              "out_dir", "overwrite")


@dataclasses.dataclass(frozen=True)
class Method:
  """One adaptation method.

  Attributes:
    name: its ``config.adapt.method``.
    streams: the :data:`STREAMS` its step reads.
    config_keys: the ``config.adapt`` keys its step reads (not :data:`STAGE_KEYS`).
    init_state: ``(source variables, tx, mesh) -> state``, a dict with at
      least ``params``, ``batch_stats``, ``opt``, ``step`` and
      ``first_bad_step`` (what ``train/loop.py`` reads), replicated on the mesh;
      everything in it is checkpointed.
    make_step: ``(model, tx, schedule, mesh, state, *, cfg=config.adapt) ->
      step``, with ``step(state, batch, source_params, rng) -> (state,
      measurements)`` jitted, the state donated; ``source_params`` (the
      source model's, frozen, never checkpointed) and ``rng`` (folded with
      the step inside) are the same for every step.
    make_optimizer: ``(model, cfg=config.adapt, total_steps, params) -> (tx,
      schedule)``; None: ``train/optim.make(cfg.optim, ...)``.
    frozen_params: ``(config, workdir, source variables, mesh) -> pytree``,
      what the stage passes as the step's ``source_params`` (another
      model's frozen weights, or ``{}``); None: the source parameters.
  """
  name: str
  streams: tuple[str, ...]
  config_keys: tuple[str, ...]
  init_state: Callable[..., dict]
  make_step: Callable[..., Callable]
  make_optimizer: Callable[..., tuple] | None = None
  frozen_params: Callable[..., Any] | None = None

  def __post_init__(self):
    unknown = [s for s in self.streams if s not in STREAMS]
    if unknown or not self.streams:
      raise ValueError(f"method {self.name!r} reads streams {list(self.streams)}; the adapt "
                       f"stage feeds {sorted(STREAMS)} (at least one)")

  def optimizer(self, model, adapt_cfg, total_steps: int, params) -> tuple:
    """``(tx, schedule)``: :attr:`make_optimizer`'s, or ``config.adapt.optim``'s."""
    if self.make_optimizer is not None:
      return self.make_optimizer(model, adapt_cfg, total_steps, params)
    from unlock_jax.train import optim  # pylint: disable=g-import-not-at-top
    return optim.make(adapt_cfg.optim, total_steps, params)

  def frozen(self, config, workdir: str, variables, mesh):
    """The step's frozen argument: :attr:`frozen_params`'s, or the source parameters."""
    if self.frozen_params is not None:
      return self.frozen_params(config, workdir, variables, mesh)
    return variables["params"]

  def check_config(self, adapt_cfg) -> None:
    """Refuses a ``config.adapt`` lacking a key this method reads, naming it."""
    missing = [k for k in self.config_keys if k not in adapt_cfg]
    if missing:
      raise ValueError(f"config.adapt lacks {missing}, read by adapt method {self.name!r}: "
                       "add them (configs/default.py has every method's defaults)")


METHODS = registry.Registry("adapt method", {
    "unlock": "unlock_jax.methods.unlock:METHOD",
    "tent": "unlock_jax.methods.tent:METHOD",
    "uda": "unlock_jax.methods.uda:METHOD",
})


def get(name: str) -> Method:
  """The method named ``name``; ValueError naming the known ones otherwise."""
  return METHODS.get(name)
