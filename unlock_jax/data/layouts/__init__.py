"""Readers of the real data sets' on-disk layouts (KITTI-360 APS, BlendPASS, AmodalSynthDrive), one structure.

``Reader(root, split, image_size=(H, W) | None)`` has ``len``, ``names``,
``load_image(i)`` and ``load(i)``, which returns a numpy dict:
  name str; image uint8 [H,W,3] RGB; semantic uint8 [H,W] (255 ignore);
  panoptic int32 [H,W]; segments [{id, category_id, iscrowd, area, amodal_id}];
  categories (from the JSON); instance_ids int32 [H,W];
  modal [{mask uint8 0/1, category_id 11..17, seg_id}];
  amodal [{mask, category_id, seg_id, amodal_id}] (aligned with modal).
BlendPASS train (unlabelled) gives only name and image.
"""
from unlock_jax import registry
from unlock_jax.data.layouts.common import boxes_from_masks
from unlock_jax.data.layouts.common import DataError
from unlock_jax.data.layouts.common import to_padded

# ``config.data.<domain>.layout`` -> the module that reads it (its ``Reader``),
# imported on first use. The TFDS builders (data/tfds/builders.py) and
# check_data's checks are keyed by the same names.
LAYOUTS = registry.Registry("data layout", {
    "kitti360aps": "unlock_jax.data.layouts.kitti360aps",
    "blendpass": "unlock_jax.data.layouts.blendpass",
    "amodalsynthdrive": "unlock_jax.data.layouts.amodalsynthdrive",
})

# The layouts whose images are full 360° panoramas (their first and last
# columns are neighbours): their evaluators run in config.seam's mode. Every
# other layout holds pinhole images, always predicted flat.
PANORAMAS = ("blendpass",)

__all__ = ["LAYOUTS", "PANORAMAS", "boxes_from_masks", "DataError", "to_padded"]
