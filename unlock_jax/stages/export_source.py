"""Stage "export_source": the latest train_source checkpoint as a compact, committable source model.

Writes ``config.export_source.out_dir``: ``{params, batch_stats}`` as an
Orbax StandardCheckpointer folder (what ``checkpoint.load_variables`` reads,
as for converted PyTorch models), each floating leaf stored in
``config.export_source.dtype`` (``bfloat16`` halves the size; loading casts
back to float32), plus ``synthpass.json``: the identity of the synthpass data
the model was trained on (``synthpass.identity``), the train step, the
headline source-val figures of the run's ``evaluate/results.json`` if present, and
the command that regenerates the folder; and ``model_config.json``
(``model_info.py``: the architecture, panorama size and fusion threshold,
what ``unlock_jax.load`` reads). ``predict`` and ``adapt`` refuse
the model if the generated data differ (``synthpass.check_trained_on``).

The folder is replaced atomically (written beside it, then renamed), so a
killed export leaves the old model in place. On GCS a folder rename copies
its objects one by one (``fileio.replace``): not atomic there.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import inference
from unlock_jax import model_info
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import synthpass
from unlock_jax.evaluation import report


def run(config, workdir: str) -> dict:
  # The record goes into the new folder, which replaces the old one whole.
  fp = fingerprint.begin(config, workdir, "export_source", write_record=False)
  provenance.record(workdir, "export_source", config, fp)
  e = config.export_source
  out_dir = fileio.resolve(e.out_dir, workdir)
  ckpt_dir = os.path.join(fileio.resolve(config.train_source.out_dir, workdir), "checkpoints")
  _, variables, step = inference.load_model(config.model, ckpt_dir, shd.make_mesh())
  if step is None:
    raise FileNotFoundError(f"no train_source checkpoint in {ckpt_dir}: run train_source first")
  dtype = jnp.dtype(e.dtype)
  variables = jax.tree.map(
      lambda x: np.asarray(x).astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else np.asarray(x), variables)
  data_root = fileio.resolve(config.synthpass.out_dir, workdir)
  ident = synthpass.identity(data_root)
  meta = {"identity": ident, "generator_version": synthpass.DATA_VERSION,
          "train_step": int(step), "dtype": str(dtype), "command": e.command,
          "source_only": _results(workdir)}
  if jax.process_index() == 0:
    tmp = out_dir.rstrip("/") + ".tmp"
    if fileio.exists(tmp):
      fileio.rmtree(tmp)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp, variables)
    ckptr.wait_until_finished()
    model_info.write(tmp, config.model, model_info.panorama_size(config),
                     report.TAU_SOURCE_ONLY, "export_source")
    if ident is not None:
      fileio.atomic_write_json(os.path.join(tmp, "synthpass.json"), meta)
    fingerprint.write(tmp, fp, workdir)
    old = out_dir.rstrip("/") + ".old"
    if fileio.exists(out_dir):
      fileio.replace(out_dir, old)
    fileio.replace(tmp, out_dir)
    if fileio.exists(old):
      fileio.rmtree(old)
  size = sum(fileio.getsize(os.path.join(out_dir, d, f))
             for d, _, fs in fileio.walk(out_dir) for f in fs)
  logging.info("export_source: step %d → %s (%s, %.2f MB)", step, out_dir, dtype, size / 1e6)
  return {"out_dir": out_dir, "step": int(step), "bytes": size}


def _results(workdir: str) -> dict:
  path = os.path.join(workdir, "evaluate", "results.json")
  if not fileio.exists(path):
    return {}
  results = fileio.read_json(path).get("results", {})
  # Headline figures on the source domain only (the target's depend on the
  # generated shift); the rest stays in the run's results.json.
  return {k: v for k, v in results.items() if k.startswith("source_")
          and k.count("/") == 1 and k.split("/")[1] in report.HEADLINE}
