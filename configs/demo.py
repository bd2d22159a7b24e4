r"""Demo: synthpass data → semantic source model → source-val and target-val mIoU.

The embedded default: everything on a 2-core CPU in about 10 minutes.

  python -m unlock_jax.main --config configs/demo.py --workdir /tmp/unlock_demo

Generates a small synthetic set (pinhole source domain in the KITTI-360 APS
layout, 360° target panoramas in the BlendPASS layout, scale 0.25), trains a
small AmodalPASS (deformable MiT + SimPool, DAFormer-SimPool head) on source
crops, and evaluates on whole source-val images and whole target panoramas.
Expected (2-core CPU; see README for the measured run): source-val mIoU ≥ 50%,
target-val mIoU clearly lower (the domain gap UNLOCK closes).
"""
import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=600, scale=0.25, runlocal=False)
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

  m = c.model
  m.backbone = "custom"
  m.mit = dict(dims=(32, 64, 128, 160), depths=(1, 1, 2, 1), heads=(1, 2, 4, 5),
               sr_ratios=(8, 4, 2, 1))
  m.head_embed_dims = 32
  m.head_channels = 64
  m.fpn_channels = 64
  m.drop_path_rate = 0.05

  c.optim.lr = 6e-4  # small model, short schedule
  c.total_steps = arg.steps
  c.log_every = 50
  c.checkpoint_every = 500
  c.progress_every_secs = 20.0

  root = common.SYNTH_ROOT
  c.evals = ml_collections.ConfigDict(dict(
      source_val=common.semantic_eval("kitti360aps", root + "/KITTI360_APS", "val", src),
      target_val=common.semantic_eval("blendpass", root + "/BlendPASS", "val", tgt),
  ))

  if arg.runlocal:
    c.synthpass.num_source = dict(train=16, val=4)
    c.synthpass.num_target = dict(train=4, val=4)
    c.total_steps = 4
    c.checkpoint_every = 2
  return c
