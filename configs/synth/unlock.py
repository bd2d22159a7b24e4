r"""UNLOCK end to end on synthpass, CPU-sized: source model → predict → OPLL → ADCL pool → adapt → evaluate.

  python -m unlock_jax.main --config configs/synth/unlock.py --workdir /tmp/synth_unlock

Stages 0-3 as ``configs/synth/pseudo_labels.py``; then ``adapt`` (student +
EMA teacher from the source model, OPLL labels with the ADCL paste on
100x100 crops of the 100x512 target panoramas, ClassMix self-training,
the parameter regulariser, AdamW in the reference's five groups) and
``evaluate`` of ``source_only`` (tau 0.95/0.95) and ``UNLOCK`` (tau
0.55/0.5) side by side on target val. Sizes scale with the images: crops
are full-height squares as the reference's 400x400 of 400x2048; the paste's
25-pixel visibility rule is scaled by scale² (2 px at 0.25); the ignored
teacher rows scale with the crop height (3 top / 22 bottom at 100 rows).
Learning rate: the reference's base 1e-7 with the decode head x1e4 (peak
1e-3) etc.; ``adapt_steps`` iterations instead of 10,000.
Not measured with the current code; the last measurement (older code,
source model at 1000 steps, shift 1.0) is in docs/history.md. The demo
(configs/demo.py) is the measured run of the whole method (README,
"Results on synthpass").
To adapt an existing source model: ``--config.stage=predict,opll,adcl_pool,adapt,evaluate
--config.predict.checkpoint=DIR``.
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
