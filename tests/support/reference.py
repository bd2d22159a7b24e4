"""Transcriptions of the reference's helpers (yihong-97/UNLOCK), used as test oracles."""
import numpy as np


def get_bbox_coord(mask):
  """``get_bbox_coord`` (L25-40 of gen_amodal_labels_for_maskformer.py, which boxes the
  source labels, and of gen_amodal_pseudolabels_for_maskformer.py, which boxes the
  ADCL paste's instances), verbatim logic: the inclusive box ``[x1, y1, x2, y2]`` of a
  mask's nonzero columns and rows (IndexError for an empty mask, as there)."""
  hor = np.sum(mask, axis=0)
  hor_idx = np.nonzero(hor)[0]
  x = hor_idx[0]
  width = hor_idx[-1] - x + 1
  vert = np.sum(mask, axis=1)
  vert_idx = np.nonzero(vert)[0]
  y = vert_idx[0]
  height = vert_idx[-1] - y + 1
  x1 = int(x)
  y1 = int(y)
  x2 = x1 + int(width) - 1
  y2 = y1 + int(height) - 1
  return [x1, y1, x2, y2]


def resize_bilinear(x, size):
  """torch ``F.interpolate(mode="bilinear", align_corners=False)`` of NHWC maps, float64:
  half-pixel centres, edge clamp, no antialiasing (how the reference resizes logits)."""
  def axis_weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - f)
    np.add.at(m, (np.arange(n_out), i1), f)
    return m
  x = np.asarray(x, np.float64)
  return np.einsum("yi,bijc,xj->byxc", axis_weights(x.shape[1], size[0]), x,
                   axis_weights(x.shape[2], size[1]))
