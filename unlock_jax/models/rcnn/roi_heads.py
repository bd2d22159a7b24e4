"""R-CNN stage: box head, mask head, RoI sampling, targets, losses, test-time
post-processing and mask pasting (mmdet 2.x ``StandardRoIHead`` semantics).

Flatten order of the 7×7×C RoI feature fed to ``bbox_head/shared_fcs_0`` is
NHWC, index ``(h * 7 + w) * C + c``. The torch weight ``(1024, C*7*7)`` is in
``(c, h, w)`` order: convert with
``W.reshape(1024, C, 7, 7).transpose(2, 3, 1, 0).reshape(49 * C, 1024)``.
``mask_head/upsample`` stores ``kernel [2, 2, in, out]``; the torch
``ConvTranspose2d`` weight ``(in, out, 2, 2)`` converts with
``W.transpose(2, 3, 0, 1)`` (stride 2 = kernel 2, so no overlap and no flip).
Class index 7 (last) of ``fc_cls`` is background.

Test time on a full 360° panorama (``circular=True`` in ``detect`` and
``paste_masks``): detections are wrapped boxes (``boxes.py``: ``0 <= x1 <
W``, ``x1 < x2 <= x1 + W``; ``x2 > W`` crosses the seam), class-wise NMS
uses the circular IoU, and a crossing box's mask is pasted on the unwrapped
line and folded back modulo ``W``, so the full-image mask has pixels at both
ends. Training never uses it (crops and pinhole images are not periodic).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from unlock_jax.models.rcnn import assign
from unlock_jax.models.rcnn import boxes as box_ops
from unlock_jax.models.rcnn import losses
from unlock_jax.models.rcnn import nms as nms_ops
from unlock_jax.models.rcnn import roi_align
from unlock_jax.models.rcnn import sampling

_KAIMING_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BBoxHead(nn.Module):
  """mmdet ``Shared2FCBBoxHead``: 2 shared FC + ReLU, class scores (C+1,
  background last) and class-specific deltas (4C)."""
  num_classes: int = 7
  fc_dim: int = 1024
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``x [..., 7, 7, C]`` → ``(cls [..., C+1], reg [..., C, 4])`` float32."""
    lead = x.shape[:-3]
    x = x.reshape(lead + (-1,)).astype(self.dtype)
    xavier = nn.initializers.xavier_uniform()
    x = nn.relu(nn.Dense(self.fc_dim, kernel_init=xavier, dtype=self.dtype,
                         name="shared_fcs_0")(x))
    x = nn.relu(nn.Dense(self.fc_dim, kernel_init=xavier, dtype=self.dtype,
                         name="shared_fcs_1")(x))
    cls = nn.Dense(self.num_classes + 1,
                   kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                   name="fc_cls")(x)
    reg = nn.Dense(self.num_classes * 4,
                   kernel_init=nn.initializers.normal(0.001),
                   dtype=self.dtype, name="fc_reg")(x)
    reg = reg.reshape(lead + (self.num_classes, 4))
    return cls.astype(jnp.float32), reg.astype(jnp.float32)


class TransposeConv2x2(nn.Module):
  """Kernel-2 stride-2 transposed conv as a per-pixel matmul (no overlap)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    cin = x.shape[-1]
    k = self.param("kernel", _KAIMING_OUT, (2, 2, cin, self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.einsum("...ijk,abko->...iajbo", x.astype(self.dtype),
                   k.astype(self.dtype))
    s = y.shape
    y = y.reshape(s[:-5] + (s[-5] * 2, s[-3] * 2, self.features))
    return y + b.astype(self.dtype)


class MaskHead(nn.Module):
  """mmdet ``FCNMaskHead``: 4 × (3×3 conv + ReLU), 2× up + ReLU, 1×1 logits."""
  num_classes: int = 7
  conv_dim: int = 256
  num_convs: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``x [R, 14, 14, C]`` → logits ``[R, 28, 28, num_classes]`` float32."""
    x = x.astype(self.dtype)
    for i in range(self.num_convs):
      x = nn.relu(nn.Conv(self.conv_dim, (3, 3), padding=1,
                          kernel_init=_KAIMING_OUT, dtype=self.dtype,
                          name=f"convs_{i}")(x))
    x = nn.relu(TransposeConv2x2(self.conv_dim, self.dtype, name="upsample")(x))
    x = nn.Conv(self.num_classes, (1, 1), kernel_init=_KAIMING_OUT,
                dtype=self.dtype, name="conv_logits")(x)
    return x.astype(jnp.float32)


def rcnn_sample(proposals: jnp.ndarray, prop_valid: jnp.ndarray,
                gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray,
                gt_classes: jnp.ndarray, key: jax.Array, *, num: int,
                pos_fraction: float, pos_iou_thr: float, neg_iou_thr: float,
                min_pos_iou: float, num_classes: int):
  """Assign and sample ``num`` RoIs for one image, as mmdet 2.x: the
  ``MaxIoUAssigner`` (``match_low_quality``, ``gt_max_assign_all``) runs on
  the proposals only, then ``add_gt_as_proposals`` prepends the GT boxes, each
  assigned to itself. (Assigning with the GT boxes among the candidates would
  make every GT its own best match and disable the low-quality re-assignment.)

  Returns a dict of ``[num]``-leading arrays: ``rois``, ``valid``, ``pos``,
  ``labels`` (0..C-1, background = C), ``deltas`` (stds 0.1/0.1/0.2/0.2),
  ``gt_index``. Positives come first (so the first ``int(num*pos_fraction)``
  slots hold every positive).
  """
  n = gt_boxes.shape[0]
  k = proposals.shape[0]
  proposals = jax.lax.stop_gradient(proposals)
  cand = jnp.concatenate([gt_boxes.astype(jnp.float32), proposals], 0)
  prop_assigned, _ = assign.max_iou_assign(
      proposals, prop_valid, gt_boxes, gt_valid, pos_iou_thr=pos_iou_thr,
      neg_iou_thr=neg_iou_thr, min_pos_iou=min_pos_iou)
  gt_assigned = jnp.where(gt_valid, jnp.arange(1, n + 1, dtype=jnp.int32), -1)
  assigned = jnp.concatenate([gt_assigned, prop_assigned], 0)
  kg, kp = jax.random.split(key)
  # Separate streams so that the proposals' keys do not depend on N.
  u = jnp.concatenate([sampling.random_keys(kg, n),
                       sampling.random_keys(kp, k)])
  pos_sel, neg_sel = sampling.sample_pos_neg(u, assigned > 0, assigned == 0,
                                             num, pos_fraction)
  idx, valid, pos = sampling.gather_selected(pos_sel, neg_sel, num)
  rois = cand[idx]
  gt_index = jnp.maximum(assigned[idx] - 1, 0)
  labels = jnp.where(pos, gt_classes[gt_index], num_classes).astype(jnp.int32)
  deltas = box_ops.encode(rois, gt_boxes[gt_index], box_ops.RCNN_STDS)
  deltas = jnp.where(pos[:, None], deltas, 0.0)
  return dict(rois=rois, valid=valid, pos=pos, labels=labels, deltas=deltas,
              gt_index=gt_index)


def bbox_losses(cls_logits: jnp.ndarray, reg: jnp.ndarray,
                labels: jnp.ndarray, deltas: jnp.ndarray,
                weight: jnp.ndarray, pos: jnp.ndarray
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Softmax CE over sampled RoIs and L1 of the GT-class deltas of positives,
  both divided by the number of sampled RoIs in the batch (mmdet).

  Shapes: ``cls_logits [..., C+1]``, ``reg [..., C, 4]``, ``labels [...]``.
  """
  w = weight.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  logp = jax.nn.log_softmax(cls_logits.astype(jnp.float32), -1)
  ce = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
  loss_cls = jnp.sum(ce * w) / denom
  num_classes = reg.shape[-2]
  cls_idx = jnp.clip(labels, 0, num_classes - 1)
  picked = jnp.take_along_axis(reg, cls_idx[..., None, None], -2)[..., 0, :]
  pw = (pos & (w > 0)).astype(jnp.float32)[..., None]
  loss_bbox = jnp.sum(jnp.abs(picked - deltas) * pw) / denom
  return loss_cls, loss_bbox


def mask_targets(masks: jnp.ndarray, rois: jnp.ndarray, gt_index: jnp.ndarray,
                 *, size: int = 28, reference_bug: bool = False,
                 ignore_rule: str = "full", ignore_frac: float = 0.0
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """28×28 mask targets and per-cell weights for one image's mask RoIs.

  ``masks [N, H, W]`` uint8 with 0 background, 1 object, 255 ignore. As the
  reference (``crop_and_resize_with_ignore``) we RoIAlign (exact mmcv, adaptive
  sampling, RoIs clipped to the image) the ``==1`` map and the ``==255`` map
  separately; target = object fraction >= 0.5.

  Ignored cells (weight 0):
  * ``ignore_rule="full"`` (default, the reference's intent, docs/method.md §7.5): only
    cells whose RoIAligned ignore fraction is 1 (``>= 1 - 1e-6`` for float
    rounding). A pseudo-label mask carries every uncertain pixel of its image,
    so a stricter rule would drop much of the foreground.
  * ``ignore_rule="threshold"``: cells whose ignore fraction is
    ``> ignore_frac`` (``0``: any ignore pixel in the cell; the rule
    unlock_jax used before), with the same 1e-6 rounding margin.
  ``reference_bug=True`` reproduces the reference instead: its boolean target
  array turns cells with ignore fraction 1 into **foreground** and no cell is
  ever ignored.
  Returns ``(targets [P, size, size] float32, weights [P, size, size])``.
  """
  if ignore_rule not in ("full", "threshold"):
    raise ValueError(f"mask ignore rule must be 'full' or 'threshold', got "
                     f"{ignore_rule!r}")
  h, w = masks.shape[-2:]
  hi = jnp.asarray([w, h, w, h], jnp.float32)
  rois = jnp.clip(rois.astype(jnp.float32), 0.0, hi)
  sel = masks[gt_index]  # [P, H, W]
  obj = roi_align.separable_roi_align((sel == 1).astype(jnp.float32), rois,
                                      size)
  ign = roi_align.separable_roi_align((sel == 255).astype(jnp.float32), rois,
                                      size)
  target = obj >= 0.5
  full = ign >= 1.0 - 1e-6
  if reference_bug:
    target = target | full
    weight = jnp.ones_like(obj)
  elif ignore_rule == "full":
    weight = (~full).astype(jnp.float32)
  else:
    weight = (ign <= ignore_frac + 1e-6).astype(jnp.float32)
  return target.astype(jnp.float32), weight


def mask_loss(logits: jnp.ndarray, labels: jnp.ndarray, targets: jnp.ndarray,
              weights: jnp.ndarray, roi_weight: jnp.ndarray,
              avg_non_ignore: bool = False) -> jnp.ndarray:
  """Class-specific sigmoid BCE (mmdet ``mask_cross_entropy_withigore``).

  ``logits [..., S, S, C]``, ``labels [...]``, ``targets/weights [..., S, S]``,
  ``roi_weight [...]`` (positive, valid RoIs). mmdet's default
  ``avg_non_ignore=False`` divides by all cells of all positive RoIs, ignored
  cells included; ``True`` divides by the non-ignored cells only.
  """
  cls_idx = jnp.clip(labels, 0, logits.shape[-1] - 1)
  picked = jnp.take_along_axis(logits, cls_idx[..., None, None, None],
                               -1)[..., 0]
  bce = losses.sigmoid_bce(picked, targets)
  rw = roi_weight.astype(jnp.float32)[..., None, None]
  cell_w = weights * rw
  if avg_non_ignore:
    denom = jnp.sum(cell_w)
  else:
    denom = jnp.sum(rw) * targets.shape[-1] * targets.shape[-2]
  return jnp.sum(bce * cell_w) / jnp.maximum(denom, 1.0)


def detect(cls_logits: jnp.ndarray, reg: jnp.ndarray, proposals: jnp.ndarray,
           prop_valid: jnp.ndarray, image_shape: tuple[int, int], *,
           score_thr: float, iou_thr: float, max_dets: int,
           circular: bool = False):
  """mmdet ``simple_test_bboxes`` + ``multiclass_nms`` for one image.

  ``circular``: wrapped boxes and circular IoU (module docstring).
  Returns ``(boxes [D, 4], scores [D], classes [D], valid [D])``.
  """
  num_classes = reg.shape[-2]
  probs = jax.nn.softmax(cls_logits.astype(jnp.float32), -1)[:, :num_classes]
  rois = jnp.broadcast_to(proposals[:, None, :], reg.shape)
  boxes = box_ops.decode(rois, reg, box_ops.RCNN_STDS, image_shape,
                         circular=circular)
  period = float(image_shape[1]) if circular else None
  b, s, c, _, ok = nms_ops.multiclass_nms(boxes, probs, prop_valid, score_thr,
                                          iou_thr, max_dets, period)
  return b, s, c, ok


def paste_weights(lo: jnp.ndarray, hi: jnp.ndarray, length: int,
                  size: int, start: float = 0.0) -> jnp.ndarray:
  """``[length, size]`` bilinear weights of mmdet ``_do_paste_mask``:
  ``grid_sample(align_corners=False)`` with zero padding along one axis,
  for the pixels ``start .. start + length - 1``."""
  pix = jnp.arange(length, dtype=jnp.float32) + (start + 0.5)
  u = (pix - lo) / jnp.maximum(hi - lo, 1e-6) * size - 0.5
  grid = jnp.arange(size, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(u[:, None] - grid[None, :]))


def paste_masks(probs: jnp.ndarray, boxes: jnp.ndarray,
                image_shape: tuple[int, int], threshold: float,
                chunk: int = 10, circular: bool = False) -> jnp.ndarray:
  """Pastes ``probs [D, S, S]`` into ``[D, H, W]`` bool masks (>= threshold).

  Separable: ``Wy [H, S] @ probs @ Wx [W, S]^T`` per box, no gather; chunks of
  ``chunk`` boxes bound the float32 intermediate to ``chunk * H * W``.
  ``circular`` (wrapped boxes, module docstring): the paste covers the
  unwrapped columns ``-W .. 2W - 1`` and a pixel is set if any of its three
  copies is (three times the flat paste's second matmul).
  """
  h, w = image_shape
  size = probs.shape[-1]

  def one(args):
    p, box = args
    wy = paste_weights(box[1], box[3], h, size)
    if circular:
      wx = paste_weights(box[0], box[2], 3 * w, size, start=-float(w))
    else:
      wx = paste_weights(box[0], box[2], w, size)
    m = jnp.dot(jnp.dot(wy, p, precision=jax.lax.Precision.HIGHEST), wx.T,
                precision=jax.lax.Precision.HIGHEST)
    if circular:
      return jnp.any(m.reshape(h, 3, w) >= threshold, axis=1)
    return m >= threshold

  return jax.lax.map(one, (probs.astype(jnp.float32),
                           boxes.astype(jnp.float32)),
                     batch_size=max(1, min(chunk, probs.shape[0])))


class RoIHead(nn.Module):
  """Container for ``bbox_head`` and ``mask_head`` (checkpoint ``roi_head.*``)."""
  num_classes: int = 7
  fc_dim: int = 1024
  conv_dim: int = 256
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.bbox_head = BBoxHead(self.num_classes, self.fc_dim, self.dtype)
    self.mask_head = MaskHead(self.num_classes, self.conv_dim, 4, self.dtype)

  def box(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self.bbox_head(x)

  def mask(self, x: jnp.ndarray) -> jnp.ndarray:
    lead = x.shape[:-3]
    out = self.mask_head(x.reshape((-1,) + x.shape[-3:]))
    return out.reshape(lead + out.shape[1:])

  def __call__(self, box_x: jnp.ndarray, mask_x: jnp.ndarray):
    return self.box(box_x), self.mask(mask_x)
