"""Stage "generate": write the synthpass data sets in the real on-disk layouts.

Resumable: scenes whose files already exist are skipped, so rerunning the same
command after a kill finishes the job, and rerunning it on a complete set does
nothing.
"""
import os

import jax
from jax.experimental import multihost_utils

from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import progress as progress_lib
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import synthpass


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "generate", config,
                    fingerprint.begin(config, workdir, "generate"))
  cfg = config.synthpass
  out_dir = fileio.resolve(cfg.out_dir, workdir)
  summary = {}
  shd.connect_processes()  # before process 0 writes for minutes
  if jax.process_index() == 0:  # one writer; other hosts read the shared folder
    summary = _generate(cfg, out_dir, workdir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("synthpass generated")
  return summary


def _generate(cfg, out_dir: str, workdir: str) -> dict:
  total = sum(cfg.num_source.values()) + sum(cfg.num_target.values())
  prog = progress_lib.Progress(total, "generate", unit="scene")
  summary = synthpass.generate(
      out_dir, scale=cfg.scale, seed=cfg.seed,
      num_source=dict(cfg.num_source), num_target=dict(cfg.num_target),
      domain_shift=cfg.domain_shift, num_workers=cfg.num_workers,
      progress=lambda done, _total: prog.update(done))
  fileio.atomic_write_json(os.path.join(workdir, "generate", "summary.json"), summary)
  return summary
