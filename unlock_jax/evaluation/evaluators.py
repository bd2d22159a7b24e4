"""Evaluators: small objects built from ``config.evals.<name>``, run on whole images.

Each evaluator has ``run(variables) -> Iterator[(metric_name, value)]``. The
jitted predict function is cached per model, batches are padded with
``_mask=False`` rows so every process runs the same number of steps, and each
process's accumulator is merged on all processes at the end. Plug-ins by
name: ``config.evals.<name>.type`` is a key of :data:`TYPES`.
"""
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from unlock_jax import fileio
from unlock_jax import progress as progress_lib
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import pipeline
from unlock_jax.evaluation import semantic
from unlock_jax.train import losses

_PREDICT_CACHE: dict = {}


def semantic_predict_fn(model, mesh):
  """Jitted ``(variables, image) -> argmax [B,H,W] int32`` at input resolution."""
  key = (id(model), "semantic", id(mesh))
  if key not in _PREDICT_CACHE:
    def predict(variables, image):
      out = model.apply(variables, image, train=False)
      logits = losses.resize_logits(out["sem_logits"].astype(jnp.float32),
                                    image.shape[1:3])
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    _PREDICT_CACHE[key] = (model, jax.jit(
        predict, out_shardings=shd.data_sharding(mesh)))
  return _PREDICT_CACHE[key][1]


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in batch order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas along other axes carry the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


class SemanticEvaluator:
  """mIoU and per-class IoU (reference rules) on whole images of one split."""

  def __init__(self, cfg, *, model, mesh, workdir: str, name: str = "semantic"):
    self.cfg, self.model, self.mesh, self.name = cfg, model, mesh, name
    self.reader = pipeline.open_reader(cfg.layout, fileio.resolve(cfg.root, workdir),
                                       cfg.split, cfg.get("image_size"))
    self.image_size = tuple(cfg.image_size)

  def _accumulate(self, variables) -> semantic.SemanticAccumulator:
    predict = semantic_predict_fn(self.model, self.mesh)
    acc = semantic.SemanticAccumulator(labels.NUM_CLASSES)
    bs = int(self.cfg.batch_size)
    steps = pipeline.num_eval_steps(len(self.reader), bs)
    prog = progress_lib.Progress(steps, f"eval/{self.name}", unit="batch")
    for i, batch in enumerate(pipeline.eval_batches(
        self.reader, global_batch_size=bs, image_size=self.image_size,
        process_index=jax.process_index(), process_count=jax.process_count())):
      pred = local_rows(predict(variables, shd.put_batch(
          {keys.IMAGE: batch[keys.IMAGE]}, self.mesh)[keys.IMAGE]))
      for row, gt in zip(pred, batch["_host_gt"]):
        if gt is not None:
          acc.add(row, gt["semantic"])
      prog.update(i + 1)
    merged = semantic.SemanticAccumulator(labels.NUM_CLASSES)
    for part in shd.gather_objects(acc):  # every process's share
      merged.merge(part)
    return merged

  def run(self, variables) -> Iterator[tuple[str, float]]:
    res = self._accumulate(variables).result()
    yield "mIoU", float(res["mIoU"])
    for name, iou, counted in zip(labels.CLASS_NAMES, res["class_iou"],
                                  res["class_counted"]):
      if counted:
        yield f"IoU/{name}", float(iou)


TYPES = {"semantic": SemanticEvaluator}


def from_config(name: str, cfg, *, model, mesh, workdir: str):
  """Builds the evaluator named by ``cfg.type``."""
  if cfg.type not in TYPES:
    raise ValueError(f"config.evals.{name}.type={cfg.type!r} is unknown; "
                     f"available: {sorted(TYPES)}")
  return TYPES[cfg.type](cfg, model=model, mesh=mesh, workdir=workdir, name=name)
