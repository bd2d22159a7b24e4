r"""The smallest end-to-end configuration: CPU smoke tests and debugging.

  python -m unlock_jax.main --config configs/synth/tiny.py --workdir /tmp/tiny

Generates a handful of scenes at scale 0.125, trains a few-thousand-parameter
AmodalPASS for a few steps and evaluates it. Numbers are meaningless; the point
is that every stage runs in well under a minute of compute.
"""
import ml_collections

from configs import common
from unlock_jax.models import amodalpass


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=4, scale=0.125, batch=4)
  c = common.base()
  c.stage = "generate,train_source,evaluate"
  s = arg.scale
  src = (round(376 * s), round(1408 * s))
  tgt = (round(400 * s), round(2048 * s))
  c.synthpass.scale = s
  c.synthpass.num_source = dict(train=6, val=3)
  c.synthpass.num_target = dict(train=4, val=3)
  c.data.source.image_size = src
  c.data.target.image_size = tgt
  c.input.batch_size = arg.batch
  c.input.crop_size = (src[0], src[0])
  c.input.max_instances = 8
  c.model = amodalpass.tiny_model_config()
  c.optim.lr = 1e-3
  c.total_steps = arg.steps
  c.log_every = 1
  c.checkpoint_every = 2
  c.progress_every_secs = 5.0
  root = common.SYNTH_ROOT
  c.evals = ml_collections.ConfigDict(dict(
      source_val=common.semantic_eval("kitti360aps", root + "/KITTI360_APS", "val", src),
      target_val=common.semantic_eval("blendpass", root + "/BlendPASS", "val", tgt),
  ))
  return c
