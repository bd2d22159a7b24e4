r"""Stages 1-3 of UNLOCK on the real BlendPASS train set with a B5 source model.

  python -m unlock_jax.main --config configs/k2b/pseudo_labels.py \
      --config.data.target.root=/data/BlendPASS \
      --config.predict.checkpoint=/ckpt/k2b_source/train_source/checkpoints \
      --workdir /runs/k2b_unlock

The checkpoint: ``configs/k2b/source_b5.py``'s ``train_source`` output or a
converted reference checkpoint (``python -m unlock_jax.tools.convert_torch``).
"""
from configs import common
from configs.k2b import source_b5


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = source_b5.get_config("runlocal" if arg.runlocal else None)
  c.stage = "predict,opll,adcl_pool"
  c.predict.batch_size = 8  # one 24 GB+ accelerator; add processes for a pod (launch/)
  c.opll.batch_size = 8
  c.opll.num_pictures = 16
  return c
