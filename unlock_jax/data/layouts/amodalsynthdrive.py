"""Reader of the AmodalSynthDrive (ASD) layout: the source domain of the ASD→BlendPASS setting.

The reference ships only ASD's class list (``mmseg/datasets/amodalsynthdrive.py``
L8-15 of yihong-97/UNLOCK, docs/method.md §2); its ASD loader and
configs are not released. Everything below comes from the dataset authors'
public code (robot-learning-freiburg):

* layout, ``APSNet: tools/dataset_converters/data_struct.py`` (folder tree),
  ``PAPS: detectron2/data/datasets/amodalsynthdrive.py`` (cameras, file
  suffixes, 1080x1920 images)::

    <root>/<split>/images/<camera>/<sequence>/<frame>_rgb.jpg
    <root>/<split>/amodal_panoptic_seg/<camera>/<sequence>/<frame>_ampano.png
    <root>/<split>/amodal_panoptic_seg/<camera>/<sequence>/<frame>_ampano.json
    (and <frame>_rel.json, the occlusion order, which is not read)

  with camera in front/back/left/right and split in train/val/test. Label
  files at another depth are not read (``check_data`` lists them);
* encoding, ``amodal-panoptic: README.md`` ("Dataset Format") and
  ``amodal_panoptic_eval/eval.py`` (``load_annotation``,
  ``prepare_segments``): ``_ampano.png`` is a 1-channel uint16 map holding
  the class *id* (not trainId) for stuff and ``id * 1000 + instance`` for
  thing instances; ``_ampano.json`` maps ``str(id*1000 + instance)`` to
  ``{"occluded", "amodal_mask", "occlusion_mask"}``, masks as COCO RLE. An
  instance that is not occluded has its visible mask as amodal mask;
* class ids, ``amodal-panoptic: amodal_panoptic_eval/labels/asd_labels.py``
  (identical to ``APSNet: mmdet/core/evaluation/dataset_labels/
  amodalsynthdrive_labels.py``): Cityscapes-style ids, road 7 ... bike 33.

They are mapped by name onto the reference's 18 classes (``ASD_CLASS_NAMES``,
thing ids 11..17 as everywhere in this project): road..sky as in Cityscapes,
person 24→11, rider 25→12, car 26→13, truck 27→14, bus 28→15, motor 32→16,
bike 33→17. Following ASD's own trainId table, polegroup (17) counts as pole
and road line (34) as road; every other id (void, parking, guard rail,
caravan, trailer, train, other, water, ...) is ignore (255). An id outside
the table is an error naming the file.

Ground truth follows ``common.build_gt`` (docs/method.md §8.1):
a thing instance enters the modal/amodal lists if it has non-empty modal and
amodal masks whose tight boxes are at least 2 px wide and high; a thing
class value below 1000 is a crowd region (Cityscapes convention: semantic
255, no instance). Segment ids are ours (``class*1000 + k``, k counting the
class's instances in ascending ASD id order; stuff and crowd: the class id);
``panoptic`` is 255 where ASD has void; ``amodal_id`` is the ASD instance id.

Not established from any public source, hence stated rather than guessed:
* the reference's own ASD pipeline (resize, crop, train split, which cameras),
  so ``image_size`` is a free choice (configs/asd2b/source_b5.py);
* whether ASD stores riders with instance ids. Its label table gives rider
  ``hasInstances=False``; if so every rider pixel is a crowd region here and
  class 12 gets no training signal from ASD;
* whether amodal masks always contain the visible mask; they are used as
  stored. (APSNet's ASD converter also clears road pixels, id 7, from amodal
  masks; that is not done here.)

``root`` may be a URL (``gs://...``): files are listed and read through
etils.epath, one listing per folder.
"""
import os

import numpy as np
import pycocotools.mask as mask_utils

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data.layouts import common

DEFAULT_SIZE = (1080, 1920)  # (height, width) of ASD images (PAPS loader)
IMAGE_SUFFIX = "_rgb.jpg"
AMPANO_SUFFIX = "_ampano.png"
AMPANO_JSON_SUFFIX = "_ampano.json"
VOID_ID = labels.IGNORE  # panoptic id of pixels no segment covers
LABEL_GLOB = "*/*/*" + AMPANO_SUFFIX  # <camera>/<sequence>/<frame>_ampano.png

# The reference's AmodalSynthDrive.CLASSES: our 18 ids, ASD's names.
ASD_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "motor", "bike",
)
# ASD class id (asd_labels.py) → our id; every id of the table is listed.
ASD_TO_TRAIN = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255,  # void
    7: 0, 8: 1, 9: 255, 10: 255,                                # road, sidewalk, parking, rail
    11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255,             # building .. tunnel
    17: 5, 18: 5, 19: 6, 20: 7,                                 # polegroup, pole, light, sign
    21: 8, 22: 9, 23: 10,                                       # vegetation, terrain, sky
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15,                     # person, rider, car, truck, bus
    29: 255, 30: 255, 31: 255,                                  # caravan, trailer, train
    32: 16, 33: 17,                                             # motor, bike
    34: 0, 35: 255, 36: 255,                                    # road line, other, water
}
CATEGORIES = tuple(dict(id=i, name=n, isthing=int(labels.is_thing(i)))
                   for i, n in enumerate(ASD_CLASS_NAMES))


def read_ampano(path: str) -> np.ndarray:
  """``_ampano.png`` (1-channel, 16-bit) → int32 [H,W] ids."""
  im = common.open_image(path, "amodal panoptic PNG")
  return ampano_ids(np.asarray(im), im.mode, path)


def ampano_ids(arr: np.ndarray, mode: str, path: str) -> np.ndarray:
  """The ids of an ``_ampano.png``'s pixels (``mode``: the file's PIL mode)."""
  if arr.ndim != 2:
    raise common.problem(path, f"amodal panoptic PNG has mode {mode}, expected one channel "
                         "(16-bit)", "write it as a single-channel 16-bit PNG")
  return arr.astype(np.int32)


def read_info(path: str) -> dict:
  """``_ampano.json``: {str(instance id): {occluded, amodal_mask, ...}}."""
  info = common.read_json(path, "amodal panoptic JSON", f"add {os.path.basename(path)} "
                          "({instance id: {occluded, amodal_mask}}) or remove the label PNG")
  if not isinstance(info, dict):
    raise common.problem(path, f"amodal panoptic JSON is a {type(info).__name__}, expected "
                         "an object keyed by instance id",
                         'write {"<id*1000+k>": {occluded, amodal_mask}, ...}')
  return info


def decode_rle(rle, height: int, width: int, where: str) -> np.ndarray:
  """COCO RLE (compressed string or uncompressed list counts) → uint8 0/1 [H,W]."""
  if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
    raise common.DataError(f"{where} is not a COCO RLE (an object with 'size' and 'counts')")
  if [int(v) for v in rle["size"]] != [height, width]:
    raise common.DataError(f"{where} has size {rle['size']}, but its PNG is "
                           f"{height}x{width} (rows x columns)")
  try:
    if isinstance(rle["counts"], list):
      rle = mask_utils.frPyObjects([rle], height, width)[0]
    return mask_utils.decode(rle).astype(np.uint8)
  except (TypeError, ValueError) as e:
    raise common.DataError(f"cannot decode {where}: {e}") from e


def amodal_mask(info: dict, value: int, visible: np.ndarray, json_path: str) -> np.ndarray:
  """Amodal mask of instance ``value``, as the benchmark's evaluator reads it.

  ``occluded`` false → the visible mask; otherwise the ``amodal_mask`` RLE.
  Without an ``occluded`` field the RLE is used when present (the README
  lists only the masks), else the visible mask.
  """
  entry = info.get(str(value))
  if not isinstance(entry, dict):
    raise common.DataError(f"{json_path} has no object '{value}' (an instance of its PNG)")
  occluded, rle = entry.get("occluded"), entry.get("amodal_mask")
  if (occluded is not None and not occluded) or (occluded is None and not rle):
    return visible.astype(np.uint8)
  if not rle:
    raise common.DataError(f"object '{value}' in {json_path} is occluded but has no amodal_mask")
  h, w = visible.shape
  return decode_rle(rle, h, w, f"amodal_mask of object '{value}' in {json_path}")


def segments_from_ampano(ids: np.ndarray, info: dict, class_map: dict, png_path: str,
                         json_path: str):
  """Release ids → (panoptic int32 in our ids, segments, {segment id: amodal mask}).

  ``class_map``: release class id → our id (255: ignore). Segments are
  ``{id, category_id, iscrowd, area, amodal_id}`` in ascending id order,
  ``amodal_id`` the release instance id (0 for stuff and crowd).
  """
  pan = np.full(ids.shape, VOID_ID, np.int32)
  segs, amodal, count = {}, {}, {}
  for value in np.unique(ids).tolist():
    cls = value // labels.LABEL_DIVISOR if value >= labels.LABEL_DIVISOR else value
    if cls not in class_map:
      raise common.DataError(f"{png_path} has class id {cls} (pixel value {value}), which the "
                             f"class map does not cover (known ids: {sorted(class_map)})")
    c = int(class_map[cls])
    if c == labels.IGNORE:
      continue
    if not 0 <= c < labels.NUM_CLASSES:
      raise ValueError(f"class map sends id {cls} to {c}, expected 0..{labels.NUM_CLASSES - 1} "
                       "or 255")
    m = ids == value
    if value >= labels.LABEL_DIVISOR and labels.is_thing(c):
      k = count[c] = count.get(c, 0) + 1
      if k >= labels.LABEL_DIVISOR:
        raise common.DataError(f"{png_path} has more than {labels.LABEL_DIVISOR - 1} instances "
                               f"of class {c}")
      sid = c * labels.LABEL_DIVISOR + k
      segs[sid] = dict(id=sid, category_id=c, iscrowd=0, area=0, amodal_id=value)
      amodal[sid] = amodal_mask(info, value, m, json_path)
    else:  # stuff, or a crowd region of a thing class (value < 1000)
      sid = c
      segs.setdefault(sid, dict(id=sid, category_id=c, iscrowd=int(labels.is_thing(c)),
                                area=0, amodal_id=0))
    pan[m] = sid
    segs[sid]["area"] += int(m.sum())
  return pan, [segs[k] for k in sorted(segs)], amodal


def gt_from_segments(pan: np.ndarray, segments: list, amodal: dict) -> dict:
  """Semantic map and aligned modal/amodal lists, by the rules of ``common.build_gt``."""
  semantic = np.full(pan.shape, labels.IGNORE, np.uint8)
  modal_list, amodal_list = [], []
  for s in segments:
    m = pan == s["id"]
    if s["iscrowd"]:
      continue
    semantic[m] = s["category_id"]
    if not labels.is_thing(s["category_id"]) or not m.any():
      continue
    amask = amodal[s["id"]]
    if not amask.any() or not common._valid_box(m) or not common._valid_box(amask):  # pylint: disable=protected-access
      continue
    modal_list.append(dict(mask=m.astype(np.uint8), category_id=s["category_id"], seg_id=s["id"]))
    amodal_list.append(dict(mask=amask, category_id=s["category_id"], seg_id=s["id"],
                            amodal_id=s["amodal_id"]))
  return dict(semantic=semantic, modal=modal_list, amodal=amodal_list)


def resize_nearest(arr: np.ndarray, size) -> np.ndarray:
  """Nearest-neighbour resize of a label map to (H, W): pixel centres, no new values."""
  h, w = arr.shape[:2]
  rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
  return arr[rows][:, cols]


def image_path(root: str, split: str, key: str) -> str:
  """The image of example ``key`` ("<camera>/<sequence>/<frame>")."""
  return os.path.join(root, split, "images", *key.split("/")) + IMAGE_SUFFIX


class Reader:
  """ASD split reader: ``len``, ``names``, ``keys``, ``load(i)``, ``load_image(i)``.

  Args:
    root: the data set folder (holding ``<split>/images`` and
      ``<split>/amodal_panoptic_seg``).
    split: a folder under ``root`` ("train", "val" or "test").
    image_size: (height, width) of what ``load`` returns; files of another
      size are resized (image bilinear, labels nearest). ``None``: the size
      of the first image, no resizing.
  """

  def __init__(self, root: str, split: str, image_size=DEFAULT_SIZE):
    self.root, self.split = root, split
    self.gt_dir = os.path.join(root, split, "amodal_panoptic_seg")
    if fileio.names(self.gt_dir) is None:
      raise common.DataError(f"missing AmodalSynthDrive label folder {self.gt_dir} "
                             "(expected <root>/<split>/amodal_panoptic_seg/<camera>/<sequence>/)")
    pngs = fileio.glob(self.gt_dir, LABEL_GLOB)
    if not pngs:
      raise common.DataError(f"no {LABEL_GLOB} files under {self.gt_dir}")
    self._items = []
    files = fileio.Listing()
    for png in pngs:
      key = "/".join(png.split("/")[-3:])[:-len(AMPANO_SUFFIX)]  # camera/sequence/frame
      item = dict(key=key, ampano=png, json=png[:-len(AMPANO_SUFFIX)] + AMPANO_JSON_SUFFIX,
                  image=image_path(root, split, key))
      for what in ("image", "json"):
        if not files.has(item[what]):
          raise common.DataError(f"{png} has no {what} file {item[what]}")
      self._items.append(item)
    self.keys = [it["key"] for it in self._items]
    self.names = list(self.keys)
    self.categories = [dict(c) for c in CATEGORIES]
    if image_size is None:
      image_size = common.read_png_size(self._items[0]["image"], "AmodalSynthDrive image")
    self.image_size = tuple(int(v) for v in image_size)

  def __len__(self) -> int:
    return len(self._items)

  def load_image(self, i: int) -> np.ndarray:
    """uint8 [H,W,3] RGB image of example ``i`` at ``image_size``."""
    path = self._items[i]["image"]
    return common.fit_rgb(common.read_rgb(path, "AmodalSynthDrive image", None), self.image_size)

  def load(self, i: int) -> dict:
    """Image and ground truth of example ``i`` (keys documented in ``layouts/__init__``)."""
    it = self._items[i]
    image = common.read_rgb(it["image"], "AmodalSynthDrive image", None)
    native = image.shape[:2]
    image = common.fit_rgb(image, self.image_size)
    ids = read_ampano(it["ampano"])
    common.check_size(ids, it["ampano"], "amodal panoptic PNG", native)
    info = read_info(it["json"])
    pan, segments, amodal = segments_from_ampano(ids, info, ASD_TO_TRAIN, it["ampano"],
                                                 it["json"])
    if native != self.image_size:
      pan = resize_nearest(pan, self.image_size)
      amodal = {k: resize_nearest(v, self.image_size) for k, v in amodal.items()}
      for s in segments:
        s["area"] = int((pan == s["id"]).sum())
      segments = [s for s in segments if s["area"]]
    gt = gt_from_segments(pan, segments, amodal)
    # Instance ids as the KITTI-360 APS reader derives them: thing ids as they
    # are, stuff and crowd pixels their class id, void 255.
    inst = np.full(pan.shape, labels.IGNORE, np.int32)
    for s in segments:
      keep = labels.is_thing(s["category_id"]) and not s["iscrowd"]
      inst[pan == s["id"]] = s["id"] if keep else s["category_id"]
    return dict(name=it["key"], image=image, semantic=gt["semantic"], panoptic=pan,
                segments=segments, categories=self.categories, instance_ids=inst,
                modal=gt["modal"], amodal=gt["amodal"])
