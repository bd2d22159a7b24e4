"""Reader of the KITTI-360 APS layout (source domain), as the reference loads it.

Layout under ``root`` (reference ``custom.py`` L182-222, ``loading.py`` L200-240):
``Panoptic/<split>.json`` (COCO panoptic), ``Panoptic/<split>/<name>_panoptic.png``,
``Image/<split>/<name>.png`` (name = panoptic file_name with ``_panoptic.png`` →
``.png``), ``annotations/<split>.json`` (amodal polygons keyed by image file
name; every image must be listed). ``Semantic/<split>`` is not read.
``root`` may be a URL (``gs://...``): files are read through etils.epath.
"""
import os

import numpy as np

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data.layouts import common

DEFAULT_SIZE = (376, 1408)  # (height, width) of KITTI-360 APS images


class Reader:
  """KITTI-360 APS split reader: ``len``, ``names``, ``load(i)``, ``load_image(i)``.

  Args:
    root: the data set folder (holding ``Panoptic/``, ``Image/``, ``annotations/``).
    split: "train" or "val".
    image_size: expected (height, width) of every file; ``None`` takes the
      size of the first image and requires all others to match.
  """

  def __init__(self, root: str, split: str, image_size=DEFAULT_SIZE):
    self.root, self.split = root, split
    self.pan_json_path = os.path.join(root, "Panoptic", f"{split}.json")
    self.amodal_json_path = os.path.join(root, "annotations", f"{split}.json")
    pan = common.read_json(self.pan_json_path, "KITTI-360 APS panoptic JSON")
    annotations = common.panoptic_annotations(pan, self.pan_json_path)
    self.categories = pan["categories"]
    amodal = common.read_json(self.amodal_json_path, "KITTI-360 APS amodal JSON")
    self._amodal = common.amodal_index(amodal, self.amodal_json_path)
    self._items = []
    files = fileio.Listing()
    for a, name in annotations:
      fn = a["file_name"]
      image = os.path.join(root, "Image", split, name + ".png")
      pano = os.path.join(root, "Panoptic", split, fn)
      for path, what in ((image, "image"), (pano, "panoptic PNG")):
        if not files.has(path):
          raise common.DataError(f"{self.pan_json_path} references a missing {what} {path}")
      if name + ".png" not in self._amodal:
        raise common.DataError(f"{self.amodal_json_path} has no image {name}.png "
                               f"(listed in {self.pan_json_path})")
      common.check_segments(a["segments_info"], self.pan_json_path, name)
      self._items.append(dict(name=name, image=image, panoptic=pano,
                              segments=a["segments_info"]))
    self.names = [it["name"] for it in self._items]
    if image_size is None and self._items:
      image_size = common.read_png_size(self._items[0]["image"], "KITTI-360 APS image")
    self.image_size = None if image_size is None else tuple(image_size)

  def __len__(self) -> int:
    return len(self._items)

  def load_image(self, i: int) -> np.ndarray:
    """uint8 [H,W,3] RGB image of example ``i``."""
    return common.read_rgb(self._items[i]["image"], "KITTI-360 APS image", self.image_size)

  def load(self, i: int) -> dict:
    """Image and ground truth of example ``i`` (keys documented in ``layouts/__init__``)."""
    it = self._items[i]
    image = self.load_image(i)
    pan = common.read_panoptic(it["panoptic"], "KITTI-360 APS panoptic PNG", self.image_size)
    gt = common.build_gt(pan, it["segments"], self._amodal[it["name"] + ".png"],
                         self.pan_json_path, it["name"])
    # Instance ids derived from the panoptic map: non-crowd thing ids as they are,
    # stuff and crowd pixels → their class id, pixels of no listed segment → 255.
    inst = np.full(pan.shape, labels.IGNORE, np.int32)
    for s in gt["segments"]:
      m = pan == s["id"]
      keep_id = labels.is_thing(s["category_id"]) and not s["iscrowd"] and s["id"] >= 1000
      inst[m] = s["id"] if keep_id else s["category_id"]
    return dict(name=it["name"], image=image, semantic=gt["semantic"], panoptic=pan,
                segments=gt["segments"], categories=self.categories, instance_ids=inst,
                modal=gt["modal"], amodal=gt["amodal"])
