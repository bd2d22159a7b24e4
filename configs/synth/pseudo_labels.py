r"""Stages 0-3 of UNLOCK on synthpass, CPU-sized: source model → predictions → OPLL → ADCL pool.

  python -m unlock_jax.main --config configs/synth/pseudo_labels.py --workdir /tmp/synth_pl

With a trained source model, run only the later stages:
``--config.stage=predict,opll,adcl_pool --config.predict.checkpoint=DIR``
(README, "Pseudo-labels").
"""
from configs.synth import source_full


def get_config(arg=None):
  c = source_full.get_config(arg)
  c.stage = "generate,train_source,predict,opll,adcl_pool"
  c.predict.batch_size = 4
  c.opll.batch_size = 4
  c.opll.num_pictures = 6
  return c
