"""Stage 0: train the source model on labelled pinhole images (KITTI-360 APS layout).

Resume order (first that applies): (1) the latest checkpoint in
``<train_source.out_dir>/checkpoints`` (``<workdir>/train_source``) — same
command, same workdir;
(2) ``config.init_checkpoint`` (parameters only, e.g. a converted PyTorch
model); (3) from scratch. The grain iterator state is restored with the model,
so a resumed run sees exactly the batches an uninterrupted run would.
"""
import os

import jax
from absl import logging

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import inference
from unlock_jax import model_info
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.evaluation import report
from unlock_jax.models import amodalpass
from unlock_jax.models import variables as variables_lib
from unlock_jax.train import loop
from unlock_jax.train import optim
from unlock_jax.train import steps


def run(config, workdir: str) -> dict:
  stage_dir = fileio.resolve(config.train_source.out_dir, workdir)
  provenance.record(workdir, "train_source", config,
                    fingerprint.begin(config, workdir, "train_source"))
  mesh = shd.make_mesh()
  pi = jax.process_index()
  writer = loop.create_writer(stage_dir)

  # Input.
  data_iter = inference.source_iterator(config, workdir, config.input.batch_size, mesh)

  # Model, optimiser, state.
  total = int(config.total_steps)
  model = amodalpass.build(config.model)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  image_shape = (1, *config.input.crop_size, 3)  # params do not depend on batch
  params_shape = variables_lib.param_shapes(model, image_shape)
  tx, schedule = optim.make(config.optim, total, params_shape)
  state = steps.init_state(model, tx, init_rng, image_shape, mesh)

  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                                 max_to_keep=config.keep_checkpoints)
  if pi == 0:  # the architecture beside the weights, for unlock_jax.load
    model_info.write(ckpt.directory, config.model, model_info.panorama_size(config),
                     report.TAU_SOURCE_ONLY, "train_source")
  if ckpt.latest_step() is None and config.get("init_checkpoint"):
    path = fileio.resolve(config.init_checkpoint, workdir)
    logging.info("Initialising parameters from %s", path)
    variables, _ = checkpoint.load_variables(path, checkpoint.abstract_like(state))
    state = state | variables
  state, _ = loop.restore_or_init(ckpt, state, data_iter)

  train_step = steps.make_source_step(model, tx, schedule, mesh, state,
                                      loss_cfg=config.loss)
  base_rng = shd.replicate(step_rng, mesh)
  state, measurements = loop.run(state, train_step, data_iter, mesh=mesh, ckpt=ckpt,
                                 writer=writer, config=config, total=total,
                                 stage="train_source", step_args=(base_rng,))
  return loop.write_summary(os.path.join(stage_dir, "summary.json"), state,
                            measurements)
