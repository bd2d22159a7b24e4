"""One picture per panorama showing where the model fails, for files and TensorBoard.

Rows, each with a text label: image | semantic pred | semantic GT | semantic errors |
panoptic pred | panoptic GT | amodal pred | amodal GT | the class-colour legend (a
swatch and the name of every class in the picture). Segments keep their class hue with a
stable per-id shade; amodal instances draw their visible part solid and their occluded
part (amodal minus visible) hatched, so missing or wrong occluded extents stand out.
"""
import io

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from unlock_jax import fileio
from unlock_jax.data import labels

LABEL_HEIGHT = 14
SWATCH = 10  # legend swatch side, px
_ERROR = np.array([255, 0, 0], np.uint8)
_SWATCH_EDGE = (128, 128, 128)  # keeps dark classes (truck) visible on black


def _shade(seg_id: int) -> np.ndarray:
  """Stable colour of one segment: its class colour shifted by an id-seeded offset."""
  cls = seg_id // labels.LABEL_DIVISOR if seg_id >= labels.LABEL_DIVISOR else seg_id
  base = labels.PALETTE[min(int(cls), 255)].astype(np.int64)
  if not _is_instance(seg_id):  # stuff (GT: class, prediction: class*1000), crowd
    return base.astype(np.uint8)
  offset = np.random.default_rng(int(seg_id)).integers(-70, 71, size=3)
  return np.clip(base + offset, 0, 255).astype(np.uint8)


def _is_instance(ids):
  ids = np.asarray(ids)
  return (ids >= labels.LABEL_DIVISOR) & (ids % labels.LABEL_DIVISOR != 0)


def colour_semantic(sem: np.ndarray) -> np.ndarray:
  """Train ids → palette colours (255 and unknown ids black)."""
  return labels.PALETTE[np.clip(np.asarray(sem, np.int64), 0, 255)]


def colour_panoptic(pan: np.ndarray, void_ids=(labels.IGNORE,)) -> np.ndarray:
  """Panoptic ids → colours, one shade per segment, black for void ids."""
  uniq, inv = np.unique(np.asarray(pan, np.int64), return_inverse=True)
  table = np.stack([_shade(int(u)) for u in uniq]) if uniq.size else np.zeros((0, 3))
  table[np.isin(uniq, void_ids)] = 0
  out = table[inv.reshape(pan.shape)].astype(np.uint8)
  # Thin boundaries between thing segments make touching instances distinguishable.
  pan = np.asarray(pan)
  edge = np.zeros(pan.shape, bool)
  edge[:, 1:] |= pan[:, 1:] != pan[:, :-1]
  edge[1:, :] |= pan[1:, :] != pan[:-1, :]
  edge &= _is_instance(pan)
  out[edge] = 255
  return out


def _hatch(shape) -> np.ndarray:
  yy, xx = np.indices(shape)
  return ((yy + xx) // 3) % 2 == 0


def colour_amodal(background: np.ndarray, instances) -> np.ndarray:
  """Dimmed background with instances: ``(seg_id, amodal bool, visible bool)`` each.

  Visible parts are painted solid first; occluded parts are then hatched on top (every
  other stripe), so both the occluder and the hidden extent behind it stay visible.
  Each amodal outline is drawn last.
  """
  out = (background.astype(np.float32) * 0.35).astype(np.uint8)
  hatch = _hatch(out.shape[:2])
  for seg_id, amodal, visible in instances:
    out[visible] = _shade(int(seg_id))
  for seg_id, amodal, visible in instances:
    out[amodal & ~visible & hatch] = _shade(int(seg_id))
  for seg_id, amodal, visible in instances:
    edge = amodal.copy()
    edge[1:-1, 1:-1] &= ~(amodal[:-2, 1:-1] & amodal[2:, 1:-1] & amodal[1:-1, :-2]
                          & amodal[1:-1, 2:])
    out[edge] = _shade(int(seg_id))
  return out


def _gt_amodal_instances(gt: dict):
  pan = np.asarray(gt["panoptic"])
  return [(int(a["seg_id"]), np.asarray(a["mask"]) != 0,
           (np.asarray(a["mask"]) != 0) & (pan == int(a["seg_id"]))) for a in gt["amodal"]]


def _pred_amodal_instances(layered, instance_map):
  """Visible part of a predicted amodal instance = its pixels under the modal instance
  that covers most of it (none without a modal map)."""
  out = []
  for seg_id, crop in zip(layered.ids, layered.crops):
    full = np.zeros(layered.layer0.shape, bool)
    full[crop.window] = crop.mask
    visible = np.zeros_like(full)
    if instance_map is not None:
      under = np.asarray(instance_map)[crop.window][crop.mask]
      under = under[under > 0]
      if under.size:
        vals, counts = np.unique(under, return_counts=True)
        visible = full & (np.asarray(instance_map) == vals[np.argmax(counts)])
    out.append((int(seg_id), full, visible))
  return out


def _label(panel: np.ndarray, text: str) -> np.ndarray:
  strip = Image.new("RGB", (panel.shape[1], LABEL_HEIGHT), (0, 0, 0))
  ImageDraw.Draw(strip).text((3, 1), text, fill=(255, 255, 255))
  return np.concatenate([np.asarray(strip), panel], 0)


def class_ids(*maps, instance_classes=()) -> list[int]:
  """The train ids present in semantic maps (255 and unknown ids left out) and in
  lists of instance classes, sorted: what a picture's legend lists."""
  ids = set(int(c) for c in instance_classes)
  for m in maps:
    ids.update(int(c) for c in np.unique(np.asarray(m)))
  return sorted(c for c in ids if 0 <= c < labels.NUM_CLASSES)


def legend(ids, width: int) -> np.ndarray:
  """The colour key of ``ids``: per class a ``SWATCH``-px square of its palette colour
  and its name, left to right, wrapped into rows of ``width`` px.

  uint8 ``[rows * LABEL_HEIGHT, width, 3]`` (one row saying so if ``ids`` is empty).
  """
  font = ImageFont.load_default()
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  rows, x = [[]], 3
  for c in ids:
    name = labels.CLASS_NAMES[c]
    entry = SWATCH + 4 + int(np.ceil(measure.textlength(name, font=font))) + 10
    if x + entry > width and rows[-1]:
      rows.append([])
      x = 3
    rows[-1].append((x, c, name))
    x += entry
  strip = Image.new("RGB", (width, LABEL_HEIGHT * len(rows)), (0, 0, 0))
  draw = ImageDraw.Draw(strip)
  if not ids:
    draw.text((3, 1), "no class", fill=(255, 255, 255), font=font)
  top = (LABEL_HEIGHT - SWATCH) // 2
  for r, row in enumerate(rows):
    y = r * LABEL_HEIGHT + top
    for x, c, name in row:
      draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1),
                     fill=tuple(int(v) for v in labels.PALETTE[c]), outline=_SWATCH_EDGE)
      draw.text((x + SWATCH + 4, y - top + 1), name, fill=(255, 255, 255), font=font)
  return np.asarray(strip)


def legend_rows(ids, width: int, note: str = "") -> np.ndarray:
  """:func:`legend` under its own label strip (``"classes"`` and ``note``)."""
  return _label(legend(ids, width), f"classes{': ' + note if note else ''}")


def _resize(panel: np.ndarray, scale: float) -> np.ndarray:
  if scale == 1.0:
    return panel
  h, w = panel.shape[:2]
  size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
  return np.asarray(Image.fromarray(panel).resize(size, Image.NEAREST))


def render_panels(image, gt: dict, pred_sem: np.ndarray, pred_panoptic: np.ndarray,
                  pred_amodal, pred_instance_map=None, scale: float = 0.5,
                  title: str = "") -> np.ndarray:
  """The stacked picture as uint8 [rows, W*scale, 3], the legend last.

  ``image`` uint8 [H,W,3] (or None: grey), ``gt`` the GT dict, ``pred_panoptic`` and
  ``pred_amodal`` (an ``AmodalPanoptic``) and ``pred_instance_map`` as returned by
  ``report.evaluate_image``; ``title`` names the picture (model and panorama).
  """
  gt_sem = np.asarray(gt["semantic"])
  h, w = gt_sem.shape
  image = (np.full((h, w, 3), 128, np.uint8) if image is None
           else np.asarray(image, np.uint8)[..., :3])
  pred_sem = np.asarray(pred_sem)
  wrong = (pred_sem != gt_sem) & (gt_sem != labels.IGNORE)
  errors = (image.astype(np.float32) * 0.35).astype(np.uint8)
  errors[wrong] = _ERROR
  n_wrong, n_valid = int(wrong.sum()), int((gt_sem != labels.IGNORE).sum())
  gt_pan = np.asarray(gt["panoptic"])
  panels = [
      (image, f"image {title}".strip()),
      (colour_semantic(pred_sem), "semantic: prediction"),
      (colour_semantic(gt_sem), "semantic: ground truth (black = ignore)"),
      (errors, f"semantic errors (red): {n_wrong}/{n_valid} px"),
      (colour_panoptic(pred_panoptic), "panoptic: prediction (void scored as road)"),
      (colour_panoptic(gt_pan), "panoptic: ground truth"),
      (colour_amodal(image, _pred_amodal_instances(pred_amodal, pred_instance_map)),
       f"amodal: prediction, {len(pred_amodal.ids)} instances (hatched = occluded)"),
      (colour_amodal(image, _gt_amodal_instances(gt)),
       f"amodal: ground truth, {len(gt['amodal'])} instances (hatched = occluded)"),
  ]
  rows = [_label(_resize(p, scale), text) for p, text in panels]
  ids = class_ids(pred_sem, gt_sem, instance_classes=[
      int(i) // labels.LABEL_DIVISOR for i in [*pred_amodal.ids]
      + [a["seg_id"] for a in gt["amodal"]]])
  rows.append(legend_rows(ids, rows[0].shape[1],
                          "instances in shades of their class, black = ignore / void"))
  return np.concatenate(rows, 0)


def save_png(path: str, array: np.ndarray, optimize: bool = False) -> None:
  """Writes a uint8 HxW(x3) array as PNG atomically (``fileio.atomic_write_bytes``);
  ``optimize``: PIL's smallest encoding (same pixels, slower), for committed pictures."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG", optimize=optimize)
  fileio.atomic_write_bytes(path, buf.getvalue())


# Public names of the helpers that other picture modules (pseudo/viewer.py) reuse.
shade = _shade
is_instance = _is_instance
hatch = _hatch
label_panel = _label
resize_panel = _resize
