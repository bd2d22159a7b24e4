r"""Source model on AmodalSynthDrive at B5, for the ASD→BlendPASS setting.

  python -m unlock_jax.main --config configs/asd2b/source_b5.py \
      --config.data.source.root=/data/AmodalSynthDrive \
      --config.data.target.root=/data/BlendPASS_ASD --workdir gs://bucket/asd2b_source

configs/k2b/source_b5.py with the source domain swapped (the reference
releases no ASD config; docs/method.md §2); the target is the ASD-aligned
BlendPASS copy.
"""
from configs.k2b import source_b5 as k2b_source

# Our choice (none from the reference): ASD's 1080x1920 frames, all four
# cameras of the train split, read at half size and cropped to full-height
# squares, as the K2B recipe crops KITTI-360 APS to its full height.
ASD_SIZE = (540, 960)


def get_config(arg=None):
  c = k2b_source.get_config(arg)  # the K2B recipe; only the source domain differs
  c.data.source.update(layout="amodalsynthdrive", root="/data/AmodalSynthDrive",
                       image_size=ASD_SIZE)
  # Labels in ASD's class space; the blendpass reader expects the K2B file names
  # (Panoptic/val_trainId_K2B.json, Instance/val_K2B/), unchecked for this copy.
  c.data.target.root = "/data/BlendPASS_ASD"
  c.input.crop_size = (ASD_SIZE[0], ASD_SIZE[0])
  return c
