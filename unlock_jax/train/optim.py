"""Optimiser: AdamW per parameter group (regex → lr/wd multipliers), poly schedule.

Groups mirror mmcv's ``paramwise_cfg``: the first regex that matches a
parameter's path (``"decode_head/conv_seg/kernel"``) decides its multipliers;
unmatched parameters use multiplier 1. An ``lr_mult`` of 0 freezes a group.
PyTorch AdamW decays by ``lr * wd * θ`` (decoupled), which is what
``optax.adamw`` does too.
"""
import re
from typing import Sequence

import jax
import optax


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


def group_labels(params, groups: Sequence[tuple]) -> dict:
  """Pytree of group names for ``params`` (``"default"`` when nothing matches)."""
  compiled = [(name, re.compile(pattern)) for name, pattern, *_ in groups]

  def label(path, _):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    for name, rx in compiled:
      if rx.search(key):
        return name
    return "default"
  return jax.tree_util.tree_map_with_path(label, params)


def make(optim_cfg, total_steps: int, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transform and the base (multiplier 1) schedule.

  ``optim_cfg``: lr, weight_decay, b1, b2, eps, power, end_lr, warmup_steps,
  groups = ((name, regex, lr_mult, wd_mult), ...).
  """
  groups = tuple(tuple(g) for g in optim_cfg.groups)
  names = [g[0] for g in groups]
  if "default" in names or len(set(names)) != len(names):
    raise ValueError(f"optimizer group names must be unique and not 'default': {names}")

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
  tx = optax.multi_transform(txs, group_labels(params, groups))
  base = poly_schedule(optim_cfg.lr, total_steps, optim_cfg.power,
                       optim_cfg.end_lr, optim_cfg.warmup_steps)
  return tx, base
