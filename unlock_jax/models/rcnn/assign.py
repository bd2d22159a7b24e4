"""mmdet 2.x ``MaxIoUAssigner`` on padded, static-shape inputs.

Returns, per box, ``assigned``: -1 ignore, 0 negative, k >= 1 matched to GT
``k - 1`` (mmdet's convention). Invalid GT rows and invalid boxes are masked
with IoU -1 so they never match and never count as a GT's best IoU.
"""
import jax.numpy as jnp

from unlock_jax.models.rcnn import boxes as box_ops


def max_iou_assign(boxes: jnp.ndarray, box_valid: jnp.ndarray,
                   gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray, *,
                   pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float,
                   match_low_quality: bool = True,
                   gt_max_assign_all: bool = True
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Assigns boxes ``[M, 4]`` to GT ``[N, 4]`` (one image).

  Returns ``(assigned [M] int32, max_iou [M] float32)``.
  """
  iou = box_ops.pairwise_iou(gt_boxes, boxes)  # [N, M]
  pair_ok = gt_valid[:, None] & box_valid[None, :]
  iou = jnp.where(pair_ok, iou, -1.0)
  num_gt = gt_boxes.shape[0]
  any_gt = jnp.any(gt_valid)

  max_iou = jnp.max(iou, axis=0)  # [M]
  argmax = jnp.argmax(iou, axis=0)  # first max, as torch.max on CPU/GPU
  # mmdet assigns every box to background when an image has no GT.
  max_iou = jnp.where(any_gt, max_iou, 0.0)
  assigned = jnp.full(boxes.shape[:1], -1, jnp.int32)
  assigned = jnp.where((max_iou >= 0) & (max_iou < neg_iou_thr), 0, assigned)
  assigned = jnp.where(any_gt & (max_iou >= pos_iou_thr),
                       argmax.astype(jnp.int32) + 1, assigned)

  if match_low_quality:
    gt_max = jnp.max(iou, axis=1)  # [N]
    ok_gt = gt_valid & (gt_max >= min_pos_iou)
    if gt_max_assign_all:
      hit = (iou == gt_max[:, None]) & ok_gt[:, None] & pair_ok  # [N, M]
    else:
      first = jnp.argmax(iou, axis=1)
      hit = (jnp.arange(boxes.shape[0])[None, :] == first[:, None]
             ) & ok_gt[:, None]
    # mmdet loops over GTs in order, so the last matching GT wins.
    gt_ids = jnp.arange(num_gt, dtype=jnp.int32)[:, None]
    last = jnp.max(jnp.where(hit, gt_ids, -1), axis=0)
    assigned = jnp.where(last >= 0, last + 1, assigned)
  assigned = jnp.where(box_valid, assigned, -1)
  return assigned, max_iou
