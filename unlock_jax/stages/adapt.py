"""Stage 4: adaptation of the source model to the target domain (docs/method.md §7).

The method (``config.adapt.method``, a name of ``methods.METHODS``: UNLOCK's
is ``methods/unlock.py``) gives the input streams, the state and the step;
this stage is the same wiring for all of them. Student (and teacher) start
from the source checkpoint (``config.adapt.source_checkpoint``, default
``config.predict.checkpoint``), whose parameters also anchor the regulariser;
they are read at start-up and never written into this stage's checkpoints.
The input (``methods/inputs.py``) reads only what the method's streams need:
the panoramas ``predict`` read (the target split or ``config.predict.images``),
with UNLOCK's pseudo-labelled stream also the packed OPLL labels of
``config.opll.out_dir`` and the pool index of ``config.adcl_pool.out_dir``,
and the source split for methods that read source data. The loop (resume,
logging, non-finite check, checkpoints with the input iterators' state,
preemption) is ``train/loop.py``. Every ``eval_every`` steps the evaluators
named in ``config.adapt.evals`` (keys of ``config.evals``, on held-out splits)
are written through clu. The result is the last step: no checkpoint is ever
selected on an evaluation split (the reference's test config loads iter_4600
although training keeps only the last, docs/reference_differences.md item 9).
"""
import os

import jax
import ml_collections
from absl import logging

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import inference
from unlock_jax import methods
from unlock_jax import model_info
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import synthpass
from unlock_jax.evaluation import evaluators
from unlock_jax.evaluation import report
from unlock_jax.methods import inputs
from unlock_jax.models import predict as predict_lib
from unlock_jax.train import loop


def run(config, workdir: str) -> dict:
  a = config.adapt
  method = methods.get(a.method)
  method.check_config(a)
  stage_dir = fileio.resolve(a.out_dir, workdir)
  provenance.record(workdir, "adapt", config, fingerprint.begin(config, workdir, "adapt"))
  mesh = shd.make_mesh()
  pi = jax.process_index()
  writer = loop.create_writer(stage_dir)
  data_iter = inputs.iterator(config, workdir, method.streams, mesh)

  src_path = fileio.resolve(a.source_checkpoint or config.predict.checkpoint, workdir)
  synthpass.check_trained_on(src_path, fileio.resolve(config.synthpass.out_dir, workdir))
  model, variables, src_step = inference.load_model(config.model, src_path, mesh)
  logging.info("adapt: method %s, source model %s (step %s)", a.method, src_path, src_step)
  total = int(a.total_steps)
  tx, schedule = method.optimizer(model, a, total, variables["params"])
  state = method.init_state(variables, tx, mesh)
  source_params = jax.device_put(method.frozen(config, workdir, variables, mesh),
                                 shd.replicated(mesh))
  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                                 max_to_keep=a.keep_checkpoints)
  if pi == 0:  # the architecture beside the weights, for unlock_jax.load
    model_info.write(ckpt.directory, config.model, model_info.panorama_size(config),
                     report.TAU_ADAPTED, "adapt")
  state, _ = loop.restore_or_init(ckpt, state, data_iter)
  step_fn = method.make_step(model, tx, schedule, mesh, state, cfg=a)
  base_rng = shd.replicate(jax.random.fold_in(jax.random.key(config.seed), 4), mesh)
  # Compiled once for every eval; panorama evaluators in config.seam's mode.
  predict_fns, panorama_fns = predict_lib.jit_predict_fn_sets(model, mesh, config.seam)

  def evaluate(state, _):
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    results, _ = evaluators.run_all(config.evals, variables, predict_fns=predict_fns,
                                    panorama_fns=panorama_fns, seam_mode=config.seam.mode,
                                    mesh=mesh, workdir=workdir, names=list(a.evals))
    return {f"eval/{k}": v for k, v in results.items()}

  loop_cfg = ml_collections.ConfigDict(dict(
      log_every=a.log_every, checkpoint_every=a.checkpoint_every,
      progress_every_secs=config.progress_every_secs, debug=config.debug.to_dict(),
      adapt=a.to_dict()))
  state, measurements = loop.run(
      state, step_fn, data_iter, mesh=mesh, ckpt=ckpt, writer=writer, config=loop_cfg,
      total=total, stage="adapt", step_args=(source_params, base_rng),
      evaluate=evaluate if a.evals else None, eval_every=int(a.eval_every))
  return loop.write_summary(os.path.join(stage_dir, "summary.json"), state,
                            measurements, source=src_path)
