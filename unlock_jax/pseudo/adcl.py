"""The ADCL pool over a whole prediction store (docs/method.md §6): the ``adcl_pool`` stage's passes.

1. :func:`compute_thresholds`: ``min(t, quantile_p)`` of the amodal scores per
   class over the store (the score lists only: no map is decoded), each
   process reading its share, merged so all agree.
2. :func:`write_shards`: per panorama, the confident, mostly unoccluded
   amodal instances (``pool.pool_entries``) in the reference's layout and as
   one shard (``pool.py``); a complete shard is skipped, so a rerun resumes
   panorama by panorama.
3. :func:`build_index`: the shards concatenated into ``<out>/pool_index.npz``,
   which the adaptation's online paste loads once.
"""
import os

import numpy as np
from absl import logging

from unlock_jax import distributed
from unlock_jax import fileio
from unlock_jax import progress as progress_lib
from unlock_jax.pseudo import pool
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds

INDEX_FILE = "pool_index.npz"  # under the stage's out_dir; what adapt reads
MIN_ENTRIES = 80  # candidates the paste draws from at each step


def index_path(out_dir: str, must_exist: bool = False) -> str:
  """The pool index of the stage's ``out_dir``; ``must_exist``: missing is an error naming the stage."""
  path = os.path.join(out_dir, INDEX_FILE)
  if must_exist and not fileio.exists(path):
    raise FileNotFoundError(f"no ADCL pool index {path}: run the `adcl_pool` stage first")
  return path


def compute_thresholds(store_dir: str, names, p: float, t: float) -> dict:
  """Per-class amodal score thresholds (§5.1's rule at ``p``, ``t``) over the whole store."""
  scores = thresholds.ScoreLists()
  mine = distributed.share(names)
  prog = progress_lib.Progress(len(mine), "adcl_pool/thresholds", unit="pano")
  for i, n in enumerate(mine):
    summ = store.load_summary(store_dir, n, histogram=False)  # scores only: no map decoding
    scores.add(summ["amodal"]["classes"], summ["amodal"]["scores"])
    prog.update(i + 1)
  return distributed.merge_all(scores).thresholds(p, t)


def write_shards(store_dir: str, names, tau: dict, images, out_dir: str,
                 merge_seam: bool = False) -> int:
  """This process's share of ``names``: reference PNGs and one shard each; returns how many.

  ``images``: the store's panoramas (``inference.TargetImages``).
  ``merge_seam`` (a seam-aware ``config.seam.mode``): an object across the
  360° seam is one entry (``store.load_merged``), kept with a wrapped extent.
  """
  h, w = images.reader.image_size
  shards = os.path.join(out_dir, "shards")
  todo = [n for n in distributed.share(names)
          if not fileio.exists(pool.shard_path(shards, n))]
  prog = progress_lib.Progress(len(todo), "adcl_pool/entries", unit="pano")
  for i, n in enumerate(todo):
    pred = store.load_merged(store_dir, n, merge_seam)
    entries = pool.pool_entries(pred, tau)
    j = images.index_of(n)
    pool.write_reference(os.path.join(out_dir, "ADCL"), n, entries)
    # An empty shard needs no pixels: don't read its panorama.
    image = images.reader.load_image(j) if entries else np.zeros((h, w, 3), np.uint8)
    pool.write_shard(pool.shard_path(shards, n), pool.entry_record(n, image, entries))
    prog.update(i + 1)
  return len(todo)


def build_index(names, out_dir: str) -> dict:
  """Every panorama's shard into one index (process 0, once all shards are written)."""
  summary = pool.build_index([pool.shard_path(os.path.join(out_dir, "shards"), n)
                              for n in names], index_path(out_dir))
  logging.info("adcl_pool: %s", summary)
  if summary["entries"] < MIN_ENTRIES:
    logging.warning("ADCL pool has %d entries (< %d candidates per paste): the paste will "
                    "draw all of them each time%s", summary["entries"], MIN_ENTRIES,
                    "; with none, nothing is pasted" if not summary["entries"] else "")
  return summary
