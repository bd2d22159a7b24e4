r"""Demo: synthpass data → semantic source model → source-val and target-val mIoU.

The embedded default: everything on a 2-core CPU in about 10 minutes.

  python -m unlock_jax.main --config configs/demo.py --workdir /tmp/unlock_demo

Generates a small synthetic set (pinhole source domain in the KITTI-360 APS
layout, 360° target panoramas in the BlendPASS layout, scale 0.25), trains a
small AmodalPASS (deformable MiT + SimPool, DAFormer-SimPool head) on source
crops, and evaluates on whole source-val images and whole target panoramas.
Measured (2-core CPU, README "What the demo shows"): source-val mIoU 70.0,
target-val mIoU 27.7 (the domain gap UNLOCK closes), 4.5 min.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=600, scale=0.25, runlocal=False)
  c = common.base()
  c.stage = "generate,train_source,evaluate"

  src, tgt = common.use_synthpass(c, arg.scale, source=(300, 40), target=(60, 40))
  c.input.batch_size = 8
  common.small_model(c.model)

  c.optim.lr = 6e-4  # small model, short schedule
  c.total_steps = arg.steps
  c.log_every = 50
  c.checkpoint_every = 500
  c.progress_every_secs = 20.0
  c.evals = common.synth_evals(src, tgt)

  if arg.runlocal:
    common.runlocal_synthpass(c)
  return c
