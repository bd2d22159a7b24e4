"""Stage 3: the ADCL amodal-instance pool (docs/method.md §6) from the prediction store.

Thresholds ``min(0.95, quantile_0.9)`` of the amodal scores per class over the
whole store (``<out>/thresholds.json`` under ``"adcl"``), then per panorama
the confident, mostly unoccluded amodal instances: exported in the
reference's layout (``<out>/ADCL/amodal_instance/``) and as a per-panorama
shard holding each entry's class, source, box, 0/1/255 mask crop and RGB
crop. The shards are finally concatenated into ``<out>/pool_index.npz``,
which the adaptation's online paste loads into memory once. Resumes
panorama by panorama (a complete shard is skipped). The passes:
``pseudo/adcl.py``.
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
from unlock_jax.data import labels as labels_lib
from unlock_jax.pseudo import adcl
from unlock_jax.pseudo import predictions
from unlock_jax.pseudo import thresholds


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "adcl_pool", config,
                    fingerprint.begin(config, workdir, "adcl_pool"))
  shd.connect_processes()
  a = config.adcl_pool
  store_dir = fileio.resolve(config.predict.store_dir, workdir)
  names, meta = predictions.open_store(store_dir)
  out_dir = fileio.resolve(a.out_dir, workdir)
  p, t = (float(v) for v in a.pt)
  fp = predictions.store_key(names, meta, {"adcl": (p, t)})

  tau = adcl.compute_thresholds(store_dir, names, p, t)
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "thresholds.json"),
                             {"adcl": thresholds.to_json(tau), "fingerprint": fp})
  logging.info("adcl_pool thresholds: %s",
               {labels_lib.CLASS_NAMES[c]: round(v["tau"], 4) for c, v in tau.items()})
  images = inference.TargetImages(inference.open_target(config, workdir))
  adcl.write_shards(store_dir, names, tau, images, out_dir,
                    merge_seam=config.seam.mode != "flat")
  # Every process's shards are on the shared workdir; one index for all.
  shd.barrier("adcl_pool shards written")
  summary = {}
  if jax.process_index() == 0:
    summary = adcl.build_index(names, out_dir)
    writer = metric_writers.create_default_writer(out_dir)
    writer.write_scalars(0, {"adcl_pool/entries": summary["entries"]})
    writer.flush()
  shd.barrier("adcl_pool index written")  # adapt loads it on every process
  return summary
