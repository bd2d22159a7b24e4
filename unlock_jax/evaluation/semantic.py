"""mIoU from a confusion matrix, exactly as the reference's BlendPASSSemanticEvaluator.

docs/method.md §8.2 (reference ``tools/panoptic_deeplab/eval/semantic.py``
L145-235). The matrix has one extra row/column for the ignore label; rows are predictions,
columns ground truth.

Denominator: mIoU sums IoU over classes seen in the ground truth and divides by the number
of classes with ``gt + pred > 0``. A class predicted somewhere but absent from every ground
truth therefore adds 0 to the sum and 1 to the count. That is also what the common
definition gives (such a class has IoU = 0 / pred = 0), so there is no separate
"published" variant to switch to.
"""
import numpy as np

from unlock_jax.data import labels


class SemanticAccumulator:
  """Accumulates a (C+1)x(C+1) confusion matrix over images; mergeable across workers."""

  def __init__(self, num_classes: int = labels.NUM_CLASSES,
               ignore_label: int = labels.IGNORE):
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)

  def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
    """Adds one image: ``pred`` argmax ids in [0, C), ``gt`` ids with ignore."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    gt = np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
      raise ValueError(f"pred has {pred.size} pixels, gt {gt.size}")
    if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
      raise ValueError("semantic prediction outside [0, num_classes)")
    # The reference remaps only the ignore label; any other out-of-range id is
    # also sent to the ignore slot here instead of corrupting another cell.
    gt = np.where((gt < 0) | (gt >= self.num_classes), self.num_classes, gt)
    n = self.num_classes + 1
    self.conf += np.bincount(n * pred + gt, minlength=n * n).reshape(n, n)

  def merge(self, other: "SemanticAccumulator") -> None:
    self.conf += other.conf

  def result(self) -> dict:
    """mIoU (percent), per-class IoU (percent, 0 where the class has no GT), extras."""
    block = self.conf[:-1, :-1].astype(np.float64)
    tp = np.diag(block)
    pos_gt = block.sum(axis=0)
    pos_pred = block.sum(axis=1)
    has_gt = pos_gt > 0
    counted = (pos_gt + pos_pred) > 0
    iou = np.zeros(self.num_classes)
    acc = np.zeros(self.num_classes)
    iou[has_gt] = tp[has_gt] / (pos_gt + pos_pred - tp)[has_gt]
    acc[has_gt] = tp[has_gt] / pos_gt[has_gt]
    n_counted = int(counted.sum())
    total_gt = pos_gt.sum()
    return {
        "mIoU": 100.0 * iou.sum() / n_counted if n_counted else 0.0,
        "mIoU_undefined": n_counted == 0,
        "class_iou": 100.0 * iou,
        "class_counted": counted,
        "fwIoU": 100.0 * float(np.sum(iou * pos_gt / total_gt)) if total_gt else 0.0,
        "mACC": 100.0 * acc.sum() / has_gt.sum() if has_gt.any() else 0.0,
        "pACC": 100.0 * tp.sum() / total_gt if total_gt else 0.0,
    }
