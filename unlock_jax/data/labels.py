"""The 18-class label space shared by KITTI-360 APS and BlendPASS (K2B).

Train id == id for all classes (docs/formats.md §1). Thing classes
are semantic ids 11..17; the instance heads use 0..6 (``id - 11``). Panoptic and
instance ids are ``class * LABEL_DIVISOR + k`` with k >= 1.
"""
import numpy as np

NUM_CLASSES = 18
IGNORE = 255
LABEL_DIVISOR = 1000
THING_IDS = tuple(range(11, 18))
FIRST_THING = 11
NUM_THINGS = len(THING_IDS)
STUFF_IDS = tuple(range(0, 11))

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky",
    "pedestrians", "cyclists", "car", "truck", "other vehicles", "van",
    "two-wheeler",
)
assert len(CLASS_NAMES) == NUM_CLASSES

# Cityscapes-like colours for pictures; index = train id, row 255 = black.
PALETTE = np.zeros((256, 3), np.uint8)
PALETTE[:NUM_CLASSES] = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180),
    (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (119, 11, 32),
]


def is_thing(class_id) -> np.ndarray:
  """True for semantic ids 11..17 (works on scalars and arrays)."""
  c = np.asarray(class_id)
  return (c >= FIRST_THING) & (c < FIRST_THING + NUM_THINGS)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
  """Panoptic PNG colour → id: ``R + 256 G + 256² B`` (uint8 HxWx3 → int32)."""
  rgb = rgb.astype(np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  """Inverse of :func:`rgb2id` (ids in [0, 2**24)): the three low little-endian bytes."""
  le = np.asarray(ids).astype("<u4")[..., None].view(np.uint8)  # [..., 4]: 20x faster than % and //
  return np.ascontiguousarray(le[..., :3])
