r"""Source model on AmodalSynthDrive at B5, for the ASD→BlendPASS setting.

  python -m unlock_jax.main --config configs/asd2b/source_b5.py \
      --config.data.source.root=/data/AmodalSynthDrive \
      --config.data.target.root=/data/BlendPASS_ASD --workdir gs://bucket/asd2b_source

The paper's synthetic-to-real setting. The reference releases no ASD config
(only the class list, docs/method.md §2), so this mirrors
configs/k2b/source_b5.py (architecture, optimiser, 40k steps, batch 8,
cat_max_ratio 0.75, flip) with these choices of ours, none from the reference:
ASD's 1920x1080 frames (all four cameras of the train split) are read at half
size, 960x540, and cropped to full-height 540x540 squares, as the K2B recipe
crops KITTI-360 APS to its full height. The target is the ASD-aligned BlendPASS
copy (README "Download Converted BlendPASS Datasets"), whose labels are in
ASD's 18-class space (person, rider, car, truck, bus, motor, bike); the
blendpass reader expects its K2B file names (``Panoptic/val_trainId_K2B.json``,
``Instance/val_K2B/``), which that download was not checked to use.
"""
from configs.k2b import source_b5 as k2b_source

ASD_SIZE = (540, 960)  # half of ASD's 1080x1920


def get_config(arg=None):
  c = k2b_source.get_config(arg)  # the K2B recipe; only the source domain differs
  c.data.source.update(layout="amodalsynthdrive", root="/data/AmodalSynthDrive",
                       image_size=ASD_SIZE)
  c.data.target.root = "/data/BlendPASS_ASD"
  c.input.crop_size = (ASD_SIZE[0], ASD_SIZE[0])
  return c
