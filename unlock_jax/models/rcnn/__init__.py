"""Static-shape Mask R-CNN (mmdet 2.x semantics) for the modal and amodal
instance branches: anchors, boxes, assign, sampling, nms, roi_align, rpn,
roi_heads, losses, and the ``branch`` module that ties them together."""
from unlock_jax.models.rcnn.branch import LOSS_KEYS
from unlock_jax.models.rcnn.branch import MaskRCNNBranch
