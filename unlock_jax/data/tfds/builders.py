"""TFDS builders of the KITTI-360 APS, BlendPASS and AmodalSynthDrive layouts, as ArrayRecord.

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
data set's metadata, so opening a split reads no record. ``manual_dir`` and
``data_dir`` may be URLs (``gs://...``): files are read through etils.epath.
"""
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from unlock_jax import fileio
from unlock_jax import registry
from unlock_jax.data.layouts import amodalsynthdrive
from unlock_jax.data.layouts import blendpass
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import kitti360aps
from unlock_jax.data.tfds import records

DATA_VERSION = "1.0.0"


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared part: features, order-preserving writing, per-split metadata."""
  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {DATA_VERSION: "Records equal to the file readers' examples."}
  # True: the reader resizes images to its image_size, and so does decoding a record.
  RESIZES = False
  # The readers' image_size (set by ``prepare``); None: each split's first image's size.
  image_size = None

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
    self.info.metadata["manual_dir"] = fileio.absolute(root)
    self.info.metadata["image_size"] = _size_list(self.image_size)
    splits = self.info.metadata.setdefault("splits", {})
    for split, (reader, hidden) in readers.items():
      splits[split] = dict(
          names=list(reader.names), keys=list(getattr(reader, "keys", reader.names)),
          categories=reader.categories, hidden_gt=hidden,
          labelled=reader.categories is not None, resized=self.RESIZES,
          image_size=_size_list(reader.image_size))
    return {split: self._generate_examples(root, reader)
            for split, (reader, _) in readers.items()}

  def _generate_examples(self, root, reader):
    for i in range(len(reader)):
      ex = reader.load(i)
      path = self._image_path(reader, root, i)
      data = epath.Path(path).read_bytes()
      # The stored bytes must decode to the reader's image (guards the path rule).
      if not np.array_equal(records.decode_rgb(data, path, reader.image_size, self.RESIZES),
                            ex["image"]):
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
    return {s: (kitti360aps.Reader(root, s, image_size=self.image_size), False)
            for s in ("train", "val")
            if epath.Path(root, "Panoptic", f"{s}.json").exists()}

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
    if epath.Path(root, "leftImg8bit", "train").is_dir():
      hidden = epath.Path(root, blendpass.HIDDEN_DIR).is_dir()
      out["train"] = (blendpass.Reader(root, "train", image_size=self.image_size,
                                       hidden_gt=hidden), hidden)
    if epath.Path(root, "Panoptic", "val_trainId_K2B.json").exists():
      out["val"] = (blendpass.Reader(root, "val", image_size=self.image_size), False)
    return out

  def _image_path(self, reader, root, i):
    if reader.split == "train":  # key "<city>/<stem>" of leftImg8bit/train/<city>/<stem>.jpg
      return os.path.join(root, "leftImg8bit", "train", reader.keys[i] + ".jpg")
    return os.path.join(root, "leftImg8bit", "val", reader.names[i] + ".png")


class AmodalSynthDrive(_Builder):
  """AmodalSynthDrive (source domain of ASD→BlendPASS): the splits with labels of
  ``train``, ``val``, ``test``.

  ``manual_dir``: the folder holding ``<split>/images/`` and
  ``<split>/amodal_panoptic_seg/`` (layouts/amodalsynthdrive.py). Records hold
  the reader's examples at the build's ``image_size`` (``--image_size``, e.g.
  the config's 540x960; default the first image's size): ground truth as the
  reader resizes it, and the image file's bytes, resized as the reader
  resizes them when decoded.
  """
  name = "amodalsynthdrive"
  RESIZES = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at an AmodalSynthDrive folder "
                                  "(<split>/images/, <split>/amodal_panoptic_seg/).")

  def _readers(self, root):
    return {s: (amodalsynthdrive.Reader(root, s, image_size=self.image_size), False)
            for s in ("train", "val", "test")
            if epath.Path(root, s, "amodal_panoptic_seg").is_dir()}

  def _image_path(self, reader, root, i):
    return amodalsynthdrive.image_path(root, reader.split, reader.keys[i])


# Keyed by the names of layouts.LAYOUTS.
BUILDERS = registry.Registry("data layout", {
    "kitti360aps": Kitti360Aps, "blendpass": BlendPass, "amodalsynthdrive": AmodalSynthDrive})


def _size_list(size):
  return None if size is None else [int(v) for v in size]


def builder_class(layout: str):
  return BUILDERS.get(layout)


def prepare(layout: str, manual_dir: str, data_dir: str, overwrite: bool = False,
            image_size=None):
  """Builds ``<data_dir>/<layout>/1.0.0`` (ArrayRecord) from the layout at ``manual_dir``.

  Offline: the files are read from ``manual_dir``, nothing is fetched (GCS
  look-up off). ``image_size`` (H, W) is the readers' ``image_size``:
  AmodalSynthDrive is resized to it, the other layouts must have it; None
  takes each split's first image's size. An existing build from another
  ``manual_dir`` or ``image_size`` is an error unless ``overwrite``, which
  rebuilds it.
  """
  cls = builder_class(layout)
  if not epath.Path(manual_dir).is_dir():
    raise common.DataError(f"manual_dir {manual_dir} of the {layout} build does not exist")
  source = (fileio.absolute(manual_dir), _size_list(image_size))
  b = cls(data_dir=data_dir, file_format="array_record")
  if b.is_prepared():
    built = (b.info.metadata.get("manual_dir"), b.info.metadata.get("image_size"))
    if overwrite:
      epath.Path(b.data_path).rmtree()
      b = cls(data_dir=data_dir, file_format="array_record")
    elif built != source:
      raise common.DataError(
          f"{b.data_path} was built from {built[0]} at image_size {built[1]}, not from "
          f"{source[0]} at image_size {source[1]}: pass overwrite=True (--overwrite) or "
          "another data_dir")
    else:
      return b
  b.image_size = None if image_size is None else tuple(source[1])
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return b
