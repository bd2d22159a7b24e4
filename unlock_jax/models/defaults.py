"""The network's configuration defaults as plain data (no JAX): configs start from these.

``default_model_config()`` is the reference's AmodalPASS-B5 with its two
Mask R-CNN branches (``default_rcnn_config()``); ``models/amodalpass.py``
builds the network from such a ConfigDict. ``default_seam_config(width)`` is
the inference mode of full 360° panoramas (``config.seam``, read by
``models/predict.py``), checked by :func:`check_seam`.
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


# How the network sees the 360° seam of a full panorama (models/predict.py):
# "flat" zero-pads both ends (the reference); "circular" wraps every spatial
# op's horizontal padding around; "wrap" predicts on the panorama extended by
# `wrap_cols` columns from its other end on each side and crops back;
# "circular_wrap" does both.
SEAM_MODES = ("flat", "circular", "wrap", "circular_wrap")
# wrap_cols is a multiple of the network's coarsest stride (the FPN's 64):
# the extension then adds whole cells to every feature map (strides 4..64),
# so the panorama's own columns sit on the same grid of every level as in
# the flat forward (column 0 starts a cell), and cropping back lines up.
WRAP_MULTIPLE = 64


def wrap_cols_for(width: int) -> int:
  """The default extension of a ``width``-wide panorama: about 1/16 of it (the
  seam metrics' band), rounded to a multiple of :data:`WRAP_MULTIPLE`, at least
  one (2048 -> 128, 512 -> 64). A crossing object up to twice as wide is whole
  in one of its two copies."""
  return max(WRAP_MULTIPLE, WRAP_MULTIPLE * round(width / 16 / WRAP_MULTIPLE))


def default_seam_config(width: int = 2048) -> ml_collections.ConfigDict:
  """``config.seam`` for panoramas ``width`` columns wide (the reference's 2048)."""
  return ml_collections.ConfigDict(dict(mode="flat", wrap_cols=wrap_cols_for(width)))


def check_seam(mode: str, wrap_cols: int, width: int | None = None,
               what: str = "config.seam") -> None:
  """ValueError naming the key if ``(mode, wrap_cols)`` cannot run on ``width`` columns."""
  if mode not in SEAM_MODES:
    raise ValueError(f"{what}.mode={mode!r} is unknown; known modes: {list(SEAM_MODES)}")
  if mode not in ("wrap", "circular_wrap"):
    return
  p = int(wrap_cols)
  if p != wrap_cols or p <= 0 or p % WRAP_MULTIPLE:
    raise ValueError(f"{what}.wrap_cols={wrap_cols!r} must be a positive multiple of "
                     f"{WRAP_MULTIPLE} (the network's coarsest stride, so the extended "
                     f"panorama keeps every feature map's grid), e.g. {wrap_cols_for(width or 2048)}")
  if width is not None and p >= width:
    raise ValueError(f"{what}.wrap_cols={p} must be less than the panorama's width "
                     f"{width} (columns taken from its other end), e.g. "
                     f"{wrap_cols_for(width)}")
