"""TFDS builders of the KITTI-360 APS and BlendPASS layouts, written as ArrayRecord.

Each builder reads a data set already on disk (TFDS ``manual_dir``: the layout
root the file readers take) through the file reader of its layout, so a record
holds exactly what ``Reader.load(i)`` returns (records.py: ground truth
computed, images as the bytes of their files). Nothing is downloaded.

A synthpass set is such a ``manual_dir`` too (the generator writes the real
layouts), so these two builders serve it; the one synthpass-only extra, the
hidden ground truth of BlendPASS ``train`` (``_synth_gt/``), is stored with the
train records when present, and read with ``hidden_gt=True``.

One prepared data set per ``data_dir``: ``<data_dir>/<layout>/1.0.0/``.
Per-split reader attributes (names, keys, categories, image size) live in the
data set's metadata, so opening a split reads no record.
"""
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

from unlock_jax.data.layouts import blendpass
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import kitti360aps
from unlock_jax.data.tfds import records

DATA_VERSION = "1.0.0"


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared part: features, order-preserving writing, per-split metadata."""
  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {DATA_VERSION: "Records equal to the file readers' examples."}

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling: record i is example i of the file reader.
    return self.dataset_info_from_configs(features=records.features(), disable_shuffling=True,
                                          metadata=tfds.core.MetadataDict())

  def _readers(self, root: str) -> dict:
    """split → (file reader, hidden_gt) for the splits present under ``root``."""
    raise NotImplementedError

  def _image_path(self, reader, root: str, i: int) -> str:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    readers = self._readers(root)
    if not readers:
      raise common.DataError(f"no {self.name} split under {root}")
    self.info.metadata["manual_dir"] = os.path.abspath(root)
    splits = self.info.metadata.setdefault("splits", {})
    for split, (reader, hidden) in readers.items():
      splits[split] = dict(
          names=list(reader.names), keys=list(getattr(reader, "keys", reader.names)),
          categories=reader.categories, hidden_gt=hidden,
          labelled=reader.categories is not None,
          image_size=None if reader.image_size is None else list(reader.image_size))
    return {split: self._generate_examples(root, reader)
            for split, (reader, _) in readers.items()}

  def _generate_examples(self, root, reader):
    for i in range(len(reader)):
      ex = reader.load(i)
      path = self._image_path(reader, root, i)
      with open(path, "rb") as f:
        data = f.read()
      # The stored bytes must decode to the reader's image (guards the path rule).
      if not np.array_equal(records.decode_rgb(data, path, reader.image_size), ex["image"]):
        raise common.DataError(f"{path} does not decode to the reader's image of "
                               f"{ex['name']}")
      yield i, records.encode(ex, data)


class Kitti360Aps(_Builder):
  """KITTI-360 APS (source domain), real or synthpass: splits ``train``, ``val``.

  ``manual_dir``: the folder holding ``Panoptic/``, ``Image/``, ``annotations/``
  (layouts/kitti360aps.py).
  """
  name = "kitti360aps"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at a KITTI-360 APS folder (Panoptic/, "
                                  "Image/, annotations/) or a synthpass KITTI360_APS/ folder.")

  def _readers(self, root):
    return {s: (kitti360aps.Reader(root, s, image_size=None), False)
            for s in ("train", "val")
            if os.path.isfile(os.path.join(root, "Panoptic", f"{s}.json"))}

  def _image_path(self, reader, root, i):
    return os.path.join(root, "Image", reader.split, reader.names[i] + ".png")


class BlendPass(_Builder):
  """BlendPASS (target domain), real or synthpass: splits ``train`` (images), ``val``.

  ``manual_dir``: the folder holding ``leftImg8bit/``, ``Panoptic/``, ...
  (layouts/blendpass.py). A synthpass set's ``_synth_gt/`` ground truth of the
  train split is stored with its records (readers skip it unless asked).
  """
  name = "blendpass"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at a BlendPASS folder (leftImg8bit/, "
                                  "Panoptic/, annotations/, Instance/) or a synthpass "
                                  "BlendPASS/ folder.")

  def _readers(self, root):
    out = {}
    if os.path.isdir(os.path.join(root, "leftImg8bit", "train")):
      hidden = os.path.isdir(os.path.join(root, blendpass.HIDDEN_DIR))
      out["train"] = (blendpass.Reader(root, "train", image_size=None, hidden_gt=hidden),
                      hidden)
    if os.path.isfile(os.path.join(root, "Panoptic", "val_trainId_K2B.json")):
      out["val"] = (blendpass.Reader(root, "val", image_size=None), False)
    return out

  def _image_path(self, reader, root, i):
    if reader.split == "train":  # key "<city>/<stem>" of leftImg8bit/train/<city>/<stem>.jpg
      return os.path.join(root, "leftImg8bit", "train", reader.keys[i] + ".jpg")
    return os.path.join(root, "leftImg8bit", "val", reader.names[i] + ".png")


BUILDERS = {"kitti360aps": Kitti360Aps, "blendpass": BlendPass}


def builder_class(layout: str):
  if layout not in BUILDERS:
    raise ValueError(f"unknown data layout {layout!r}; expected one of {sorted(BUILDERS)}")
  return BUILDERS[layout]


def prepare(layout: str, manual_dir: str, data_dir: str, overwrite: bool = False):
  """Builds ``<data_dir>/<layout>/1.0.0`` (ArrayRecord) from the layout at ``manual_dir``.

  Offline: the files are read from ``manual_dir``, nothing is fetched (GCS
  look-up off). An existing build from another ``manual_dir`` is an error
  unless ``overwrite``, which rebuilds it.
  """
  cls = builder_class(layout)
  if not os.path.isdir(manual_dir):
    raise common.DataError(f"manual_dir {manual_dir} of the {layout} build does not exist")
  b = cls(data_dir=data_dir, file_format="array_record")
  if b.is_prepared():
    built_from = b.info.metadata.get("manual_dir")
    if overwrite:
      shutil.rmtree(os.fspath(b.data_path))
      b = cls(data_dir=data_dir, file_format="array_record")
    elif built_from != os.path.abspath(manual_dir):
      raise common.DataError(
          f"{b.data_path} was built from {built_from}, not {os.path.abspath(manual_dir)}: "
          "pass overwrite=True (--overwrite) or another data_dir")
    else:
      return b
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return b
