"""Stage 5: evaluate a checkpoint on whole images with every configured evaluator.

Loads ``config.evaluate.checkpoint`` (a train run's checkpoint folder, or a
folder written by ``tools/convert_torch``), runs ``config.evals.*``, prints a
table, and writes ``results.json`` plus clu scalars under
``config.evaluate.results_dir``.
"""
import os

import jax
from absl import logging
from clu import metric_writers

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.evaluation import evaluators
from unlock_jax.models import amodalpass
from unlock_jax.train import steps


def abstract_variables(model, image_shape, mesh):
  """Shapes (with replicated sharding) of the model's params and batch_stats."""
  shapes = jax.eval_shape(lambda r: steps.init_variables(model, r, image_shape),
                          jax.random.key(0))
  repl = shd.replicated(mesh)
  return {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          shapes.get(k, {}))
          for k in ("params", "batch_stats")}


def format_table(results: dict) -> str:
  """Two-column text table, one row per metric."""
  width = max((len(k) for k in results), default=10)
  lines = [f"{'metric':<{width}}  value", "-" * (width + 9)]
  lines += [f"{k:<{width}}  {v:7.2f}" for k, v in results.items()]
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "evaluate", config)
  if not config.evals:
    raise ValueError("config.evals is empty: nothing to evaluate")
  out_dir = fileio.resolve(config.evaluate.results_dir, workdir)
  mesh = shd.make_mesh()
  model = amodalpass.build(config.model)
  abstract = abstract_variables(model, (1, 64, 64, 3), mesh)
  ckpt_path = fileio.resolve(config.evaluate.checkpoint, workdir)
  variables, step = checkpoint.load_variables(ckpt_path, abstract)
  logging.info("Evaluating %s (step %s)", ckpt_path, step)

  writer = metric_writers.create_default_writer(
      out_dir, just_logging=jax.process_index() > 0)
  results = {}
  for name, ecfg in config.evals.items():
    ev = evaluators.from_config(name, ecfg, model=model, mesh=mesh, workdir=workdir)
    for metric, value in ev.run(variables):
      results[f"{name}/{metric}"] = value
    for pic_name, array in getattr(ev, "pictures", []):
      writer.write_images(step or 0, {pic_name: array[None]})
  writer.write_scalars(step or 0, results)
  writer.flush()
  table = format_table(results)
  print(table, flush=True)
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "results.json"),
                             {"checkpoint": ckpt_path, "step": step,
                              "results": results})
  return results
