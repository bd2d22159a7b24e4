r"""UNLOCK end to end on synthpass, CPU-sized: source model → predict → OPLL → ADCL pool → adapt → evaluate.

  python -m unlock_jax.main --config configs/synth/unlock.py --workdir /tmp/synth_unlock

To adapt an existing source model: ``--config.stage=predict,opll,adcl_pool,adapt,evaluate
--config.predict.checkpoint=DIR``. The demo (configs/demo.py) is the measured
run of the whole method.
"""
import ml_collections

from configs import common
from configs import cpu
from configs.synth import source_full


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=1200, scale=0.25, adapt_steps=400,
                         runlocal=False)
  c = source_full.get_config(f"steps={arg.steps},scale={arg.scale}"
                             + (",runlocal" if arg.runlocal else ""))
  c.stage = "generate,train_source,predict,opll,adcl_pool,adapt,evaluate"
  cpu.adapt(c, c.data.target.image_size, arg.scale, arg.adapt_steps)
  c.evaluate.runs = ml_collections.ConfigDict(dict(
      source_only=dict(checkpoint="{workdir}/train_source/checkpoints", tau=(0.95, 0.95)),
      UNLOCK=dict(checkpoint="{workdir}/adapt/checkpoints", tau=(0.55, 0.5))))
  c.evals = ml_collections.ConfigDict(dict(target_val=c.evals.target_val))
  c.evals.target_val.num_pictures = 0
  if arg.runlocal:
    c.adapt.total_steps = 4
  return c
