r"""Stages 1-3 of UNLOCK on the real BlendPASS train set with a B5 source model.

  python -m unlock_jax.main --config configs/k2b/pseudo_labels.py \
      --config.data.target.root=/data/BlendPASS \
      --config.predict.checkpoint=/ckpt/k2b_source/train_source/checkpoints \
      --workdir /runs/k2b_unlock

Predicts the 2,000 unlabelled 2048x400 BlendPASS train panoramas whole (no
crops, no flip; the store keeps about 0.2-0.5 MB per panorama where the
reference writes 59 MB), then OPLL with the reference's (p, t) = semantic
(0.8, 0.5), modal (0.3, 0.5), amodal (0.5, 0.3) and the ADCL pool with
(0.1, 0.95). The checkpoint is the ``train_source`` output of
``configs/k2b/source_b5.py`` or a converted reference checkpoint
(``python -m unlock_jax.tools.convert_torch``). BlendPASS has no train
ground truth, so no quality report is written. Batch 8 is sized for one
24 GB+ accelerator; add processes for a pod (launch/).
"""
from configs import common
from configs.k2b import source_b5


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = source_b5.get_config("runlocal" if arg.runlocal else None)
  c.stage = "predict,opll,adcl_pool"
  c.predict.batch_size = 8
  c.opll.batch_size = 8
  c.opll.num_pictures = 16
  return c
