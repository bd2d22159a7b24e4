"""grain input pipelines: training crops and whole images for evaluation.

Host numpy only. Batches have static shapes (``drop_remainder`` for training;
masked padding examples for evaluation, so every process runs the same number
of steps). The training iterator's state is checkpointed with the model.
"""
import dataclasses
import json
import math
import os
from typing import Any, Sequence

import grain
import numpy as np

from unlock_jax.data import adcl_paste
from unlock_jax.data import keys
from unlock_jax.data import layouts
from unlock_jax.data import packed_labels
from unlock_jax.data import pool_index
from unlock_jax.data import transforms
from unlock_jax.data.layouts import common as layouts_common


def open_reader(layout: str, root: str, split: str, image_size=None,
                format: str = "files", data_dir: str = "",  # pylint: disable=redefined-builtin
                hidden_gt: bool = False):
  """Reader for a named layout (``layouts.LAYOUTS``: "kitti360aps", "blendpass", ...).

  ``format="files"`` reads the layout's files under ``root`` (a folder or a
  ``gs://`` URL, read through etils.epath); ``"tfds"`` reads its TFDS/ArrayRecord
  build in ``data_dir`` (``root`` unused; built by
  ``python -m unlock_jax.data.tfds.build``), which gives the same examples.
  ``hidden_gt``: the ground truth of synthpass's BlendPASS ``train`` split,
  which real data sets do not have (the target oracle trains on it).
  """
  if hidden_gt and (layout, split) != ("blendpass", "train"):
    raise ValueError(f"hidden_gt: only synthpass's blendpass 'train' split has hidden ground "
                     f"truth, not the {layout} {split!r} split (config.data.<domain>.hidden_gt)")
  if format == "tfds":
    if not data_dir:
      raise ValueError(f"format 'tfds' of the {layout} data needs a data_dir "
                       "(config.data.<domain>.tfds_data_dir)")
    from unlock_jax.data.tfds import source  # pylint: disable=g-import-not-at-top
    return source.Reader(layout, data_dir, split, image_size, hidden_gt=hidden_gt)
  if format != "files":
    raise ValueError(f"unknown data format {format!r}; expected 'files' or 'tfds'")
  mod = layouts.LAYOUTS.get(layout)
  kwargs = {} if image_size is None else {"image_size": tuple(image_size)}
  if hidden_gt:
    kwargs["hidden_gt"] = True
  return mod.Reader(root, split, **kwargs)


def collate(examples: Sequence[dict]) -> dict:
  """Stacks arrays; keys starting with ``_host`` stay Python lists."""
  out = {}
  for k in examples[0]:
    vals = [e[k] for e in examples]
    out[k] = vals if k.startswith("_host") else np.stack(vals)
  return out


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """index → augmented example: load, pad instances, crop, flip, normalise."""
  reader: Any
  crop_size: tuple[int, int]
  cat_max_ratio: float = 0.75
  flip: bool = True
  max_instances: int = 0      # 0: semantic only
  box_rule: str = "positive"

  def __call__(self, index, rng: np.random.Generator) -> dict:
    ex = self.reader.load(int(index))
    if self.max_instances:
      padded = layouts_common.to_padded(ex, self.max_instances)
      ex = {k: padded[k] for k in keys.INSTANCE_KEYS} | {
          keys.IMAGE: ex["image"], keys.SEMANTIC: ex["semantic"]}
    else:
      ex = {keys.IMAGE: ex["image"], keys.SEMANTIC: ex["semantic"]}
    box = transforms.random_crop_box(ex[keys.SEMANTIC], self.crop_size, rng,
                                     self.cat_max_ratio)
    ex = transforms.crop(ex, box, self.box_rule)
    if self.flip and rng.random() < 0.5:
      ex = transforms.hflip(ex, self.box_rule)
    return transforms.finalize(ex)


def _seed_for(seed: int) -> int:
  # [seed, 0]: the streams of single-process runs before the global order.
  return int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])


def _process_batches(ds: grain.MapDataset, batch_size: int, process_index: int,
                     process_count: int, num_workers: int) -> grain.DatasetIterator:
  """This process's rows of every global batch of the endless example stream ``ds``.

  Global batch ``s`` is elements ``[s*G, (s+1)*G)`` of ``ds`` (``G = batch_size
  * process_count``); process ``p`` loads only rows ``[p*b, (p+1)*b)`` of it.
  ``ds`` (order and random draws, seeded by element position) is the same on
  every process, so the global batches do not depend on the process count: two
  hosts train on exactly the batches one host would.
  """
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=collate)
  ds = ds[process_index::process_count]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


def _check_size(n: int, batch_size: int, process_count: int, what: str) -> None:
  if n < batch_size * process_count:
    raise ValueError(f"only {n} {what}, fewer than the per-process batch size "
                     f"{batch_size} x {process_count} processes (one global batch)")


def train_iterator(reader, *, batch_size: int, crop_size, seed: int,
                   cat_max_ratio: float = 0.75, flip: bool = True,
                   max_instances: int = 0, box_rule: str = "positive",
                   num_workers: int = 0, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Endless iterator of process-local training batches (``batch_size`` rows each).

  One global order, reshuffled every epoch (``repeat(reseed_each_epoch=True)``),
  with the augmentation RNG of each element seeded by its position; each
  process loads its rows of every global batch (``_process_batches``).
  """
  n = len(reader)
  _check_size(n, batch_size, process_count, "training examples")
  ds = grain.MapDataset.range(n).shuffle(seed=_seed_for(seed)).repeat()
  ds = ds.random_map(
      TrainTransform(reader, tuple(crop_size), cat_max_ratio, flip,
                     max_instances, box_rule),
      seed=_seed_for(seed + 1))
  return _process_batches(ds, batch_size, process_index, process_count, num_workers)


@dataclasses.dataclass(frozen=True)
class EvalLoad:
  """Padded index → whole image + host-side ground truth; -1 is padding.

  A padding row has ``_mask=False`` (what consumers test) and ``_host_gt``
  None (a placeholder, so the host list keeps one entry per row).
  """
  reader: Any
  image_size: tuple[int, int]

  def __call__(self, index: int) -> dict:
    h, w = self.image_size
    if index < 0:
      return {keys.IMAGE: np.zeros((h, w, 3), np.float32),
              keys.MASK: np.bool_(False), keys.INDEX: np.int32(-1),
              "_host_gt": None}
    ex = self.reader.load(int(index))
    return {keys.IMAGE: transforms.normalize(ex["image"]),
            keys.MASK: np.bool_(True), keys.INDEX: np.int32(index),
            "_host_gt": ex}


def eval_batches(reader, *, global_batch_size: int, image_size,
                 process_index: int = 0, process_count: int = 1):
  """Iterable of process-local eval batches covering the split once.

  The index list is padded with -1 to whole global batches; process p takes
  rows ``[p*b, (p+1)*b)`` of every global batch, so all processes run
  ``num_eval_steps(n, global_batch_size)`` steps and padded rows have
  ``_mask=False``.
  """
  rows = process_rows(len(reader), global_batch_size, process_index, process_count)
  ds = grain.MapDataset.source(rows.ravel().tolist()).map(
      EvalLoad(reader, tuple(image_size)))
  ds = ds.batch(rows.shape[1], drop_remainder=True, batch_fn=collate)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                              prefetch_buffer_size=2))


def num_eval_steps(n: int, global_batch_size: int) -> int:
  """Steps every process runs to cover ``n`` examples once (last batch padded)."""
  return math.ceil(n / global_batch_size)


def process_rows(n: int, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> np.ndarray:
  """``[steps, local]`` indices into ``range(n)`` of this process's rows of
  every global batch, ``-1`` for padding (all processes run ``steps``)."""
  if global_batch_size % process_count:
    raise ValueError(f"batch {global_batch_size} not divisible by "
                     f"{process_count} processes")
  local = global_batch_size // process_count
  steps = num_eval_steps(n, global_batch_size)
  padded = np.full(steps * global_batch_size, -1, np.int64)
  padded[:n] = np.arange(n)
  return padded.reshape(steps, process_count, local)[:, process_index]


_POOLS: dict = {}


def _pool(path: str):
  """The ADCL pool index, mapped once per process (grain workers included)."""
  if path not in _POOLS:
    _POOLS[path] = pool_index.PoolIndex.load(path) if path else None
  return _POOLS[path]


@dataclasses.dataclass(frozen=True)
class AdaptPairTransform:
  """(PL index, unlabelled index) → one adaptation pair (docs/method.md §7.2).

  PL branch: image + packed OPLL labels (instance masks carry the image's
  uncertain pixels as 255), ``cat_max_ratio`` crop with ≤ 10 redraws on the
  OPLL semantic map, flip, then the ADCL position-locked paste in the crop's
  un-flipped panorama window (``data/adcl_paste.py``). Unlabelled branch:
  crop without the class check, flip. Both normalised. With ``wrap_crops``
  both crops may straddle the seam of the 360° panorama (columns modulo its
  width, ``transforms.random_crop_box``); image, labels and paste all take
  the same wrapped window.
  """
  reader: Any
  packed_dir: str
  pool_path: str
  crop_size: tuple[int, int]
  cat_max_ratio: float = 0.75
  flip: bool = True
  max_instances: int = 32
  paste: dict = dataclasses.field(default_factory=dict)
  wrap_crops: bool = False

  def _pl(self, i: int, rng: np.random.Generator) -> dict:
    name = self.reader.keys[i]
    lab = packed_labels.load_packed(os.path.join(self.packed_dir, name + ".npz"))
    image = self.reader.load_image(i)
    sem = lab["semantic"]
    if sem.shape != image.shape[:2]:
      raise layouts_common.DataError(
          f"packed pseudo-labels of {name} are {sem.shape}, its image "
          f"{image.shape[:2]}: rerun opll for this data set")
    box = transforms.random_crop_box(sem, self.crop_size, rng, self.cat_max_ratio,
                                     wrap=self.wrap_crops)
    image, sem = transforms.window(image, box), transforms.window(sem, box)
    branches = {b: {"classes": lab[b]["classes"],
                    "masks": transforms.window(lab[b]["masks"], box, row_axis=1)}
                for b in ("modal", "amodal")}
    if self.flip and rng.random() < 0.5:
      image, sem = image[:, ::-1], sem[:, ::-1]
      for b in branches.values():
        b["masks"] = b["masks"][:, :, ::-1]
    out = adcl_paste.paste(np.ascontiguousarray(image), np.ascontiguousarray(sem),
                           branches["modal"], branches["amodal"], box,
                           _pool(self.pool_path), rng, wrap=self.wrap_crops,
                           **self.paste)
    ex = {keys.IMAGE: transforms.normalize(out["image"]),
          keys.SEMANTIC: out["semantic"].astype(np.int32)}
    for b in ("modal", "amodal"):
      padded = adcl_paste.pad_instances(out[b], self.max_instances)
      for k, v in padded.items():
        ex[f"{b}_{k}"] = v
    return ex

  def __call__(self, pair, rng: np.random.Generator) -> dict:
    pl_index, u_index = int(pair[0]), int(pair[1])
    ex = self._pl(pl_index, rng)
    ex[keys.UNLABELED_IMAGE] = unlabelled_crop(self.reader, u_index, self.crop_size,
                                               self.flip, rng, wrap=self.wrap_crops)
    return ex


@dataclasses.dataclass(frozen=True)
class _Partner:
  """PL index → (PL index, a uniformly drawn unlabelled index)."""
  n: int

  def __call__(self, i, rng: np.random.Generator):
    return int(i), int(rng.integers(0, self.n))


def adapt_iterator(reader, *, packed_dir: str, pool_path: str, batch_size: int,
                   crop_size, seed: int, cat_max_ratio: float = 0.75,
                   flip: bool = True, max_instances: int = 32, paste: dict | None = None,
                   wrap_crops: bool = False, num_workers: int = 0, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """Endless iterator of process-local adaptation batches (PL + unlabelled crops).

  The reference pairs item ``idx`` of an N²-long dataset as (idx // N, idx % N)
  under a shuffling sampler: two independent uniform draws. Here the PL
  images are walked in a reshuffled order every epoch and the unlabelled
  partner is drawn uniformly from the whole set with the element's RNG
  (seeded by its position, as the paste's draws); each process loads its rows
  of every global batch (``_process_batches``). grain's iterator state (saved
  in every checkpoint) covers all of it. Every worker memory-maps the one pool
  index (a ``gs://`` index is copied to a local temporary file first).
  ``wrap_crops``: crops of the full 360° panoramas may straddle their seam
  (``AdaptPairTransform``).
  """
  n = len(reader)
  _check_size(n, batch_size, process_count, "target images")
  ds = grain.MapDataset.range(n).shuffle(seed=_seed_for(seed)).repeat()
  ds = ds.random_map(_Partner(n), seed=_seed_for(seed + 2))
  ds = ds.random_map(
      AdaptPairTransform(reader, packed_dir, pool_index.local_copy(pool_path),
                         tuple(crop_size), cat_max_ratio,
                         flip, max_instances, dict(paste or {}), bool(wrap_crops)),
      seed=_seed_for(seed + 1))
  return _process_batches(ds, batch_size, process_index, process_count, num_workers)


def unlabelled_crop(reader, index: int, crop_size, flip: bool, rng: np.random.Generator,
                    wrap: bool = False) -> np.ndarray:
  """One unlabelled target crop: a window without the class check (columns modulo
  the width with ``wrap``), flip, normalised."""
  image = reader.load_image(int(index))
  # No class check on this branch; the image's shape is all the crop needs.
  box = transforms.random_crop_box(image[..., 0], tuple(crop_size), rng, wrap=wrap)
  image = transforms.window(image, box)
  if flip and rng.random() < 0.5:
    image = image[:, ::-1]
  return transforms.normalize(np.ascontiguousarray(image))


@dataclasses.dataclass(frozen=True)
class UnlabelledTransform:
  """index → ``{unlabeled_image}``: the adaptation pair's unlabelled branch alone."""
  reader: Any
  crop_size: tuple[int, int]
  flip: bool = True
  wrap_crops: bool = False

  def __call__(self, index, rng: np.random.Generator) -> dict:
    return {keys.UNLABELED_IMAGE: unlabelled_crop(self.reader, index, self.crop_size,
                                                  self.flip, rng, wrap=self.wrap_crops)}


def unlabelled_iterator(reader, *, batch_size: int, crop_size, seed: int,
                        flip: bool = True, wrap_crops: bool = False, num_workers: int = 0,
                        process_index: int = 0, process_count: int = 1
                        ) -> grain.DatasetIterator:
  """Endless iterator of process-local batches of unlabelled target crops.

  For methods that need no pseudo-labels: only the panoramas are read. The
  images are walked in an order reshuffled every epoch (as
  :func:`train_iterator`), each crop's draws seeded by its position.
  """
  n = len(reader)
  _check_size(n, batch_size, process_count, "target images")
  ds = grain.MapDataset.range(n).shuffle(seed=_seed_for(seed)).repeat()
  ds = ds.random_map(UnlabelledTransform(reader, tuple(crop_size), flip, bool(wrap_crops)),
                     seed=_seed_for(seed + 1))
  return _process_batches(ds, batch_size, process_index, process_count, num_workers)


class Streams:
  """Several endless iterators as one: each step's batch is one batch of each,
  merged into one dict, the keys of stream ``name`` prefixed with ``prefixes[name]``.

  Checkpointed as one iterator (``grain.checkpoint.CheckpointSave`` writes
  :meth:`get_state`'s bytes): the states of all streams, by name, so a
  restored run continues every stream where it stopped.
  """

  def __init__(self, iterators: dict, prefixes: dict | None = None):
    self._its = dict(iterators)
    self._prefixes = {name: (prefixes or {}).get(name, "") for name in self._its}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    out = {}
    for name, it in self._its.items():
      for k, v in next(it).items():
        key = self._prefixes[name] + k
        if key in out:
          raise ValueError(f"input streams {sorted(self._its)} both give batch key {key!r}")
        out[key] = v
    return out

  def get_state(self) -> bytes:
    return json.dumps({name: it.get_state() for name, it in self._its.items()},
                      sort_keys=True).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state.decode() if isinstance(state, bytes) else state)
    if set(states) != set(self._its):
      raise ValueError(f"the saved input state holds streams {sorted(states)}; this run "
                       f"reads {sorted(self._its)}: another method's checkpoint?")
    for name, it in self._its.items():
      it.set_state(states[name])

  def start_prefetch(self) -> None:
    for it in self._its.values():
      if hasattr(it, "start_prefetch"):
        it.start_prefetch()
