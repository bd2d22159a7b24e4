"""The one training loop, shared by ``train_source`` and ``adapt``.

Plain function, no trainer class: it runs a jitted ``step(state, batch,
*step_args)`` until ``total`` steps, logs interval means of the measurements
(summed on device, so no host sync per step), raises with the step number
when the non-finite latch ``first_bad_step`` is set (before any checkpoint
of the bad state), checkpoints the state and the grain iterator state every
``checkpoint_every`` steps and at the end or on preemption, and runs an
optional periodic ``evaluate(state, step) -> dict`` whose scalars go to the
same writer. The step runs under ``jax.transfer_guard("disallow")``
(:data:`TRANSFER_GUARD`): its inputs must already be on the devices.

Its log lines: one while the first step compiles (minutes for a large model)
and its time once done, then at each log step
``<stage> step <step>/<total>: <measurements> | <rate>, ETA <time>``; the
writer (:func:`create_writer`) keeps the scalars for TensorBoard only.
"""
import os
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from unlock_jax import checkpoint
from unlock_jax import fileio
from unlock_jax import progress
from unlock_jax import sharding as shd


# As big_vision's jax_transfer_guard, for the step only (the predict loops of
# inference, the evaluators and OPLL's prototypes do the same): a copy between
# host and device that nobody asked for (a numpy or Python value passed to the
# step, a device value read on the host) raises instead of silently syncing
# the host with the device every step. Explicit copies (put_batch, device_get
# at the log steps) are allowed.
TRANSFER_GUARD = "disallow"


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN/Inf; the run stopped before saving it."""


def check_finite(state, ckpt) -> None:
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


def create_writer(logdir: str):
  """TensorBoard summaries in ``logdir`` (process 0; no-op elsewhere).

  Not clu's default writer: its log copy of each scalar line would repeat
  :func:`run`'s own progress lines without the step total.
  """
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(logdir)])


def flat_hparams(tree: dict, prefix: str = "") -> dict:
  """Nested config values as TensorBoard hparams: dotted keys (``adapt.optim.lr``),
  sequences as their text; None and empty sections dropped."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out |= flat_hparams(v, key + ".")
    elif isinstance(v, (list, tuple)):
      out[key] = str(tuple(v))
    elif isinstance(v, (bool, int, float, str)):
      out[key] = v
  return out


def _line(values: dict) -> str:
  order = sorted(values, key=lambda k: (not k.startswith("loss"), k))  # losses first
  return ", ".join(f"{k}={values[k]:.4g}" for k in order)


def restore_or_init(ckpt, state, data_iter):
  """``(state, step)``: the latest complete checkpoint's, or ``state`` at its own step.

  A damaged latest checkpoint (a truncated file) is set aside with a warning and
  the run goes on from the previous complete one (``Checkpointer.restore_latest``).
  """
  restored = ckpt.restore_latest(checkpoint.abstract_like(state), data_iter)
  if restored is not None:
    state, start = restored
    logging.info("Resuming from step %d in %s", start, ckpt.directory)
  return state, int(jax.device_get(state["step"]))


def write_summary(path: str, state, measurements, **extra) -> dict:
  """``summary.json`` of a training stage: its step and last measurements.

  A rerun of a finished run trains nothing (``measurements`` is None) and
  keeps the summary it wrote before.
  """
  if measurements is None and fileio.exists(path):
    return fileio.read_json(path)
  final = jax.device_get(measurements) if measurements is not None else {}
  summary = {"step": int(jax.device_get(state["step"])), **extra,
             "final": {k: float(v) for k, v in final.items()}}
  if jax.process_index() == 0:
    fileio.atomic_write_json(path, summary)
  return summary


def run(state, train_step, data_iter, *, mesh, ckpt, writer, config, total: int,
        stage: str, step_args=(), evaluate: Callable | None = None,
        eval_every: int = 0):
  """Trains from ``state["step"]`` to ``total``; returns ``(state, last measurements)``."""
  step = int(jax.device_get(state["step"]))
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_secs=config.progress_every_secs)
  if step == 0:
    writer.write_hparams(flat_hparams(config.to_dict()))
  measurements = None
  interval_sum, interval_steps = None, 0
  first, timed = step, None  # timed: (step, time) once the first step has run
  if step < total:
    logging.info("%s: compiling the train step (the first step takes longer)...", stage)
  while step < total:
    with (jax.profiler.StepTraceAnnotation("train", step_num=step),
          jax.transfer_guard(TRANSFER_GUARD)):
      start = time.monotonic()
      batch = shd.put_batch(next(data_iter), mesh)  # the step's one copy in, explicit
      state, measurements = train_step(state, batch, *step_args)
      interval_sum = (measurements if interval_sum is None
                      else _accumulate(interval_sum, measurements))
      interval_steps += 1
    step += 1
    if step == first + 1:
      jax.block_until_ready(measurements)
      logging.info("%s: first step (compilation included) took %.1f s", stage,
                   time.monotonic() - start)
      timed = (step, time.monotonic())
    report(step)
    if step % config.log_every == 0 or step == total:
      check_finite(state, ckpt)
      means = interval_means(jax.device_get(measurements), jax.device_get(interval_sum),
                             interval_steps)
      writer.write_scalars(step, means)
      rate = (step - timed[0]) / max(time.monotonic() - timed[1], 1e-9)
      speed = (f" | {rate:.2f} steps/s, ETA {progress.format_duration((total - step) / rate)}"
               if step > timed[0] else "")
      logging.info("%s step %d/%d: %s%s", stage, step, total, _line(means), speed)
      interval_sum, interval_steps = None, 0
    if evaluate is not None and eval_every and (step % eval_every == 0 or step == total):
      scores = evaluate(state, step)
      writer.write_scalars(step, scores)
      logging.info("%s step %d/%d, evaluation: %s", stage, step, total,
                   _line({k: v for k, v in scores.items() if k.count("/") <= 2}))
    if (step % config.checkpoint_every == 0 or step == total
        or ckpt.reached_preemption(step)):
      check_finite(state, ckpt)
      ckpt.save(step, state, data_iter, meta={"step": step, "stage": stage}, force=True)
      if step == config.debug.get("kill_after_checkpoint", -1):
        # Simulates a preempted machine for the resume tests: no clean shutdown.
        ckpt.wait()
        os.kill(os.getpid(), signal.SIGKILL)
      if ckpt.reached_preemption(step):
        ckpt.wait()
        logging.warning("Preempted at step %d; checkpoint saved, exiting.", step)
        break
  ckpt.close()
  writer.flush()
  shd.barrier(f"{stage} checkpoints committed")  # the next stage may load them
  return state, measurements
