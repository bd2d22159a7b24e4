"""The network's configuration defaults as plain data (no JAX): configs start from these.

``default_model_config()`` is the reference's AmodalPASS-B5 with its two
Mask R-CNN branches (``default_rcnn_config()``); ``models/amodalpass.py``
builds the network from such a ConfigDict.
"""
import ml_collections


def default_rcnn_config() -> ml_collections.ConfigDict:
  """Reference settings (``maskrcnn_sepaspp_amodalpassb5.py`` L47-197)."""
  c = ml_collections.ConfigDict()
  c.num_classes = 7
  c.strides = (4, 8, 16, 32, 64)
  c.anchor_scales = (8.0,)
  c.anchor_ratios = (0.5, 1.0, 2.0)
  c.feat_channels = 256          # RPN conv width
  # RPN training.
  c.rpn_samples = 256
  c.rpn_pos_fraction = 0.5
  c.rpn_pos_iou = 0.7
  c.rpn_neg_iou = 0.3
  c.rpn_min_pos_iou = 0.3
  # Proposals.
  c.nms_pre_train = 2000         # per level
  c.max_proposals_train = 1000
  c.nms_pre_test = 1000
  c.max_proposals_test = 1000
  c.rpn_nms = 0.7
  # R-CNN training.
  c.rcnn_samples = 512
  c.rcnn_pos_fraction = 0.25
  c.rcnn_iou = 0.5               # pos = neg = min_pos IoU
  # RoI features.
  c.roi_size = 7
  c.mask_roi_size = 14
  c.mask_size = 28
  c.roi_sampling_ratio = 0       # mmcv adaptive count ...
  # ... exact (0: each RoI's footprint in a static cell budget), or capped
  # at this many sample slots per axis (2: unlock_jax's earlier default;
  # roi_align.py).
  c.roi_max_samples = 0
  # Exact RoIAlign on this many RoIs at a time (0: all at once): memory only
  # (README "Running at the paper's size"); rounding may differ, not the value.
  c.roi_chunk = 0
  c.finest_scale = 56.0
  c.fc_dim = 1024
  c.conv_dim = 256
  # Mask targets / loss.
  c.reference_mask_ignore_bug = False
  # "full": a cell is ignored only if all of it is ignore (reference intent);
  # "threshold": ignored if its ignore fraction > mask_ignore_frac (0: any).
  c.mask_ignore_rule = "full"
  c.mask_ignore_frac = 0.0
  c.mask_avg_non_ignore = False  # mmdet default: ignored cells in denominator
  # Test.
  c.score_thr = 0.05
  c.test_nms = 0.5
  c.max_dets = 100
  c.mask_thr = 0.5
  c.paste_chunk = 10
  return c


def tiny_rcnn_config() -> ml_collections.ConfigDict:
  """Small widths and budgets for CPU tests."""
  c = default_rcnn_config()
  c.feat_channels = 16
  c.rpn_samples = 32
  c.nms_pre_train = 64
  c.max_proposals_train = 48
  c.nms_pre_test = 64
  c.max_proposals_test = 48
  c.rcnn_samples = 32
  c.fc_dim = 32
  c.conv_dim = 16
  c.max_dets = 10
  c.paste_chunk = 5
  return c


def default_model_config() -> ml_collections.ConfigDict:
  """The reference AmodalPASS-B5 semantic path (`maskrcnn_sepaspp_amodalpassb5`).

  `instance_heads` is off here: the R-CNN branches are configured in `rcnn`
  and switched on by the experiment configs that train them.
  """
  cfg = ml_collections.ConfigDict()
  cfg.backbone = "mit_b5"
  # Only read when backbone == "custom"; filled with the B5 sizes for clarity.
  cfg.mit = ml_collections.ConfigDict(dict(
      dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), heads=(1, 2, 5, 8),
      sr_ratios=(8, 4, 2, 1)))
  cfg.deformable = True
  cfg.simpool = True
  cfg.drop_path_rate = 0.1
  cfg.norm_eps = 1e-6
  cfg.deform_impl = "auto"
  # Memory and compile time (docs: README "Running at the paper's size"):
  # rematerialisation policy of the backbone blocks and of the decode head's
  # fuse layer ("none", "full", "dots"), and one nn.scan per backbone stage
  # (stacked block parameters; mit.stack_blocks converts checkpoints).
  cfg.remat = "none"
  cfg.remat_head = "none"
  cfg.scan_blocks = False
  cfg.head_embed_dims = 256
  cfg.head_channels = 256
  cfg.dilations = (1, 6, 12, 18)
  cfg.dropout = 0.1
  cfg.num_classes = 18
  cfg.fpn_channels = 256
  cfg.fpn_outs = 5
  cfg.compute_dtype = "float32"
  cfg.instance_heads = False
  cfg.rcnn = default_rcnn_config()
  return cfg


def tiny_model_config() -> ml_collections.ConfigDict:
  """A tiny network with every feature on (deformable, SimPool), for CPU tests."""
  cfg = default_model_config()
  cfg.backbone = "custom"
  cfg.mit = ml_collections.ConfigDict(dict(
      dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), heads=(1, 2, 2, 4),
      sr_ratios=(8, 4, 2, 1)))
  cfg.head_embed_dims = 16
  cfg.head_channels = 16
  cfg.fpn_channels = 16
  cfg.rcnn = tiny_rcnn_config()
  return cfg
