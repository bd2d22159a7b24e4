"""CPU-sized settings shared by the synthpass experiments that run every head.

Sizes scale with the images (``scale`` w.r.t. the real 2048x400 panoramas):
synthpass at 0.25 has median object boxes of ~11 px, which no 32-px
reference anchor matches at IoU >= 0.3, so the anchors and the RoI level rule
scale with it; crops, the paste's visibility rule and the teacher's ignored
rows follow the reference's 400x400 of 400x2048.
"""
import os

import ml_collections

# The committed demo source model (configs/demo.py says how to regenerate it).
DEMO_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "assets", "demo_source")


def rcnn(r: ml_collections.ConfigDict, scale: float, *, feat_channels: int = 64,
         fc_dim: int = 256, conv_dim: int = 64) -> None:
  """Narrow R-CNN heads, fewer samples and proposals, anchors scaled with the images."""
  r.feat_channels = feat_channels
  r.fc_dim = fc_dim
  r.conv_dim = conv_dim
  r.rpn_samples = 128
  r.nms_pre_train, r.max_proposals_train = 500, 300
  r.nms_pre_test, r.max_proposals_test = 500, 300
  r.rcnn_samples = 128
  r.max_dets = 50
  r.anchor_scales = (8.0 * scale,)
  r.finest_scale = 56.0 * scale


def adapt(c: ml_collections.ConfigDict, target_size, scale: float, steps: int) -> None:
  """Stage 4 on full-height square crops of the target panoramas.

  The reference's base lr 1e-7 with its group multipliers (decode head x1e4,
  so a peak of 1e-3) is kept; only the step count shrinks. The paste's
  25-pixel visibility rule scales with scale² (2 px at 0.25); the ignored
  teacher rows scale with the crop height (3 top / 22 bottom at 100 rows).
  """
  a = c.adapt
  a.total_steps = steps
  a.batch_size = 4
  a.crop_size = (target_size[0], target_size[0])
  a.max_instances = c.input.max_instances
  a.paste.min_visible = max(1, round(25 * scale ** 2))
  a.log_every = 25
  a.checkpoint_every = 100
  a.eval_every = 0
