"""Entry point: ``python -m unlock_jax.main --config configs/<file>.py --workdir DIR``.

``config.stage`` names what runs: one stage, or several separated by commas
(``"generate,train_source,evaluate"``), each a module in ``unlock_jax.stages``
exposing ``run(config, workdir)``. Multi-host runs set
``UNLOCK_JAX_DISTRIBUTED=1``: ``jax.distributed.initialize`` then finds the
coordinator itself on Cloud TPU VMs and under SLURM; elsewhere pass
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (see launch/).
"""
import importlib
import os

from absl import app, flags, logging
from ml_collections import config_flags

from unlock_jax import fileio
from unlock_jax import logfile

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes if it exists).")
flags.mark_flags_as_required(["config", "workdir"])
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs that "
    "jax cannot detect (not TPU VMs or SLURM); implies distributed initialisation.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")


def _multiprocess_setup(jax) -> None:
  """Settings every multi-process run needs, before anything compiles.

  On CPU hosts (gloo collectives) the persistent compilation cache is turned
  off: its keys differ per process and only process 0 writes it, so process 0
  could load a program that process 1 compiled and their collectives would
  disagree (a gloo message of another size aborts the run). Then the
  processes connect their collectives while they are in step
  (``sharding.connect_processes``), before a stage keeps one of them busy.
  """
  from unlock_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    jax.config.update("jax_enable_compilation_cache", False)
  shd.connect_processes()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # TF is only used by clu's summary writers; keep it off the accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get("UNLOCK_JAX_DISTRIBUTED") or _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    _multiprocess_setup(jax)
  # URL workdirs (gs://bucket/run on TPU VMs) pass through untouched.
  config, workdir = _CONFIG.value, fileio.absolute(_WORKDIR.value)
  fileio.makedirs(workdir)
  logging.info("process %d/%d, devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  stages = _stages(config)
  _check_before_starting(config, workdir, [name for name, _ in stages])
  for stage, module in stages:
    logging.info("=== stage %s ===", stage)
    with logfile.stage_log(workdir, stage, jax.process_index()):
      module.run(config, workdir)


def _stages(config) -> list:
  """``[(name, module)]`` of ``config.stage``; every name checked before any runs."""
  names = [s.strip() for s in config.stage.split(",") if s.strip()]
  folder = os.path.join(os.path.dirname(__file__), "stages")
  available = sorted(f[:-3] for f in os.listdir(folder)
                     if f.endswith(".py") and not f.startswith("_"))
  if not names:
    raise app.UsageError(f"config.stage names no stage; available: {available}")
  unknown = [n for n in names if n not in available]
  if unknown:
    raise app.UsageError(f"unknown stage {unknown[0]!r}" + "".join(
        f", {n!r}" for n in unknown[1:]) + f" in --config.stage={config.stage}; "
        f"available: {available}")
  return [(n, importlib.import_module(f"unlock_jax.stages.{n}")) for n in names]


def _check_before_starting(config, workdir: str, names: list) -> None:
  """Every listed stage's config and fingerprint, against the outputs already there.

  On every process (they must agree), so a stage list that would be refused
  halfway (changed settings, a misspelt later stage) fails before the first
  stage spends anything.
  """
  from unlock_jax import fingerprint  # pylint: disable=g-import-not-at-top
  from unlock_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from unlock_jax.tools import check_data  # pylint: disable=g-import-not-at-top
  problems = check_data.ungenerated(config, workdir) + fingerprint.plan(config, workdir, names)
  problems = list(dict.fromkeys(p for found in shd.gather_objects(problems) for p in found))
  if problems:
    raise SystemExit("Nothing was run: --config.stage="
                     f"{','.join(names)} would be refused.\n\n" + "\n\n".join(problems))


if __name__ == "__main__":
  app.run(main)
