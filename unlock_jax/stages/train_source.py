"""Stage 0: train the source model on labelled pinhole images (KITTI-360 APS layout).

Resume order (first that applies): (1) the latest checkpoint in
``<workdir>/train_source/checkpoints`` — same command, same workdir;
(2) ``config.init_checkpoint`` (parameters only, e.g. a converted PyTorch
model); (3) from scratch. The grain iterator state is restored with the model,
so a resumed run sees exactly the batches an uninterrupted run would.
"""
import os
import signal

import jax
import jax.numpy as jnp
from absl import logging
from clu import metric_writers, periodic_actions

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import pipeline
from unlock_jax.models import amodalpass
from unlock_jax.train import optim
from unlock_jax.train import steps


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN/Inf; the run stopped before saving it."""


def _check_finite(state, ckpt: checkpoint.Checkpointer) -> None:
  bad = int(jax.device_get(state["first_bad_step"]))
  if bad >= 0:
    ckpt.wait()
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {bad + 1}; stopped without saving "
        f"it. Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}")


_accumulate = jax.jit(lambda acc, m: jax.tree.map(jnp.add, acc, m))


def interval_means(last: dict, total: dict, count: int) -> dict:
  """Loss terms and gradient norm averaged over the log interval; others (lr,
  parameter norm) as at the log step."""
  return {k: (float(total[k]) / count if k.startswith(("loss", "grad_norm"))
              else float(v)) for k, v in last.items()}


def run(config, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "train_source")
  provenance.record(workdir, "train_source", config)
  mesh = shd.make_mesh()
  pi, pc = jax.process_index(), jax.process_count()
  writer = metric_writers.create_default_writer(
      stage_dir, just_logging=pi > 0, asynchronous=True)

  # Input.
  src = config.data.source
  reader = pipeline.open_reader(src.layout, fileio.resolve(src.root, workdir),
                                src.split, src.get("image_size"))
  local_bs = shd.local_batch_size(config.input.batch_size, mesh)
  with_instances = bool(config.model.instance_heads)
  data_iter = pipeline.train_iterator(
      reader, batch_size=local_bs, crop_size=tuple(config.input.crop_size),
      seed=config.seed, cat_max_ratio=config.input.cat_max_ratio,
      flip=config.input.flip,
      max_instances=config.input.max_instances if with_instances else 0,
      box_rule=config.input.box_rule, num_workers=config.input.num_workers,
      process_index=pi, process_count=pc)

  # Model, optimiser, state.
  total = int(config.total_steps)
  model = amodalpass.build(config.model)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  image_shape = (1, *config.input.crop_size, 3)  # params do not depend on batch
  params_shape = steps.param_shapes(model, image_shape)
  tx, schedule = optim.make(config.optim, total, params_shape)
  state = steps.init_state(model, tx, init_rng, image_shape, mesh)

  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                                 max_to_keep=config.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    logging.info("Resuming from step %d in %s", start, ckpt.directory)
    state, _ = ckpt.restore(start, checkpoint.abstract_like(state), data_iter)
  elif config.get("init_checkpoint"):
    path = fileio.resolve(config.init_checkpoint, workdir)
    logging.info("Initialising parameters from %s", path)
    variables, _ = checkpoint.load_variables(path, checkpoint.abstract_like(state))
    state = state | variables
  step = int(jax.device_get(state["step"]))

  train_step = steps.make_source_step(model, tx, schedule, mesh, state,
                                      loss_cfg=config.loss)
  base_rng = jax.device_put(step_rng, shd.replicated(mesh))
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_secs=config.progress_every_secs)
  if step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  measurements = None
  interval_sum, interval_steps = None, 0
  while step < total:
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = shd.put_batch(next(data_iter), mesh)
      state, measurements = train_step(state, batch, base_rng)
      # Summed on device (no host sync) so logged losses are interval means,
      # not the noisy value of the single batch at the log step.
      interval_sum = (measurements if interval_sum is None
                      else _accumulate(interval_sum, measurements))
      interval_steps += 1
    step += 1
    report(step)
    if step % config.log_every == 0 or step == total:
      _check_finite(state, ckpt)
      writer.write_scalars(step, interval_means(jax.device_get(measurements),
                                                jax.device_get(interval_sum),
                                                interval_steps))
      interval_sum, interval_steps = None, 0
    if (step % config.checkpoint_every == 0 or step == total
        or ckpt.reached_preemption(step)):
      _check_finite(state, ckpt)
      ckpt.save(step, state, data_iter, meta={"step": step, "stage": "train_source"},
                force=True)
      if step == config.debug.get("kill_after_checkpoint", -1):
        # Simulates a preempted machine for the resume test: no clean shutdown.
        ckpt.wait()
        os.kill(os.getpid(), signal.SIGKILL)
      if ckpt.reached_preemption(step):
        ckpt.wait()
        logging.warning("Preempted at step %d; checkpoint saved, exiting.", step)
        break
  ckpt.close()
  writer.flush()
  final = jax.device_get(measurements) if measurements is not None else {}
  summary = {"step": step, "final": {k: float(v) for k, v in final.items()}}
  if pi == 0:
    fileio.atomic_write_json(os.path.join(stage_dir, "summary.json"), summary)
  return summary
