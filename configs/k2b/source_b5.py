r"""Source model on KITTI-360 APS at B5 (the reference's architecture and schedule).

  python -m unlock_jax.main --config configs/k2b/source_b5.py \
      --config.data.source.root=/data/APS_KITTI_360 \
      --config.data.target.root=/data/BlendPASS --workdir gs://bucket/k2b_source

AmodalPASS-B5 (deformable MiT-B5 + SimPool, DAFormer-SimPool head, FPN, modal
and amodal Mask R-CNN), KITTI-360 APS resized to 1408x376, 376x376 crops with
cat_max_ratio 0.75, flip 0.5; AdamW 6e-5, lr x10 on the FPN neck and every
head (decode, RPN and RoI of both branches), no decay on norms (common.py,
constants.SOURCE_GROUPS), poly(1.0), 40k iterations (the reference's run name
``adamw_6e-05_pmTrue_poly10warm_1x1_40k``; batch 2 per GPU in mmdet defaults,
here a global batch of 8). Evaluated on the 100 BlendPASS val panoramas with
source-only thresholds (0.95/0.95). No released numbers exist for this model
(docs/reference_differences.md, "What the reference does
not publish"), so none are promised here. Initialise the
backbone from an ImageNet MiT-B5 conversion with
``--config.init_checkpoint=<tools/convert_torch output>`` where available.
"""
import ml_collections

from configs import common
from unlock_jax import constants


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = common.base()
  c.stage = "train_source,evaluate"
  c.data = common.data_section("/data/APS_KITTI_360", "/data/BlendPASS",
                               (376, 1408), (400, 2048))
  c.input.batch_size = 8
  c.input.crop_size = (376, 376)
  c.input.max_instances = 64
  c.input.num_workers = 8
  c.model.instance_heads = True  # default_model_config(): B5 + reference R-CNN
  c.total_steps = 40_000
  c.checkpoint_every = 2000

  # Follows --config.data.target.* (root, layout, size) unless set itself.
  c.evals = ml_collections.ConfigDict(dict(target_val=common.domain_eval(
      c.data.target, "val", common.oass_eval, tau=constants.TAU_SOURCE_ONLY,
      num_pictures=8, batch_size=8)))

  if arg.runlocal:
    c.total_steps = 10
    c.input.batch_size = 2
  return c
