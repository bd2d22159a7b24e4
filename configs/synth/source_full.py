r"""Full AmodalPASS source model (semantic + modal + amodal Mask R-CNN) on synthpass, CPU-sized.

  python -m unlock_jax.main --config configs/synth/source_full.py --workdir /tmp/synth_full

Generates the demo-sized synthpass set (or reuses it), trains all heads and
evaluates the five OASS metrics on source val and target val with pictures
(README, "Source model with all heads").
"""
from configs import common
from configs import cpu
from configs import default


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=1200, scale=0.25, runlocal=False)
  c = default.get_config()
  c.stage = "generate,train_source,evaluate"
  common.use_synthpass(c, arg.scale, source=(300, 40), target=(60, 40))
  c.input.batch_size = 4
  c.input.max_instances = 24

  m = c.model
  common.small_model(m)
  m.instance_heads = True
  cpu.rcnn(m.rcnn, arg.scale)

  c.optim.lr = 6e-4
  # x10 on the decode head only: at this 10x base lr the reference's x10 on
  # the neck and R-CNN heads collapses instance AP (README, "Source model
  # with all heads"); the R-CNN heads keep the reference's head lr, 6e-4.
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
