"""Stage 3: the ADCL amodal-instance pool (docs/method.md §6) from the prediction store.

Thresholds ``min(0.95, quantile_0.9)`` of the amodal scores per class over the
whole store (``<out>/thresholds.json`` under ``"adcl"``), then per panorama
the confident, mostly unoccluded amodal instances: exported in the
reference's layout (``<out>/ADCL/amodal_instance/``) and as a per-panorama
shard holding each entry's class, source, box, 0/1/255 mask crop and RGB
crop. The shards are finally concatenated into ``<out>/pool_index.npz``,
which the adaptation's online paste loads into memory once. Resumes
panorama by panorama (a complete shard is skipped).
"""
import os

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from unlock_jax import fileio
from unlock_jax import fingerprint
from unlock_jax import progress as progress_lib
from unlock_jax import provenance
from unlock_jax import sharding as shd
from unlock_jax.data import labels as labels_lib
from unlock_jax.pseudo import pool
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds
from unlock_jax.stages import opll as opll_stage

INDEX_FILE = "pool_index.npz"


def run(config, workdir: str) -> dict:
  provenance.record(workdir, "adcl_pool", config,
                    fingerprint.begin(config, workdir, "adcl_pool"))
  shd.connect_processes()
  a = config.adcl_pool
  store_dir, names, meta = opll_stage.open_store(config, workdir)
  out_dir = fileio.resolve(a.out_dir, workdir)
  p, t = (float(v) for v in a.pt)
  fp = opll_stage.cache_key(names, meta, {"adcl": (p, t)})

  scores = thresholds.ScoreLists()
  mine = opll_stage.my_share(names)
  prog = progress_lib.Progress(len(mine), "adcl_pool/thresholds", unit="pano")
  for i, n in enumerate(mine):
    summ = store.load_summary(store_dir, n, histogram=False)  # scores only: no map decoding
    scores.add(summ["amodal"]["classes"], summ["amodal"]["scores"])
    prog.update(i + 1)
  scores = opll_stage.merge_all(scores)
  tau = scores.thresholds(p, t)
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(out_dir, "thresholds.json"),
                             {"adcl": thresholds.to_json(tau), "fingerprint": fp})
  logging.info("adcl_pool thresholds: %s",
               {labels_lib.CLASS_NAMES[c]: round(v["tau"], 4) for c, v in tau.items()})

  images = opll_stage.TargetImages(config, workdir)
  h, w = meta["image_size"]
  shards = os.path.join(out_dir, "shards")
  todo = [n for n in mine if not fileio.exists(pool.shard_path(shards, n))]
  prog = progress_lib.Progress(len(todo), "adcl_pool/entries", unit="pano")
  for i, n in enumerate(todo):
    pred = store.load_prediction(store_dir, n)
    entries = pool.pool_entries(pred, tau)
    j = images.index_of(n)
    pool.write_reference(os.path.join(out_dir, "ADCL"), n, entries)
    # An empty shard needs no pixels: don't read its panorama.
    image = images.reader.load_image(j) if entries else np.zeros((h, w, 3), np.uint8)
    pool.write_shard(pool.shard_path(shards, n), pool.entry_record(n, image, entries))
    prog.update(i + 1)
  # Every process's shards are on the shared workdir; one index for all.
  shd.gather_objects(len(todo))  # barrier
  summary = {}
  if jax.process_index() == 0:
    summary = pool.build_index([pool.shard_path(shards, n) for n in names],
                               os.path.join(out_dir, INDEX_FILE))
    logging.info("adcl_pool: %s", summary)
    if summary["entries"] < 80:
      logging.warning("ADCL pool has %d entries (< 80 candidates per paste): the "
                      "paste will draw all of them each time%s", summary["entries"],
                      "; with none, nothing is pasted" if not summary["entries"] else "")
    writer = metric_writers.create_default_writer(out_dir)
    writer.write_scalars(0, {"adcl_pool/entries": summary["entries"]})
    writer.flush()
  shd.barrier("adcl_pool index written")  # adapt loads it on every process
  return summary
