"""Stage 5: evaluate one or several checkpoints on whole images with every configured evaluator.

``config.evaluate.checkpoint`` (a train run's checkpoint folder, or a folder
written by ``tools/convert_torch``) is scored by every ``config.evals.*``;
``results.json`` holds ``{"checkpoint", "step", "results"}``. With
``config.evaluate.runs`` set — ``{name: {"checkpoint": path, "tau": (tau_m,
tau_a)}}``, e.g. ``source_only`` at the reference's 0.95/0.95 and ``UNLOCK``
at 0.55/0.5 (not ``unlock``: ConfigDict has a method of that name) — each named checkpoint is scored with its own fusion
thresholds (applied to every ``oass`` evaluator; its pictures are named
after the run) and ``results.json`` holds
``{"runs": {name: {"checkpoint", "step", "results"}}}``, with the usual
``<evaluator>/<metric>`` keys, plus a side-by-side table of the headline
metrics. Each evaluator's per-class table is printed once, by this stage.
TensorBoard scalars go under ``<results_dir>[/<name>]``.
"""
import os

import jax
from absl import logging
from clu import metric_writers

from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import inference
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.evaluation import evaluators
from unlock_jax.evaluation import report
from unlock_jax.models import amodalpass
from unlock_jax.models import predict as predict_lib


def _score(config, model, fns, mesh, workdir, ckpt_path, writer, tau=None, run=""):
  """One checkpoint through every evaluator: its results, tables printed, scalars written.

  ``fns``: the (flat, full-panorama) predict functions (``jit_predict_fn_sets``).
  """
  variables, step = inference.load_variables(model, ckpt_path, mesh)
  logging.info("Evaluating %s (step %s)", ckpt_path, step)
  results, done = evaluators.run_all(config.evals, variables, predict_fns=fns[0],
                                     panorama_fns=fns[1], seam_mode=config.seam.mode,
                                     mesh=mesh, workdir=workdir, run=run, tau=tau)
  for name, ev in done:
    if jax.process_index() == 0:
      print(f"== {name} ({ckpt_path}, step {step}) ==\n{ev.table()}", flush=True)
    for pic_name, array in ev.pictures:
      writer.write_images(step or 0, {pic_name: array[None]})
  writer.write_scalars(step or 0, results)
  writer.flush()
  return {"checkpoint": ckpt_path, "step": step, "results": results}


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "evaluate", config,
                    fingerprint.begin(config, workdir, "evaluate"))
  out_dir = fileio.resolve(config.evaluate.results_dir, workdir)
  mesh = shd.make_mesh()
  model = amodalpass.build(config.model)  # one model, its predict functions compiled once
  # Pinhole evaluators run flat, panorama ones in config.seam's mode.
  fns = predict_lib.jit_predict_fn_sets(model, mesh, config.seam)
  just_log = jax.process_index() > 0
  runs_cfg = config.evaluate.runs
  if not runs_cfg:
    writer = metric_writers.create_default_writer(out_dir, just_logging=just_log)
    out = _score(config, model, fns, mesh, workdir, fileio.resolve(config.evaluate.checkpoint, workdir),
                 writer)
  else:
    runs = {}
    for name, r in runs_cfg.items():
      writer = metric_writers.create_default_writer(os.path.join(out_dir, name),
                                                    just_logging=just_log)
      runs[name] = _score(config, model, fns, mesh, workdir, fileio.resolve(r.checkpoint, workdir),
                          writer, r.get("tau"), run=name)
    if jax.process_index() == 0:
      print(report.comparison_table(runs), flush=True)
    out = {"runs": runs}
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "results.json"), out)
  return out["results"] if "results" in out else out
