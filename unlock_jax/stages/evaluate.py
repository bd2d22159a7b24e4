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

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.evaluation import evaluators
from unlock_jax.evaluation import report
from unlock_jax.models import amodalpass


def comparison_table(runs: dict) -> str:
  """Headline metrics of every evaluator, one column per named run."""
  names = list(runs)
  keys = [k for k in next(iter(runs.values()))["results"]
          if k.split("/")[-1] in report.HEADLINE and k.count("/") == 1]
  width = max([len(k) for k in keys] + [6])
  lines = [f"{'metric':<{width}}" + "".join(f"  {n:>12}" for n in names)]
  for k in keys:
    lines.append(f"{k:<{width}}" + "".join(
        f"  {runs[n]['results'].get(k, float('nan')):12.2f}" for n in names))
  return "\n".join(lines)


def _score(config, model, mesh, workdir, ckpt_path, writer, tau=None, run=""):
  abstract = checkpoint.abstract_variables(model, (1, 64, 64, 3), mesh)
  variables, step = checkpoint.load_variables(ckpt_path, abstract)
  logging.info("Evaluating %s (step %s)", ckpt_path, step)
  results = {}
  for name, ecfg in config.evals.items():
    if tau is not None and ecfg.type == "oass":
      ecfg = ecfg.copy_and_resolve_references()
      ecfg.tau_m, ecfg.tau_a = (float(t) for t in tau)
    ev = evaluators.from_config(name, ecfg, model=model, mesh=mesh, workdir=workdir,
                                run=run)
    for metric, value in ev.run(variables):
      results[f"{name}/{metric}"] = value
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
  model = amodalpass.build(config.model)
  just_log = jax.process_index() > 0
  runs_cfg = config.evaluate.runs
  if not runs_cfg:
    writer = metric_writers.create_default_writer(out_dir, just_logging=just_log)
    out = _score(config, model, mesh, workdir,
                 fileio.resolve(config.evaluate.checkpoint, workdir), writer)
  else:
    runs = {}
    for name, r in runs_cfg.items():
      writer = metric_writers.create_default_writer(os.path.join(out_dir, name),
                                                    just_logging=just_log)
      runs[name] = _score(config, model, mesh, workdir,
                          fileio.resolve(r.checkpoint, workdir), writer, r.get("tau"),
                          run=name)
    if jax.process_index() == 0:
      print(comparison_table(runs), flush=True)
    out = {"runs": runs}
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "results.json"), out)
  return out["results"] if "results" in out else out
