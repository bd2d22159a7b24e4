"""Evaluators: small objects built from ``config.evals.<name>``, run on whole images.

Each evaluator has ``run(variables) -> Iterator[(metric_name, value)]`` and,
after a run, ``table()`` (its per-class text table, which the calling stage
prints) and ``pictures`` (``(name, uint8 image)`` pairs for the writers). The
jitted predict function is cached per model, batches are padded with
``_mask=False`` rows (skipped here) so every process runs the same number of
steps, and each process's accumulator is merged on all processes at the end.
Plug-ins by name: ``config.evals.<name>.type`` is a key of :data:`TYPES`.
Every key an evaluator reads is set by its builder in ``configs/common.py``
(``semantic_eval``, ``oass_eval``): no defaults live here.
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
from unlock_jax.evaluation import pictures as pictures_lib
from unlock_jax.evaluation import report
from unlock_jax.evaluation import semantic
from unlock_jax.models import layers

_PREDICT_CACHE: dict = {}


def _cached_jit(model, mesh, kind: str, predict):
  """One jitted, batch-sharded predict function per (model, kind, mesh)."""
  key = (id(model), kind, id(mesh))
  if key not in _PREDICT_CACHE:  # the model is kept so its id stays unique
    _PREDICT_CACHE[key] = (model, jax.jit(
        predict, out_shardings=shd.data_sharding(mesh)))
  return _PREDICT_CACHE[key][1]


def _argmax_at_input_size(out, image):
  logits = layers.resize_bilinear(out["sem_logits"].astype(jnp.float32),
                                  image.shape[1:3])
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def semantic_predict_fn(model, mesh):
  """Jitted ``(variables, image) -> argmax [B,H,W] int32`` at input resolution."""
  def predict(variables, image):
    return _argmax_at_input_size(model.apply(variables, image, train=False), image)
  return _cached_jit(model, mesh, "semantic", predict)


def oass_predict_fn(model, mesh):
  """Jitted ``(variables, image) -> {"sem", "modal"?, "amodal"?}``, batch-sharded.

  ``modal``/``amodal`` are the padded detection dicts of the two R-CNN
  branches (present only when the model has instance heads).
  """
  def predict(variables, image):
    out = model.apply(variables, image, train=False)
    pred = {"sem": _argmax_at_input_size(out, image)}
    pred.update({b: out[b] for b in ("modal", "amodal") if b in out})
    return pred
  return _cached_jit(model, mesh, "oass", predict)


def _no_detections(h: int, w: int) -> dict:
  return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros((0,), np.float32),
          "classes": np.zeros((0,), np.int32), "masks": np.zeros((0, h, w), bool),
          "valid": np.zeros((0,), bool)}


def _open(cfg, workdir: str):
  return pipeline.open_reader(cfg.layout, fileio.resolve(cfg.root, workdir),
                              cfg.split, cfg.image_size, format=cfg.format,
                              data_dir=fileio.resolve(cfg.tfds_data_dir, workdir))


class SemanticEvaluator:
  """mIoU and per-class IoU (reference rules) on whole images of one split.

  Config keys: layout, root, split, image_size, batch_size. ``run``: the
  model's name, as for :class:`OassEvaluator` (no pictures here to name).
  """

  def __init__(self, cfg, *, model, mesh, workdir: str, name: str = "semantic",
               run: str = ""):
    self.cfg, self.model, self.mesh, self.name = cfg, model, mesh, name
    self.run_name = run
    self.reader = _open(cfg, workdir)
    self.image_size = tuple(cfg.image_size)
    self.result: dict = {}
    self.pictures: list[tuple[str, np.ndarray]] = []  # none drawn

  def _accumulate(self, variables) -> semantic.SemanticAccumulator:
    predict = semantic_predict_fn(self.model, self.mesh)
    acc = semantic.SemanticAccumulator(labels.NUM_CLASSES)
    bs = int(self.cfg.batch_size)
    steps = pipeline.num_eval_steps(len(self.reader), bs)
    prog = progress_lib.Progress(steps, f"eval/{self.name}", unit="batch")
    for i, batch in enumerate(pipeline.eval_batches(
        self.reader, global_batch_size=bs, image_size=self.image_size,
        process_index=jax.process_index(), process_count=jax.process_count())):
      pred = shd.local_rows(predict(variables, shd.put_batch(
          {keys.IMAGE: batch[keys.IMAGE]}, self.mesh)[keys.IMAGE]))
      for row, gt, real in zip(pred, batch["_host_gt"], batch[keys.MASK]):
        if real:
          acc.add(row, gt["semantic"])
      prog.update(i + 1)
    merged = semantic.SemanticAccumulator(labels.NUM_CLASSES)
    for part in shd.gather_objects(acc):  # every process's share
      merged.merge(part)
    return merged

  def run(self, variables) -> Iterator[tuple[str, float]]:
    self.result = report.semantic_result(self._accumulate(variables).result())
    yield "mIoU", self.result["mIoU"]
    for row in self.result["per_class"]:
      if row["IoU"] == row["IoU"]:  # NaN: class in neither GT nor prediction
        yield f"IoU/{row['name']}", row["IoU"]

  def table(self) -> str:
    return report.format_table(self.result)


class OassEvaluator:
  """mIoU, mPQ, mAP, mAAP, mAPQ (the reference's rules) and pictures.

  Config keys: layout, root, split, image_size, batch_size, tau_m, tau_a
  (``report.TAU_ADAPTED`` / ``TAU_SOURCE_ONLY``), stuff_area and
  min_region_size (the reference's pixel counts, scaled with the image),
  one_to_one (published APQ matching instead of the reference's),
  num_pictures, pictures_dir, picture_scale. A model without instance heads
  is scored with no detections. ``run`` names the model scored (``evaluate``'s
  run names, ``source_only`` / ``UNLOCK``): its pictures are
  ``<pictures_dir>/<run>_<evaluator>_<panorama>.png`` and their titles say it,
  so the runs of one evaluation never overwrite each other's.
  """

  def __init__(self, cfg, *, model, mesh, workdir: str, name: str = "oass",
               run: str = ""):
    self.cfg, self.model, self.mesh, self.name = cfg, model, mesh, name
    self.run_name = run
    self.reader = _open(cfg, workdir)
    self.image_size = tuple(cfg.image_size)
    self.pictures_dir = fileio.resolve(cfg.pictures_dir, workdir)
    self.pictures: list[tuple[str, np.ndarray]] = []  # (name, uint8 image) for writers
    self.result: dict = {}

  def _new_metrics(self) -> report.OassMetrics:
    c = self.cfg
    return report.OassMetrics(
        tau_m=float(c.tau_m), tau_a=float(c.tau_a), stuff_area=int(c.stuff_area),
        one_to_one=bool(c.one_to_one), min_region_size=int(c.min_region_size))

  def run(self, variables) -> Iterator[tuple[str, float]]:
    predict = oass_predict_fn(self.model, self.mesh)
    metrics = self._new_metrics()
    bs = int(self.cfg.batch_size)
    num_pictures = int(self.cfg.num_pictures)
    prog = progress_lib.Progress(pipeline.num_eval_steps(len(self.reader), bs),
                                 f"eval/{self.name}", unit="batch")
    self.pictures = []
    for i, batch in enumerate(pipeline.eval_batches(
        self.reader, global_batch_size=bs, image_size=self.image_size,
        process_index=jax.process_index(), process_count=jax.process_count())):
      image = shd.put_batch({keys.IMAGE: batch[keys.IMAGE]}, self.mesh)[keys.IMAGE]
      out = jax.tree.map(shd.local_rows, predict(variables, image))
      for r, (gt, real) in enumerate(zip(batch["_host_gt"], batch[keys.MASK])):
        if not real:
          continue
        pred = {"sem": out["sem"][r]}
        for branch in ("modal", "amodal"):
          pred[branch] = (jax.tree.map(lambda x, r=r: x[r], out[branch])
                          if branch in out else _no_detections(*self.image_size))
        fused = metrics.add(gt, pred)
        if jax.process_index() == 0 and len(self.pictures) < num_pictures:
          self._picture(gt, pred, fused)
      prog.update(i + 1)
    merged = self._new_metrics()
    for part in shd.gather_objects(metrics):
      merged.merge(part)
    self.result = merged.result()
    for k in report.HEADLINE + ("AP50", "AAP50"):
      yield k, float(self.result[k])
    for row in self.result["per_class"]:
      for k in ("IoU", "PQ", "APQ", "AP", "AAP"):
        if row[k] == row[k]:  # NaN: class not evaluated for this metric
          yield f"{k}/{row['name']}", float(row[k])

  def table(self) -> str:
    return report.format_table(self.result)

  def _picture(self, gt, pred, fused) -> None:
    run = self.run_name
    name = "_".join(filter(None, [run, self.name, gt["name"].replace("/", "_")]))
    model = (f"{run} (tau_m {float(self.cfg.tau_m):g}, tau_a {float(self.cfg.tau_a):g})"
             if run else "")
    array = pictures_lib.render_panels(
        gt["image"], gt, pred["sem"], fused["panoptic"], fused["amodal_panoptic"],
        fused["instance_map"], scale=float(self.cfg.picture_scale),
        title=" · ".join(filter(None, [model, self.name, gt["name"]])))
    pictures_lib.save_png(f"{self.pictures_dir}/{name}.png", array)
    self.pictures.append((name, array))


TYPES = {"semantic": SemanticEvaluator, "oass": OassEvaluator}


def from_config(name: str, cfg, *, model, mesh, workdir: str, run: str = ""):
  """Builds the evaluator named by ``cfg.type``; ``run`` names the model scored."""
  if cfg.type not in TYPES:
    raise ValueError(f"config.evals.{name}.type={cfg.type!r} is unknown; "
                     f"available: {sorted(TYPES)}")
  return TYPES[cfg.type](cfg, model=model, mesh=mesh, workdir=workdir, name=name, run=run)
