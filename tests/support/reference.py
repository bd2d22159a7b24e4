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


def paste_candidates(semantic, hard_label_randoms, crop_bbox, load_mask, load_image,
                     class_index, num_hard_label=8):
  """The ADCL paste's candidate loop (gen_amodal_pseudolabels_for_maskformer.py L186-209
  of ``GenBlendPASSAmodalMixedLabelsForMaskFormer``), verbatim logic.

  Walks the drawn pool entries in order and keeps one whose crop is not empty,
  covers at most 1/8 of the crop and leaves every earlier kept one (and the
  background) at least 25 pixels, until ``num_hard_label`` are kept. The
  reference reads each entry's mask PNG and image JPG here and parses its class
  from the file name; the hooks do that for their pool: ``load_mask(name)`` the
  full-size mask (0/1/255), ``load_image(name)`` the full-size image (the
  reference's crop is flipped to BGR, so a caller in its colour order flips the
  image), ``class_index(name)`` the index into the thing ids 11..17. Returns the
  kept mask crops, their classes, image crops, ``hard_label_sem`` (the kept
  classes painted over zeros like ``semantic``) and the kept names.
  """
  thing_list = [11, 12, 13, 14, 15, 16, 17]
  crop_y1, crop_y2, crop_x1, crop_x2 = crop_bbox
  croped_hard_label_list = []
  croped_hard_class_list = []
  croped_hard_img_list = []
  hard_label_crop_num = 1
  hard_label_sem = np.zeros_like(semantic)
  hard_label_sum = np.zeros_like(semantic)
  pasted = []
  for hard_label_name in hard_label_randoms:
    if "cer" in str(hard_label_name):
      continue
    hard_label = np.array(load_mask(hard_label_name), dtype=np.uint8)
    hard_label_crop = hard_label[crop_y1:crop_y2, crop_x1:crop_x2]
    if np.sum(hard_label_crop) != 0:
      if np.count_nonzero(hard_label_crop) * 8 > hard_label_crop.size:
        continue
      ins_num, ins_cnt = np.unique(hard_label_sum[hard_label_crop == 0], return_counts=True)
      if len(ins_num) != hard_label_crop_num or min(ins_cnt) < 25:
        continue
      hard_label_class = thing_list[int(class_index(hard_label_name))]
      hard_img = np.array(load_image(hard_label_name), dtype=np.uint8)
      hard_img_crop = hard_img[crop_y1:crop_y2, crop_x1:crop_x2, ...]
      croped_hard_label_list.append(hard_label_crop)
      croped_hard_class_list.append(hard_label_class)
      croped_hard_img_list.append(hard_img_crop)
      hard_label_sem[hard_label_crop != 0] = hard_label_class
      hard_label_sum[hard_label_crop != 0] = hard_label_crop_num
      hard_label_crop_num += 1
      pasted.append(hard_label_name)
    if hard_label_crop_num > num_hard_label:
      break
  return (croped_hard_label_list, croped_hard_class_list, croped_hard_img_list,
          hard_label_sem, pasted)


def semantic_rule(logits):
  """The predict rule on resized logits [..., K], in numpy: ``(argmax, max softmax
  probability, clear)``, ``clear`` where the top two logits differ by more than 1e-4
  (no near-tie a float rounding could flip)."""
  logits = np.asarray(logits, np.float64)
  z = np.exp(logits - logits.max(-1, keepdims=True))
  top2 = np.sort(logits, -1)[..., -2:]
  return (logits.argmax(-1), (z / z.sum(-1, keepdims=True)).max(-1),
          top2[..., 1] - top2[..., 0] > 1e-4)
