r"""Full AmodalPASS source model (semantic + modal + amodal Mask R-CNN) on synthpass, CPU-sized.

  python -m unlock_jax.main --config configs/synth/source_full.py --workdir /tmp/synth_full

Generates the demo-sized synthpass set (or reuses it), trains all heads on
pinhole source crops, and evaluates the five OASS metrics (mIoU, mPQ, mAP,
mAAP, mAPQ) on whole source-val images and target panoramas, writing pictures
to <workdir>/pictures. Source-only thresholds (tau 0.95/0.95) as the
reference's Testing_sourceonly.py. Measured (1200 steps, 39-59 min on the 2
cores beside other runs; README, "Source model with all heads"):
  source val  mIoU 72.5  mPQ 40.1  mAP 19.9  mAAP 22.6  mAPQ 39.0  (AP50 51.4)
  target val  mIoU 31.3  mPQ 19.1  mAP  3.4  mAAP  3.5  mAPQ 18.8  (AP50  9.1)

Optimiser groups deliberately differ from the reference's source recipe
(``constants.SOURCE_GROUPS``: neck and every head x10): this config's base lr
is 6e-4, 10x the reference's 6e-5, so the model learns in 1200 steps; with
the reference's multipliers on top the RPN/RoI heads train at 6e-3, 10x the
reference's head lr, and the instance metrics collapse (measured with the
same code and seed: source val mAP 2.3, mAAP 6.1, mPQ 31.0, mIoU 71.6).
Here only the decode head gets x10 (6e-3) and the R-CNN heads and neck keep
the base 6e-4, the reference's head lr; norms have no decay as in the
reference.
"""
from configs import common
from configs import cpu


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=1200, scale=0.25, runlocal=False)
  c = common.base()
  c.stage = "generate,train_source,evaluate"
  common.use_synthpass(c, arg.scale, source=(300, 40), target=(60, 40))
  c.input.batch_size = 4
  c.input.max_instances = 24

  m = c.model
  common.small_model(m)
  m.instance_heads = True
  cpu.rcnn(m.rcnn, arg.scale)

  c.optim.lr = 6e-4
  # x10 on the decode head only: see the docstring.
  c.optim.groups = (("decode_head", "decode_head", 10.0, 1.0), ("norm", "norm", 1.0, 0.0))
  c.total_steps = arg.steps
  c.log_every = 50
  c.checkpoint_every = 500
  c.progress_every_secs = 30.0

  c.evals = common.synth_evals(c.data, common.oass_eval, scale=arg.scale,
                              tau=(0.95, 0.95))
  c.evals.target_val.num_pictures = 4

  if arg.runlocal:
    common.runlocal_synthpass(c)
  return c
