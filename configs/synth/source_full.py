r"""Full AmodalPASS source model (semantic + modal + amodal Mask R-CNN) on synthpass, CPU-sized.

  python -m unlock_jax.main --config configs/synth/source_full.py --workdir /tmp/synth_full

Generates the demo-sized synthpass set (or reuses it), trains all heads on
pinhole source crops, and evaluates the five OASS metrics (mIoU, mPQ, mAP,
mAAP, mAPQ) on whole source-val images and target panoramas, writing pictures
to <workdir>/pictures. Source-only thresholds (tau 0.95/0.95) as the
reference's Testing_sourceonly.py. Measured numbers: README, "Source model".
"""
import ml_collections

from configs import common
from unlock_jax.models.rcnn import branch as rcnn_branch


def oass_eval(layout, root, split, size, scale, num_pictures):
  c = common.semantic_eval(layout, root, split, size, batch_size=4)
  c.type = "oass"
  c.tau_m, c.tau_a = 0.95, 0.95
  # Pixel thresholds of the reference are for 2048x400 panoramas: scale them.
  c.stuff_area = max(1, round(2048 * scale * scale))
  c.min_region_size = max(1, round(100 * scale * scale))
  c.one_to_one = False
  c.num_pictures = num_pictures
  c.pictures_dir = "{workdir}/pictures"
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=2000, scale=0.25, runlocal=False)
  c = common.base()
  c.stage = "generate,train_source,evaluate"
  s = arg.scale
  src = (round(376 * s), round(1408 * s))
  tgt = (round(400 * s), round(2048 * s))
  c.synthpass.scale = s
  c.synthpass.num_source = dict(train=300, val=40)
  c.synthpass.num_target = dict(train=60, val=40)
  c.data.source.image_size = src
  c.data.target.image_size = tgt

  c.input.batch_size = 8
  c.input.crop_size = (src[0], src[0])
  c.input.max_instances = 24

  m = c.model
  m.backbone = "custom"
  m.mit = dict(dims=(32, 64, 128, 160), depths=(1, 1, 2, 1), heads=(1, 2, 4, 5),
               sr_ratios=(8, 4, 2, 1))
  m.head_embed_dims = 32
  m.head_channels = 64
  m.fpn_channels = 64
  m.drop_path_rate = 0.05
  m.instance_heads = True
  r = rcnn_branch.default_rcnn_config()
  r.feat_channels = 64
  r.fc_dim = 256
  r.conv_dim = 64
  r.rpn_samples = 128
  r.nms_pre_train, r.max_proposals_train = 500, 300
  r.nms_pre_test, r.max_proposals_test = 500, 300
  r.rcnn_samples = 128
  r.max_dets = 50
  m.rcnn = r

  c.optim.lr = 6e-4
  c.total_steps = arg.steps
  c.log_every = 50
  c.checkpoint_every = 500
  c.progress_every_secs = 30.0

  root = common.SYNTH_ROOT
  c.evals = ml_collections.ConfigDict(dict(
      source_val=oass_eval("kitti360aps", root + "/KITTI360_APS", "val", src, s, 0),
      target_val=oass_eval("blendpass", root + "/BlendPASS", "val", tgt, s, 4),
  ))
  if arg.runlocal:
    c.synthpass.num_source = dict(train=16, val=4)
    c.synthpass.num_target = dict(train=4, val=4)
    c.total_steps = 4
    c.checkpoint_every = 2
  return c
