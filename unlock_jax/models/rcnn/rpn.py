"""RPN: head module, anchor targets and losses, and proposal generation.

mmdet 2.x ``RPNHead`` semantics with static shapes. Anchor order per level is
(y, x, anchor) which equals the NHWC flattening of the head outputs; the
regression channels are grouped per anchor (``a * 4 + k``), as in mmdet.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models import layers
from unlock_jax.models.rcnn import assign
from unlock_jax.models.rcnn import boxes as box_ops
from unlock_jax.models.rcnn import losses
from unlock_jax.models.rcnn import nms as nms_ops
from unlock_jax.models.rcnn import sampling


class RPNHead(nn.Module):
  """3×3 conv + ReLU, then 1×1 objectness (sigmoid) and 1×1 deltas per anchor.

  Submodule names follow the checkpoint keys ``rpn_head.rpn_{conv,cls,reg}``.
  """
  num_anchors: int = 3
  feat_channels: int = 256
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray], *, circular: bool = False
               ) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
    """Returns per level ``cls [B, h*w*A]`` logits and ``reg [B, h*w*A, 4]``.

    ``circular``: the maps are full 360° panoramas; the 3×3 conv wraps the
    columns around (rows zero-padded).
    """
    init = nn.initializers.normal(0.01)  # mmdet RPNHead init_cfg
    padding = ((1, 1), (0, 0)) if circular else 1
    conv = nn.Conv(self.feat_channels, (3, 3), padding=padding, kernel_init=init,
                   dtype=self.dtype, name="rpn_conv")
    cls = nn.Conv(self.num_anchors, (1, 1), kernel_init=init,
                  dtype=self.dtype, name="rpn_cls")
    reg = nn.Conv(self.num_anchors * 4, (1, 1), kernel_init=init,
                  dtype=self.dtype, name="rpn_reg")
    cls_out, reg_out = [], []
    for f in feats:
      f = layers.wrap_pad_w(f, 1, 1) if circular else f
      x = nn.relu(conv(f.astype(self.dtype)))
      b = f.shape[0]
      cls_out.append(cls(x).astype(jnp.float32).reshape(b, -1))
      reg_out.append(reg(x).astype(jnp.float32).reshape(b, -1, 4))
    return cls_out, reg_out


def rpn_targets(anchors: jnp.ndarray, gt_boxes: jnp.ndarray,
                gt_valid: jnp.ndarray, key: jax.Array, *, num: int,
                pos_fraction: float, pos_iou: float, neg_iou: float,
                min_pos_iou: float):
  """Anchor labels for one image (mmdet ``AnchorHead._get_targets_single``).

  Returns ``(pos [M] bool, neg [M] bool, deltas [M, 4])``: the sampled
  positives and negatives, and the regression targets (stds 1).
  """
  m = anchors.shape[0]
  assigned, _ = assign.max_iou_assign(
      anchors, jnp.ones((m,), bool), gt_boxes, gt_valid,
      pos_iou_thr=pos_iou, neg_iou_thr=neg_iou, min_pos_iou=min_pos_iou)
  u = sampling.random_keys(key, m)
  pos, neg = sampling.sample_pos_neg(u, assigned > 0, assigned == 0, num,
                                     pos_fraction)
  matched = gt_boxes[jnp.maximum(assigned - 1, 0)]
  deltas = box_ops.encode(anchors, matched, box_ops.RPN_STDS)
  deltas = jnp.where(pos[:, None], deltas, 0.0)
  return pos, neg, deltas


def rpn_losses(cls_logits: jnp.ndarray, reg: jnp.ndarray, pos: jnp.ndarray,
               neg: jnp.ndarray, deltas: jnp.ndarray
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Sigmoid BCE and L1, both summed and divided by the number of sampled
  anchors over the batch (mmdet ``num_total_samples``; at least 1).

  Shapes: ``cls_logits [B, M]``, ``reg/deltas [B, M, 4]``, ``pos/neg [B, M]``.
  """
  w = (pos | neg).astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  target = pos.astype(jnp.float32)
  bce = losses.sigmoid_bce(cls_logits, target)
  loss_cls = jnp.sum(bce * w) / denom
  l1 = jnp.abs(reg - deltas) * pos[..., None].astype(jnp.float32)
  loss_bbox = jnp.sum(l1) / denom
  return loss_cls, loss_bbox


def rpn_proposals(cls_logits: Sequence[jnp.ndarray],
                  reg: Sequence[jnp.ndarray],
                  anchors: Sequence[jnp.ndarray],
                  image_shape: tuple[int, int], *, nms_pre: int,
                  max_num: int, iou_thr: float, circular: bool = False
                  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Proposals of one image (mmdet 2.x ``RPNHead._get_bboxes_single``).

  Per level: top ``nms_pre`` scores, decode, clip, drop empty boxes, NMS
  (levels never suppress each other: mmdet's ``batched_nms`` with level ids).
  Then the ``max_num`` best over all levels. Returns ``(boxes [max_num, 4],
  scores [max_num], valid [max_num])``, sorted by descending score.
  ``circular=True`` (a full 360° panorama): boxes wrapped instead of clipped
  horizontally and NMS by circular IoU (``boxes.py``, ``nms.py``).
  """
  period = float(image_shape[1]) if circular else None
  all_boxes, all_scores, all_keep = [], [], []
  for logit, d, anc in zip(cls_logits, reg, anchors):
    scores = jax.nn.sigmoid(logit.astype(jnp.float32))
    k = min(nms_pre, scores.shape[0])
    top, idx = jax.lax.top_k(scores, k)  # sorted, ties by lower index
    b = box_ops.decode(anc[idx], d[idx], box_ops.RPN_STDS, image_shape,
                       circular=circular)
    ok = (b[:, 2] - b[:, 0] > 0) & (b[:, 3] - b[:, 1] > 0)  # min_bbox_size 0
    keep = nms_ops.nms_keep_sorted(b, ok, iou_thr, period)
    all_boxes.append(b)
    all_scores.append(top)
    all_keep.append(keep)
  boxes = jnp.concatenate(all_boxes)
  scores = jnp.concatenate(all_scores)
  keep = jnp.concatenate(all_keep)
  idx, ok = nms_ops.top_valid(scores, keep, max_num)
  return (jnp.where(ok[:, None], boxes[idx], 0.0),
          jnp.where(ok, scores[idx], 0.0), ok)
