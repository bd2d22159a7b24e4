"""One Mask R-CNN branch (RPN + RoI heads) on FPN features, static shapes.

The network instantiates this module twice (modal and amodal instances).
Parameters: ``rpn_head/{rpn_conv,rpn_cls,rpn_reg}`` and
``roi_head/bbox_head/{shared_fcs_0,shared_fcs_1,fc_cls,fc_reg}``,
``roi_head/mask_head/{convs_0..3,upsample,conv_logits}`` (checkpoint key
names of ``rpn_head.*`` / ``roi_head.*``; conversion notes in
``roi_heads.py``). Random sampling draws from the ``"sampling"`` rng stream.

Usage::

  model = MaskRCNNBranch(defaults.default_rcnn_config(), dtype=jnp.bfloat16)
  params = model.init({"params": key}, fpn,
                      method=MaskRCNNBranch.init_heads)["params"]
  losses = model.apply({"params": params}, fpn, (H, W), train=True,
                       targets=targets, rngs={"sampling": key})
  dets = model.apply({"params": params}, fpn, (H, W), train=False)

Ground-truth boxes are ``targets["boxes"]``, made on the host by the data
pipeline: its box rule (``config.input.box_rule`` for source training,
``config.adapt.paste.box_rule`` for adaptation: the ``==1`` pixels, or the
reference's non-zero ones) and the ADCL paste's modal boxes are the only
settings, so the branch has none.

``circular=True`` (test time only, a full 360° panorama of width ``W``, a
multiple of the coarsest stride 64): the branch is seam-aware. The RPN
conv pads columns by wrapping, proposals and detections are wrapped boxes
(``0 <= x1 < W``, ``x1 < x2 <= x1 + W``; ``x2 > W`` crosses the seam and
covers ``[x1, W) ∪ [0, x2 - W)``; ``boxes.py``), both NMS stages use the
circular IoU, RoIAlign reads columns modulo each level's width ``W /
stride``, and a crossing box's mask has pixels at both ends of the
full-image mask. Anchors need no change: each level's grid ``k * stride``
has ``W / stride`` columns, so rolling the panorama by a multiple of 64
permutes the anchors and shifts their decoded boxes by the same amount
modulo ``W``; the detections of a rolled panorama are the rolled detections.
An object crossing the seam gets one box, not two clipped halves.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from unlock_jax.models.rcnn import anchors as anchor_ops
from unlock_jax.models.rcnn import roi_align
from unlock_jax.models.rcnn import roi_heads
from unlock_jax.models.rcnn import rpn

LOSS_KEYS = ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox", "mask")


def freeze(cfg: Any) -> ml_collections.FrozenConfigDict:
  """Hashable config for the module field."""
  if isinstance(cfg, ml_collections.FrozenConfigDict):
    return cfg
  return ml_collections.FrozenConfigDict(cfg)


class MaskRCNNBranch(nn.Module):
  """RPN + R-CNN (box and mask) on five FPN maps; losses or detections.

  ``dtype`` is the compute dtype of the heads and RoI features (the network
  passes its ``model.compute_dtype``); parameters, losses, boxes and scores
  stay float32.
  """
  cfg: Any  # ConfigDict or FrozenConfigDict; frozen on construction
  dtype: Any = jnp.float32

  def __post_init__(self):
    # A frozen config is hashable, as flax module fields should be.
    object.__setattr__(self, "cfg", freeze(self.cfg))
    super().__post_init__()

  def setup(self):
    c = self.cfg
    dt = jnp.dtype(self.dtype)
    self.rpn_head = rpn.RPNHead(len(c.anchor_ratios) * len(c.anchor_scales),
                                c.feat_channels, dt)
    self.roi_head = roi_heads.RoIHead(c.num_classes, c.fc_dim, c.conv_dim, dt)

  def init_heads(self, fpn: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """Runs only the heads (no proposals, NMS or pasting) so that
    ``model.init(rngs, fpn, method=MaskRCNNBranch.init_heads)`` creates the
    same parameters as ``__call__`` at a fraction of the compile time."""
    c = self.cfg
    dt = jnp.dtype(self.dtype)
    cls_l, _ = self.rpn_head([f.astype(dt) for f in fpn])
    ch = fpn[0].shape[-1]
    box_x = jnp.zeros((1, c.roi_size, c.roi_size, ch), dt)
    mask_x = jnp.zeros((1, c.mask_roi_size, c.mask_roi_size, ch), dt)
    (cls, _), logits = self.roi_head(box_x, mask_x)
    return cls_l[0].sum() + cls.sum() + logits.sum()

  def _roi_features(self, feats: Sequence[jnp.ndarray], rois: jnp.ndarray,
                    size: int, circular: bool = False) -> jnp.ndarray:
    c = self.cfg
    fn = lambda f, r: roi_align.multilevel_roi_align(
        f, jax.lax.stop_gradient(r), size, tuple(c.strides[:len(f)]),
        c.roi_sampling_ratio, c.finest_scale, c.roi_max_samples,
        c.get("roi_chunk", 0), circular=circular)
    return jax.vmap(fn)(list(feats), rois)

  def __call__(self, fpn: Sequence[jnp.ndarray], image_shape: tuple[int, int],
               *, train: bool, targets: dict | None = None,
               circular: bool = False) -> dict:
    """Losses (``targets`` given) or detections (``targets=None``).

    Args:
      fpn: five maps ``[B, h_l, w_l, C]`` at strides 4..64.
      image_shape: static ``(H, W)`` of the input image (box clipping, paste).
      train: selects the train (else test) proposal budgets.
      targets: ``masks [B,N,H,W] uint8 (0/1/255)``, ``classes [B,N] int32``,
        ``boxes [B,N,4] float32``, ``valid [B,N] bool``.
      circular: the image is a full 360° panorama (module docstring; test
        time only): wrapped boxes, circular NMS, RoIAlign and paste, and the
        RPN conv wraps the columns around. ``W`` must be a multiple of the
        coarsest stride so that every level covers the circle exactly.
    Returns:
      ``{rpn_cls, rpn_bbox, rcnn_cls, rcnn_bbox, mask}`` scalars, or
      ``{boxes [B,D,4], scores [B,D], classes [B,D], masks [B,D,H,W] bool,
      valid [B,D]}`` with ``D = max_dets``.
    """
    c = self.cfg
    dt = jnp.dtype(self.dtype)
    fpn = [f.astype(dt) for f in fpn]
    image_shape = (int(image_shape[0]), int(image_shape[1]))
    if circular:
      if targets is not None:
        raise ValueError(
            "MaskRCNNBranch: circular=True is for test-time detection on full "
            "360° panoramas; the loss path (targets given) takes flat crops "
            "and pinhole images, call it with circular=False")
      for f, st in zip(fpn, c.strides):
        if f.shape[2] * st != image_shape[1]:
          raise ValueError(
              f"MaskRCNNBranch(circular=True): the panorama width "
              f"{image_shape[1]} is not a multiple of the FPN stride {st} "
              f"(level width {f.shape[2]}); resize or pad the panorama to a "
              f"multiple of {max(c.strides)} columns, or use the flat mode")
    cls_l, reg_l = self.rpn_head(fpn, circular=circular)
    anchors = [jnp.asarray(a) for a in anchor_ops.multilevel_anchors(
        [f.shape[1:3] for f in fpn], tuple(c.strides), tuple(c.anchor_scales),
        tuple(c.anchor_ratios))]
    nms_pre = c.nms_pre_train if train else c.nms_pre_test
    max_props = c.max_proposals_train if train else c.max_proposals_test
    propose = lambda cl, rg: rpn.rpn_proposals(
        cl, rg, anchors, image_shape, nms_pre=nms_pre, max_num=max_props,
        iou_thr=c.rpn_nms, circular=circular)
    props, _, prop_valid = jax.vmap(propose)(
        jax.lax.stop_gradient(cls_l), jax.lax.stop_gradient(reg_l))
    roi_feats = fpn[:len(roi_align.ROI_STRIDES)]
    if targets is None:
      return self._detect(roi_feats, props, prop_valid, image_shape, circular)
    return self._losses(roi_feats, cls_l, reg_l, anchors, props, prop_valid,
                        targets)

  def _gt(self, targets: dict):
    """GT boxes, classes and validity; like the reference's ``isValid``, a
    box counts only if ``x1 < x2`` and ``y1 < y2``."""
    valid = targets["valid"].astype(bool)
    boxes = targets["boxes"].astype(jnp.float32)
    ok = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    valid = valid & ok
    boxes = jnp.where(valid[..., None], boxes, 0.0)
    classes = jnp.where(valid, targets["classes"].astype(jnp.int32), 0)
    return boxes, classes, valid

  def _losses(self, roi_feats, cls_l, reg_l, anchors, props, prop_valid,
              targets) -> dict:
    c = self.cfg
    gt_boxes, gt_classes, gt_valid = self._gt(targets)
    b = gt_boxes.shape[0]
    has_inst = jnp.any(gt_valid, axis=1)  # images without instances drop out
    keys = jax.random.split(self.make_rng("sampling"), (b, 2))

    # RPN.
    all_anchors = jnp.concatenate(anchors, 0)
    tfn = lambda gb, gv, k: rpn.rpn_targets(
        all_anchors, gb, gv, k, num=c.rpn_samples,
        pos_fraction=c.rpn_pos_fraction, pos_iou=c.rpn_pos_iou,
        neg_iou=c.rpn_neg_iou, min_pos_iou=c.rpn_min_pos_iou)
    pos, neg, deltas = jax.vmap(tfn)(gt_boxes, gt_valid, keys[:, 0])
    pos = pos & has_inst[:, None]
    neg = neg & has_inst[:, None]
    rpn_cls, rpn_bbox = rpn.rpn_losses(
        jnp.concatenate(cls_l, 1), jnp.concatenate(reg_l, 1), pos, neg,
        deltas)

    # R-CNN boxes.
    sfn = lambda p, pv, gb, gv, gc, k: roi_heads.rcnn_sample(
        p, pv, gb, gv, gc, k, num=c.rcnn_samples,
        pos_fraction=c.rcnn_pos_fraction, pos_iou_thr=c.rcnn_iou,
        neg_iou_thr=c.rcnn_iou, min_pos_iou=c.rcnn_iou,
        num_classes=c.num_classes)
    s = jax.vmap(sfn)(props, prop_valid, gt_boxes, gt_valid, gt_classes,
                      keys[:, 1])
    box_x = self._roi_features(roi_feats, s["rois"], c.roi_size)
    cls, reg = self.roi_head.box(box_x)
    roi_w = s["valid"] & has_inst[:, None]
    rcnn_cls, rcnn_bbox = roi_heads.bbox_losses(
        cls, reg, s["labels"], s["deltas"], roi_w, s["pos"])

    # Masks: every positive sits in the first int(num * pos_fraction) slots.
    p = int(c.rcnn_samples * c.rcnn_pos_fraction)
    m_rois = s["rois"][:, :p]
    m_pos = s["pos"][:, :p] & has_inst[:, None]
    mask_x = self._roi_features(roi_feats, m_rois, c.mask_roi_size)
    logits = self.roi_head.mask(mask_x)
    mt = lambda m, r, g: roi_heads.mask_targets(
        m, r, g, size=c.mask_size,
        reference_bug=c.reference_mask_ignore_bug,
        ignore_rule=c.mask_ignore_rule, ignore_frac=c.mask_ignore_frac)
    m_t, m_w = jax.vmap(mt)(targets["masks"], m_rois, s["gt_index"][:, :p])
    loss_mask = roi_heads.mask_loss(logits, s["labels"][:, :p], m_t, m_w,
                                    m_pos, c.mask_avg_non_ignore)
    return dict(rpn_cls=rpn_cls, rpn_bbox=rpn_bbox, rcnn_cls=rcnn_cls,
                rcnn_bbox=rcnn_bbox, mask=loss_mask)

  def _detect(self, roi_feats, props, prop_valid, image_shape,
              circular: bool = False) -> dict:
    c = self.cfg
    box_x = self._roi_features(roi_feats, props, c.roi_size, circular)
    cls, reg = self.roi_head.box(box_x)
    dfn = lambda cl, rg, p, pv: roi_heads.detect(
        cl, rg, p, pv, image_shape, score_thr=c.score_thr,
        iou_thr=c.test_nms, max_dets=c.max_dets, circular=circular)
    boxes, scores, classes, valid = jax.vmap(dfn)(cls, reg, props, prop_valid)
    mask_x = self._roi_features(roi_feats, boxes, c.mask_roi_size, circular)
    logits = self.roi_head.mask(mask_x)  # [B, D, S, S, C]
    picked = jnp.take_along_axis(logits, classes[..., None, None, None],
                                 -1)[..., 0]
    probs = jax.nn.sigmoid(picked)
    paste = lambda pr, bx: roi_heads.paste_masks(
        pr, bx, image_shape, c.mask_thr, c.paste_chunk, circular)
    masks = jax.vmap(paste)(probs, boxes) & valid[..., None, None]
    return dict(boxes=boxes, scores=scores, classes=classes, masks=masks,
                valid=valid)
