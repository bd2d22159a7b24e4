"""Evaluators: small objects built from ``config.evals.<name>``, run on whole images.

Each evaluator has ``run(variables) -> Iterator[(metric_name, value)]`` and,
after a run, ``table()`` (its per-class text table, which the calling stage
prints) and ``pictures`` (``(name, uint8 image)`` pairs for the writers). As
big_vision's evaluators take their ``predict_fn`` from the trainer, these take
the model's jitted predict functions (``models/predict.jit_predict_fns``,
built once by the calling stage) and use the one their type names
(``PREDICT``). Batches are padded with ``_mask=False`` rows (skipped here) so
every process runs the same number of steps, and each process's accumulator
is merged on all processes at the end. :func:`run_all` runs every configured
evaluator on one model.
Plug-ins by name: ``config.evals.<name>.type`` is a key of :data:`TYPES`.
Every key an evaluator reads is set by its builder in ``configs/common.py``
(``semantic_eval``, ``oass_eval``): no defaults live here.
"""
from typing import Iterator

import jax
import numpy as np

from unlock_jax import fileio
from unlock_jax import progress as progress_lib
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import labels
from unlock_jax.data import layouts
from unlock_jax.data import pipeline
from unlock_jax.data import seam_instances
from unlock_jax.evaluation import pictures as pictures_lib
from unlock_jax.evaluation import report
from unlock_jax.evaluation import seam
from unlock_jax.evaluation import semantic

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
  PREDICT = "semantic"  # the argmax only

  def __init__(self, cfg, *, predict_fn, mesh, workdir: str, name: str = "semantic",
               run: str = ""):
    self.cfg, self.predict_fn, self.mesh, self.name = cfg, predict_fn, mesh, name
    self.run_name = run
    self.reader = _open(cfg, workdir)
    self.image_size = tuple(cfg.image_size)
    self.result: dict = {}
    self.pictures: list[tuple[str, np.ndarray]] = []  # none drawn

  def _accumulate(self, variables) -> semantic.SemanticAccumulator:
    acc = semantic.SemanticAccumulator(labels.NUM_CLASSES)
    bs = int(self.cfg.batch_size)
    steps = pipeline.num_eval_steps(len(self.reader), bs)
    prog = progress_lib.Progress(steps, f"eval/{self.name}", unit="batch")
    for i, batch in enumerate(pipeline.eval_batches(
        self.reader, global_batch_size=bs, image_size=self.image_size,
        process_index=jax.process_index(), process_count=jax.process_count())):
      with jax.transfer_guard("disallow"):  # the image put explicitly; nothing else copied
        pred = self.predict_fn(variables, shd.put_array(batch[keys.IMAGE], self.mesh))
      pred = shd.local_rows(pred["semantic"])
      for row, gt, real in zip(pred.astype(np.int32), batch["_host_gt"], batch[keys.MASK]):
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
  num_pictures, pictures_dir, picture_scale, and ``seam`` (``enabled``,
  ``band_frac``, ``roll``: the 360° seam metrics of ``seam.py``, beside the
  five; ``roll`` costs one semantic-only forward of each panorama rolled by
  ``seam.roll_shift`` columns, with ``ROLL_PREDICT``'s function). A model
  without instance heads is scored with no detections. ``run`` names the
  model scored (``evaluate``'s run names, ``source_only`` / ``UNLOCK``): its pictures are
  ``<pictures_dir>/<run>_<evaluator>_<panorama>.png`` and their titles say it,
  so the runs of one evaluation never overwrite each other's. ``seam_mode``
  (``config.seam.mode``): when not ``"flat"``, each panorama's detections are
  merged into one instance per object across the 360° seam
  (``data/seam_instances.py``) before fusion, AP/AAP and the pictures.
  """
  PREDICT = "oass"  # the argmax and both branches' detections
  ROLL_PREDICT = "semantic"  # the rolled panorama's argmax only

  def __init__(self, cfg, *, predict_fn, mesh, workdir: str, name: str = "oass",
               run: str = "", roll_fn=None, seam_mode: str = "flat"):
    self.cfg, self.predict_fn, self.mesh, self.name = cfg, predict_fn, mesh, name
    self.merge_seam = seam_mode != "flat"
    self.roll_fn = roll_fn or predict_fn
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

  def _new_seam(self) -> seam.SeamMetrics:
    return seam.SeamMetrics(float(self.cfg.seam.band_frac), int(self.cfg.min_region_size))

  def _predict_rolled(self, variables, images: np.ndarray, shift: int) -> np.ndarray:
    def predict(rolled):
      with jax.transfer_guard("disallow"):  # the image put explicitly; nothing else copied
        out = self.roll_fn(variables, shd.put_array(rolled, self.mesh))
      return shd.local_rows(out["semantic"]).astype(np.int32)
    return seam.rolled_semantic(predict, images, shift)

  def run(self, variables) -> Iterator[tuple[str, float]]:
    metrics = self._new_metrics()
    seam_cfg = self.cfg.seam
    seam_metrics = self._new_seam() if seam_cfg.enabled or seam_cfg.roll else None
    shift = seam.roll_shift(self.image_size[1])
    bs = int(self.cfg.batch_size)
    num_pictures = int(self.cfg.num_pictures)
    prog = progress_lib.Progress(pipeline.num_eval_steps(len(self.reader), bs),
                                 f"eval/{self.name}", unit="batch")
    self.pictures = []
    for i, batch in enumerate(pipeline.eval_batches(
        self.reader, global_batch_size=bs, image_size=self.image_size,
        process_index=jax.process_index(), process_count=jax.process_count())):
      with jax.transfer_guard("disallow"):  # the image put explicitly; nothing else copied
        out = self.predict_fn(variables, shd.put_array(batch[keys.IMAGE], self.mesh))
      out = jax.tree.map(shd.local_rows, out)
      if seam_cfg.roll:
        rolled = self._predict_rolled(variables, batch[keys.IMAGE], shift)
      for r, (gt, real) in enumerate(zip(batch["_host_gt"], batch[keys.MASK])):
        if not real:
          continue
        pred = {"sem": out["semantic"][r].astype(np.int32)}
        for branch in ("modal", "amodal"):
          pred[branch] = (jax.tree.map(lambda x, r=r: x[r], out[branch])
                          if branch in out else _no_detections(*self.image_size))
          if self.merge_seam:
            pred[branch] = seam_instances.merge_seam_instances(pred[branch])
        fused = metrics.add(gt, pred)
        if seam_cfg.enabled:
          seam_metrics.add(gt, pred, fused)
        if seam_cfg.roll:
          seam_metrics.add_roll(pred["sem"], rolled[r])
        if jax.process_index() == 0 and len(self.pictures) < num_pictures:
          self._picture(gt, pred, fused)
      prog.update(i + 1)
    merged = self._new_metrics()
    for part in shd.gather_objects(metrics):
      merged.merge(part)
    self.result = merged.result()
    if seam_metrics is not None:
      merged_seam = self._new_seam()
      for part in shd.gather_objects(seam_metrics):
        merged_seam.merge(part)
      self.result["seam"] = merged_seam.result()
    for k in report.HEADLINE + ("AP50", "AAP50"):
      yield k, float(self.result[k])
    seam_keys = seam.KEYS if seam_cfg.enabled else ("roll_change",) if seam_cfg.roll else ()
    for k in seam_keys:
      v = self.result["seam"][k]
      if v == v:  # NaN: nothing to measure (no crossing instance, metric off)
        yield f"seam/{k}", float(v)
    for row in self.result["per_class"]:
      for k in ("IoU", "PQ", "APQ", "AP", "AAP"):
        if row[k] == row[k]:  # NaN: class not evaluated for this metric
          yield f"{k}/{row['name']}", float(row[k])

  def table(self) -> str:
    table = report.format_table(self.result)
    if "seam" in self.result:
      table += "\n" + seam.format_lines(self.result["seam"])
    return table

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


def from_config(name: str, cfg, *, predict_fns: dict, mesh, workdir: str, run: str = "",
                panorama_fns: dict | None = None, seam_mode: str = "flat"):
  """Builds the evaluator named by ``cfg.type``; ``run`` names the model scored.

  ``predict_fns``: the model's jitted predict functions by name
  (``models/predict.jit_predict_fns``), flat; the evaluator gets its type's.
  ``panorama_fns``/``seam_mode``: those of full 360° panoramas in
  ``config.seam.mode`` (``jit_predict_fn_sets``), used when the evaluator's
  layout holds panoramas (``layouts.PANORAMAS``) for its forward and its
  roll forward, with instances merged across the seam unless ``"flat"``.
  Pinhole layouts are always flat, whatever the mode.
  """
  if cfg.type not in TYPES:
    raise ValueError(f"config.evals.{name}.type={cfg.type!r} is unknown; "
                     f"available: {sorted(TYPES)}")
  cls = TYPES[cfg.type]
  if cfg.layout not in layouts.PANORAMAS:
    seam_mode = "flat"
  fns = panorama_fns if panorama_fns is not None and seam_mode != "flat" else predict_fns
  extra = ({"roll_fn": fns[cls.ROLL_PREDICT], "seam_mode": seam_mode}
           if hasattr(cls, "ROLL_PREDICT") else {})
  return cls(cfg, predict_fn=fns[cls.PREDICT], mesh=mesh, workdir=workdir,
             name=name, run=run, **extra)


def run_all(evals_cfg, variables, *, predict_fns: dict, mesh, workdir: str, run: str = "",
            tau=None, names=None, panorama_fns: dict | None = None,
            seam_mode: str = "flat") -> tuple[dict, list]:
  """Every evaluator of ``evals_cfg`` (``config.evals``; those in ``names`` if given) on one model.

  ``tau``: ``(tau_m, tau_a)`` replacing every ``oass`` evaluator's fusion
  thresholds; ``panorama_fns``, ``seam_mode``: as :func:`from_config`.
  Returns ``({"<evaluator>/<metric>": value}, [evaluators])``, the
  evaluators holding their tables and pictures.
  """
  results, done = {}, []
  for name in (names if names is not None else list(evals_cfg)):
    ecfg = evals_cfg[name]
    if tau is not None and ecfg.type == "oass":
      ecfg = ecfg.copy_and_resolve_references()
      ecfg.tau_m, ecfg.tau_a = (float(t) for t in tau)
    ev = from_config(name, ecfg, predict_fns=predict_fns, mesh=mesh, workdir=workdir,
                     run=run, panorama_fns=panorama_fns, seam_mode=seam_mode)
    results.update({f"{name}/{metric}": value for metric, value in ev.run(variables)})
    done.append((name, ev))
  return results, done
