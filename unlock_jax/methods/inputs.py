"""The adapt stage's input: one batch dict per step from the streams a method
reads (``methods.STREAMS``), and nothing it does not read.

* ``target_pseudo_labelled`` (with or without ``target_unlabelled``): the
  pair iterator ``pipeline.adapt_iterator`` over the panoramas ``predict``
  read, less those it skipped (their OPLL labels in ``config.opll.out_dir``,
  the ADCL pool index of ``config.adcl_pool.out_dir``); the unlabelled crop
  of each pair is drawn with it. Seeds ``config.seed`` (+1, +2), as always.
* ``target_unlabelled`` alone: ``pipeline.unlabelled_iterator`` over the same
  panoramas (``inference.open_target``; no pseudo-label stage needs to have
  run), seeds ``config.seed + 3`` (+4), apart from every other stream's.
* ``source_labelled``: train_source's crops (``inference.source_iterator``,
  ``config.input``'s crop and augmentation, ``config.seed``), the keys
  prefixed ``source_``; ``config.adapt.batch_size`` rows, as the target's.

One stream is its grain iterator itself (the checkpoints of methods that read
the pair stream are those of earlier versions); several are a
``pipeline.Streams``, whose checkpointed state holds every stream's.
"""
import os

import jax

from unlock_jax import fileio
from unlock_jax import inference
from unlock_jax import sharding as shd
from unlock_jax.data import pipeline
from unlock_jax.pseudo import adcl
from unlock_jax.pseudo import opll

SOURCE_PREFIX = "source_"
UNLABELLED_SEED_OFFSET = 3  # config.seed + 3: apart from the pair's (+0..2) and source's (+0, 1)


def iterator(config, workdir: str, streams, mesh):
  """The endless, checkpointable iterator of process-local batches of ``streams``."""
  a, streams = config.adapt, set(streams)
  local = dict(batch_size=shd.local_batch_size(a.batch_size, mesh), num_workers=a.num_workers,
               process_index=jax.process_index(), process_count=jax.process_count())
  its, prefixes = {}, {}
  if "target_pseudo_labelled" in streams:
    packed_dir = os.path.join(fileio.resolve(config.opll.out_dir, workdir), "packed")
    reader = opll.labelled_images(inference.open_target(config, workdir), packed_dir,
                                  fileio.resolve(config.predict.store_dir, workdir))
    pool_path = adcl.index_path(fileio.resolve(config.adcl_pool.out_dir, workdir),
                                must_exist=True)
    its["target"] = pipeline.adapt_iterator(
        reader, packed_dir=packed_dir, pool_path=pool_path, crop_size=tuple(a.crop_size),
        seed=config.seed, cat_max_ratio=a.cat_max_ratio, flip=a.flip,
        max_instances=a.max_instances, paste=a.paste.to_dict(), wrap_crops=a.wrap_crops,
        **local)
  elif "target_unlabelled" in streams:
    its["target"] = pipeline.unlabelled_iterator(
        inference.open_target(config, workdir), crop_size=tuple(a.crop_size),
        seed=config.seed + UNLABELLED_SEED_OFFSET, flip=a.flip, wrap_crops=a.wrap_crops,
        **local)
  if "source_labelled" in streams:
    its["source"] = inference.source_iterator(config, workdir, a.batch_size, mesh)
    prefixes["source"] = SOURCE_PREFIX
  if len(its) == 1 and not prefixes:
    return next(iter(its.values()))
  return pipeline.Streams(its, prefixes)
