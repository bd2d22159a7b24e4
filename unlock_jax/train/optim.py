"""Optimiser: AdamW per parameter group (mmcv ``custom_keys`` rule), poly schedule.

Groups reproduce mmcv's ``DefaultOptimizerConstructor`` with
``paramwise_cfg.custom_keys``, which is what the reference's multipliers mean:
each parameter takes the multipliers of the first key that is a substring of
its full PyTorch name, keys tried longest first (alphabetically among equal
lengths). So ``decode_head`` beats ``head`` whatever order a config lists them
in, and ``head`` beats ``norm`` in ``decode_head...norm_patches``. Unmatched
parameters keep multiplier 1.

Keys are matched against :func:`reference_name`, the reference's name of our
parameter (``amodal/rpn_head/rpn_conv/kernel`` ->
``rpn_head_amodal.rpn_conv.weight``), not the flax path: the two R-CNN
branches live under ``modal/``/``amodal/`` here, so a key like ``_amodal``
only means what it means in the reference on its name.

PyTorch AdamW decays by ``lr * wd * θ`` (decoupled), which is what
``optax.adamw`` does too. An ``lr_mult`` of 0 freezes a group.
"""
import re
from typing import Sequence

import jax
import optax

from unlock_jax.models import reference_names

# Flax prefix -> reference module of the R-CNN branches.
_BRANCHES = {v: k for k, v in reference_names.REFERENCE_BRANCHES.items()}
_LEAVES = {"kernel": "weight", "scale": "weight"}
_GLUED = re.compile(r"^(.+)_(\d+)$")
# Reference parameter names use only these; anything else (``^``, ``/``,
# ``\``) is a regex or flax path and would silently match nothing.
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_.]+$")


def poly_schedule(peak: float, total_steps: int, power: float = 1.0,
                  end: float = 0.0, warmup_steps: int = 0,
                  warmup_ratio: float = 1e-6) -> optax.Schedule:
  """mmcv PolyLrUpdaterHook: ``(peak-end)·(1-t/T)^power + end``, optional linear warm-up."""
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")

  def schedule(step):
    t = jax.numpy.minimum(step, total_steps)
    lr = (peak - end) * (1.0 - t / total_steps) ** power + end
    if warmup_steps:
      k = (1.0 - t / warmup_steps) * (1.0 - warmup_ratio)
      lr = jax.numpy.where(t < warmup_steps, lr * (1.0 - k), lr)
    return lr
  return schedule


def reference_name(path: str) -> str:
  """Our flax path -> the reference's PyTorch parameter name.

  The inverse of ``convert_torch.key_to_path`` with its default renames:
  ``backbone/block1_0/norm1/scale`` -> ``backbone.block1.0.norm1.weight``.
  """
  for ours in sorted(_BRANCHES, key=len, reverse=True):
    if path.startswith(ours + "/"):
      path = _BRANCHES[ours] + path[len(ours):]
      break
  *mods, leaf = path.split("/")
  parts = []
  for m in mods:
    unglued = []
    while (g := _GLUED.match(m)):
      m, index = g[1], g[2]
      unglued.insert(0, index)
    parts += [m, *unglued]
  return ".".join(parts + [_LEAVES.get(leaf, leaf)])


def _check(groups: Sequence[tuple]) -> None:
  names = [g[0] for g in groups]
  if "default" in names or len(set(names)) != len(names):
    raise ValueError(f"optimizer group names must be unique and not 'default': {names}")
  keys = [g[1] for g in groups]
  if len(set(keys)) != len(keys):
    raise ValueError(f"optimizer group keys must be unique: {keys}")
  for key in keys:
    if not _KEY_CHARS.match(key):
      raise ValueError(
          f"optimizer group key {key!r} is not a substring of any reference "
          "parameter name (mmcv rule: plain substrings of names like "
          "'rpn_head_amodal.rpn_conv.weight'; regexes are no longer supported)")


def assign(name: str, groups: Sequence[tuple]) -> str:
  """mmcv's rule: the group of the longest key contained in ``name`` (ties alphabetical)."""
  for key, group in sorted(sorted((g[1], g[0]) for g in groups),
                           key=lambda kg: len(kg[0]), reverse=True):
    if key in name:
      return group
  return "default"


def group_labels(params, groups: Sequence[tuple]) -> dict:
  """Pytree of group names for ``params`` (``"default"`` when no key matches)."""
  groups = tuple(tuple(g) for g in groups)
  _check(groups)

  def label(path, _):
    flax_path = "/".join(str(getattr(p, "key", p)) for p in path)
    return assign(reference_name(flax_path), groups)
  return jax.tree_util.tree_map_with_path(label, params)


def make(optim_cfg, total_steps: int, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transform and the base (multiplier 1) schedule.

  ``optim_cfg``: lr, weight_decay, b1, b2, eps, power, end_lr, warmup_steps,
  match (``"mmcv"``, the only rule), groups = ((name, key, lr_mult, wd_mult), ...).
  """
  match = optim_cfg.get("match", "mmcv")
  if match != "mmcv":
    raise ValueError(f"optim.match must be 'mmcv' (regex_first was removed), got {match!r}")
  groups = tuple(tuple(g) for g in optim_cfg.groups)
  labels = group_labels(params, groups)

  def adamw(lr_mult, wd_mult):
    if lr_mult == 0:
      return optax.set_to_zero()
    sched = poly_schedule(optim_cfg.lr * lr_mult, total_steps, optim_cfg.power,
                          optim_cfg.end_lr * lr_mult, optim_cfg.warmup_steps)
    return optax.adamw(sched, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                       weight_decay=optim_cfg.weight_decay * wd_mult)

  txs = {"default": adamw(1.0, 1.0)}
  for name, _, lr_mult, wd_mult in groups:
    txs[name] = adamw(lr_mult, wd_mult)
  tx = optax.multi_transform(txs, labels)
  base = poly_schedule(optim_cfg.lr, total_steps, optim_cfg.power,
                       optim_cfg.end_lr, optim_cfg.warmup_steps)
  return tx, base
