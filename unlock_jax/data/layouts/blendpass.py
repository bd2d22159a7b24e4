"""Reader of the BlendPASS (K2B) layout (target domain), as the reference loads it.

* ``train``: unlabelled; the sorted glob ``leftImg8bit/train/*/*.jpg`` with key
  ``"<city>/<name>.jpg"`` (reference ``custom.py`` L270-284). ``load`` returns
  only ``name`` and ``image`` unless ``hidden_gt=True``, which reads the
  synthpass-only ground truth under ``_synth_gt/`` (see synthpass/generator.py).
* ``val``: ``Panoptic/val_trainId_K2B.json`` + ``Panoptic/val_trainId_K2B/<k>__panoptic.png``;
  image ``leftImg8bit/val/<k>_.png`` (panoptic file_name with ``_panoptic.png`` →
  ``.png``, no city folder); amodal polygons ``annotations/val.json`` (indexed by
  that image name; decoded at the image size); ``Instance/val_K2B/<k>__instanceTrainIds.png``
  (trainId for stuff, trainId*1000+k for things, 255 void; 16-bit).

``root`` may be a URL (``gs://...``): files are read through etils.epath.
"""
import os

import numpy as np

from unlock_jax import fileio
from unlock_jax.data.layouts import common

DEFAULT_SIZE = (400, 2048)  # (height, width) of BlendPASS panoramas
HIDDEN_DIR = "_synth_gt"


class Reader:
  """BlendPASS split reader: ``len``, ``names``, ``load(i)``, ``load_image(i)``.

  Args:
    root: the data set folder (holding ``leftImg8bit/``, ``Panoptic/``, ...).
    split: "train" (image-only) or "val".
    image_size: expected (height, width); ``None`` takes the size of the first
      image and requires all others to match.
    hidden_gt: for ``split="train"`` of a synthpass data set, also load the
      ground truth kept under ``_synth_gt/`` (for pseudo-label quality only).
  """

  def __init__(self, root: str, split: str, image_size=DEFAULT_SIZE, hidden_gt: bool = False):
    if split not in ("train", "val"):
      raise ValueError(f"BlendPASS split must be 'train' or 'val', got {split!r}")
    self.root, self.split, self.hidden_gt = root, split, hidden_gt
    self.categories = None
    self._amodal = {}
    self._items = []
    if split == "train":
      img_dir = os.path.join(root, "leftImg8bit", "train")
      if fileio.names(img_dir) is None:
        raise common.DataError(f"missing BlendPASS train image folder {img_dir}")
      for path in fileio.glob(img_dir, "*/*.jpg"):
        city, fn = path.split("/")[-2:]
        self._items.append(dict(name=fn[:-4], key=f"{city}/{fn}", image=path))
      if hidden_gt:
        if not fileio.isdir(os.path.join(root, HIDDEN_DIR)):
          raise common.DataError(
              f"{root} has no {HIDDEN_DIR}/: the train split's hidden ground truth exists "
              "only in data sets synthpass generated (real BlendPASS train is unlabelled); "
              "point the root at a synthpass BlendPASS/ folder")
        self._index_gt(os.path.join(root, HIDDEN_DIR), "train_trainId_K2B",
                       os.path.join(root, HIDDEN_DIR, "annotations", "train.json"),
                       "train_K2B", by_name=True)
    else:
      self._index_gt(root, "val_trainId_K2B", os.path.join(root, "annotations", "val.json"),
                     "val_K2B", by_name=False)
    self.names = [it["name"] for it in self._items]
    # "<city>/<stem>" for train (the reference's file key without extension):
    # unique across cities, and the pseudo-label layout's relative path.
    self.keys = [os.path.splitext(it["key"])[0] for it in self._items]
    if image_size is None and self._items:
      image_size = common.read_png_size(self._items[0]["image"], "BlendPASS image")
    self.image_size = None if image_size is None else tuple(image_size)

  def _index_gt(self, base: str, pano: str, amodal_path: str, inst: str, by_name: bool):
    """Reads the panoptic and amodal JSONs and checks that every referenced file exists."""
    self.pan_json_path = os.path.join(base, "Panoptic", pano + ".json")
    pan = common.read_json(self.pan_json_path, "BlendPASS panoptic JSON")
    annotations = common.panoptic_annotations(pan, self.pan_json_path)
    self.categories = pan["categories"]
    self.amodal_json_path = amodal_path
    self._amodal = common.amodal_index(common.read_json(amodal_path, "BlendPASS amodal JSON"),
                                       amodal_path)
    by_stem = {it["name"]: it for it in self._items}
    items, files = [], fileio.Listing()
    for a, stem in annotations:
      fn = a["file_name"]
      if by_name:
        if stem not in by_stem:
          raise common.DataError(f"{self.pan_json_path} references {fn}, but there is no "
                                 f"train image {stem}.jpg under leftImg8bit/train/*/")
        it = dict(by_stem[stem])
      else:
        it = dict(name=stem, key=stem + ".png",
                  image=os.path.join(self.root, "leftImg8bit", "val", stem + ".png"))
      it["panoptic"] = os.path.join(base, "Panoptic", pano, fn)
      it["instance"] = os.path.join(base, "Instance", inst, stem + "_instanceTrainIds.png")
      for path, what in ((it["image"], "image"), (it["panoptic"], "panoptic PNG"),
                         (it["instance"], "instance PNG")):
        if not files.has(path):
          raise common.DataError(f"{self.pan_json_path} references a missing {what} {path}")
      # Thing ids class*1000+k: BlendPASS val's amodal PQ relies on them.
      common.check_segments(a["segments_info"], self.pan_json_path, stem,
                            strict_ids=not by_name)
      it["segments"] = a["segments_info"]
      items.append(it)
    if by_name:
      if len(items) != len(self._items):
        raise common.DataError(f"{self.pan_json_path} covers {len(items)} of the "
                               f"{len(self._items)} train images")
      # Keep the glob order of the image-only reader, so indices agree with it.
      rank = {it["name"]: j for j, it in enumerate(self._items)}
      items.sort(key=lambda it: rank[it["name"]])
    self._items = items

  def __len__(self) -> int:
    return len(self._items)

  def load_image(self, i: int) -> np.ndarray:
    """uint8 [H,W,3] RGB image of example ``i``."""
    return common.read_rgb(self._items[i]["image"], f"BlendPASS {self.split} image",
                           self.image_size)

  def load(self, i: int) -> dict:
    """Image (and, for val or hidden_gt, ground truth) of example ``i``."""
    it = self._items[i]
    image = self.load_image(i)
    if self.split == "train" and not self.hidden_gt:
      return dict(name=it["name"], image=image)
    pan = common.read_panoptic(it["panoptic"], "BlendPASS panoptic PNG", self.image_size)
    # Reference: an image absent from the amodal JSON has no amodal annotations.
    gt = common.build_gt(pan, it["segments"], self._amodal.get(it["key"], {}),
                         self.pan_json_path, it["name"])
    inst = common.read_instance_ids(it["instance"], "BlendPASS instance PNG", self.image_size)
    return dict(name=it["name"], image=image, semantic=gt["semantic"], panoptic=pan,
                segments=gt["segments"], categories=self.categories,
                instance_ids=inst, modal=gt["modal"], amodal=gt["amodal"])
