r"""The smallest end-to-end configuration: CPU smoke tests and debugging.

  python -m unlock_jax.main --config configs/synth/tiny.py --workdir /tmp/tiny

Generates a handful of scenes at scale 0.125, trains a few-thousand-parameter
AmodalPASS for a few steps and evaluates it. Numbers are meaningless; the point
is that every stage runs in well under a minute of compute. ``full=1`` adds
the modal and amodal Mask R-CNN branches, so the offline stages of the method
run too:

  python -m unlock_jax.main --config configs/synth/tiny.py:full=1 --workdir /tmp/tiny \
      --config.stage=generate,train_source,predict,opll,adcl_pool
"""
from configs import common
from configs import default
from unlock_jax.models import defaults


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=4, scale=0.125, batch=4, full=False)
  c = default.get_config()
  c.stage = "generate,train_source,evaluate"
  common.use_synthpass(c, arg.scale, source=(6, 3), target=(4, 3))
  c.input.batch_size = arg.batch
  c.input.max_instances = 8
  c.model = defaults.tiny_model_config()
  c.model.instance_heads = arg.full
  c.predict.batch_size = 4  # divisible by the tests' 4 fake devices
  c.opll.batch_size = 4
  c.opll.num_pictures = 2
  c.opll.state_every = 2
  a = c.adapt
  # The source's full-height square, for every method: UDA mixes source
  # crops into target crops of the same size.
  a.total_steps, a.batch_size, a.crop_size = arg.steps, 4, tuple(c.input.crop_size)
  a.max_instances, a.log_every, a.checkpoint_every = 8, 1, 2
  a.paste.num_candidates, a.paste.min_visible = 20, 4
  a.optim.lr = 1e-6
  c.optim.lr = 1e-3
  c.total_steps = arg.steps
  c.log_every = 1
  c.checkpoint_every = 2
  c.progress_every_secs = 5.0
  c.evals = common.synth_evals(c.data)
  return c
