"""Shared pieces of the data-set readers: the files' rules, GT building, padding.

Every rule about the files (JSON structure, label values, image modes) lives
here once: readers raise its first problem (``strict``), ``check_data``
lists them all with their fixes (``tools/layout_checks.py``).

Ground truth follows the reference (``GenAPSKITTIAmodalLabelsForMaskFormer``,
docs/method.md §8.1): semantic starts at 255 and every non-crowd
segment writes its ``category_id``; an instance enters the modal/amodal lists
if it is a non-crowd thing with a non-empty modal mask (``panoptic == id``), a
non-empty amodal mask (its ``amodal_id`` polygons) and both tight boxes at
least 2 px wide and high.

Box convention (reference ``get_bbox_coord``): ``[x1, y1, x2, y2]`` with x2/y2
the *inclusive* last column/row index, so a 1-px-wide mask has x1 == x2.
"""
import json
import logging

from etils import epath
import numpy as np
from PIL import Image

from unlock_jax.data import keys
from unlock_jax.data import labels

_log = logging.getLogger(__name__)
_warned_truncation = False


PANOPTIC_SUFFIX = "_panoptic.png"  # COCO panoptic file_name: <image stem>_panoptic.png
LABEL_FIX = ("use the 18 K2B train ids 0..17 (things 11..17; table in "
             "unlock_jax/data/labels.py and docs/formats.md §1)")


class DataError(ValueError):
  """A data set file is missing, unreadable, malformed or of the wrong size.

  Also one finding of a rule below, with the parts ``tools/check_data.py``
  lists: ``path``, ``text``, ``fix`` and ``severity``. A rule that finds one
  problem raises it; a rule that finds several hands each to ``report``:
  the readers' :func:`strict` raises the first error (warnings are what the
  readers tolerate), check_data collects them all.
  """

  def __init__(self, message: str, *, path="", text: str = "", fix: str = "",
               severity: str = "error"):
    super().__init__(message)
    self.path, self.text, self.fix, self.severity = str(path), text or message, fix, severity


def problem(path, text: str, fix: str, *, severity: str = "error",
            message: str = "") -> DataError:
  """A finding about ``path``; readers' message: ``message``, else ``text (path)``."""
  return DataError(message or f"{text} ({path})", path=path, text=text, fix=fix,
                   severity=severity)


def strict(found: DataError) -> None:
  """The readers' ``report``: raise an error, tolerate a warning."""
  if found.severity == "error":
    raise found


def _unreadable(path, what: str, e: Exception, missing_fix: str) -> DataError:
  if isinstance(e, FileNotFoundError):
    return problem(path, f"missing {what}", missing_fix, message=f"missing {what} {path}")
  return problem(path, f"cannot read {what}: {e}", "replace the file with an intact copy",
                 message=f"cannot read {what} {path}: {e}")


def open_image(path: str, what: str, missing_fix: str = "add the file") -> Image.Image:
  """A whole decoded image (a truncated file fails here); DataError naming the file."""
  try:
    with epath.Path(path).open("rb") as f:
      im = Image.open(f)
      im.load()  # decoded while the file is open
      return im
  except (OSError, ValueError, SyntaxError) as e:  # FileNotFoundError included
    raise _unreadable(path, what, e, missing_fix) from e


def read_json(path: str, what: str, missing_fix: str = "add the file"):
  """Loads a JSON file, raising DataError naming ``what`` and the path on any problem."""
  try:
    text = epath.Path(path).read_text()
  except FileNotFoundError as e:
    raise _unreadable(path, what, e, missing_fix) from e
  except (OSError, ValueError) as e:  # UnicodeDecodeError included
    err = e
  else:
    try:
      return json.loads(text)
    except ValueError as e:
      err = e
  raise problem(path, f"cannot parse {what}: {err}", "rewrite it as valid JSON (UTF-8)",
                message=f"cannot parse {what} {path}: {err}")


def check_size(array: np.ndarray, path: str, what: str, size) -> tuple:
  """Raises DataError unless ``array`` is ``size`` = (height, width); returns its (h, w)."""
  h, w = array.shape[:2]
  if size is not None and (h, w) != tuple(size):
    raise DataError(f"{what} {path} is {w}x{h}, expected {size[1]}x{size[0]}")
  return h, w


def read_png(path: str, what: str, size, mode: str | None = None) -> np.ndarray:
  """Reads an image file into numpy (optionally converting mode), checking its size."""
  return _read_png(path, what, size, mode)[0]


def _read_png(path: str, what: str, size, mode: str | None = None) -> tuple:
  """(array, the file's PIL mode)."""
  im = open_image(path, what)
  file_mode = im.mode
  if mode is not None and im.mode != mode:
    im = im.convert(mode)
  arr = np.array(im)
  check_size(arr, path, what, size)
  return arr, file_mode


def fit_rgb(image: np.ndarray, size) -> np.ndarray:
  """An RGB image at ``size`` (H, W): as it is, or resized bilinearly (PIL)."""
  if image.shape[:2] == tuple(size):
    return image
  h, w = size
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.uint8)


def read_png_size(path: str, what: str) -> tuple:
  """(height, width) of an image file, from its header only."""
  try:
    with epath.Path(path).open("rb") as f, Image.open(f) as im:
      w, h = im.size
  except (OSError, ValueError, SyntaxError) as e:
    raise _unreadable(path, what, e, "add the file") from e
  return h, w


def read_rgb(path: str, what: str, size) -> np.ndarray:
  """uint8 [H,W,3] RGB image."""
  return read_png(path, what, size, mode="RGB")


def read_panoptic(path: str, what: str, size) -> np.ndarray:
  """RGB id-encoded panoptic PNG → int32 ids (``R + 256 G + 256² B``)."""
  return panoptic_ids(*_read_png(path, what, size), path)


def panoptic_ids(arr: np.ndarray, mode: str, path: str) -> np.ndarray:
  """The ids of a panoptic PNG's pixels (``mode``: the file's PIL mode)."""
  if arr.ndim != 3 or arr.shape[2] != 3:
    raise problem(path, f"panoptic PNG has mode {mode}, expected RGB (id = R + 256 G + "
                  "256^2 B)", "write the panoptic PNG as 8-bit RGB")
  return labels.rgb2id(arr)


def read_instance_ids(path: str, what: str, size, report=strict) -> np.ndarray | None:
  """An instance PNG (train id for stuff, class*1000+k for things, 255 void) → int32 ids.

  Values outside that table go to ``report``; None if the PNG has no single channel.
  """
  arr, mode = _read_png(path, what, size)
  return instance_ids(arr, mode, path, report)


def instance_ids(arr: np.ndarray, mode: str, path: str, report=strict) -> np.ndarray | None:
  """The ids of an instance PNG's pixels (``mode``: the file's PIL mode); see above."""
  if arr.ndim != 2:
    report(problem(path, f"instance PNG has mode {mode}, expected one channel (16-bit)",
                   "write it as a single-channel 16-bit PNG"))
    return None
  values, counts = np.unique(arr.astype(np.int64), return_counts=True)
  cls = np.where(values >= labels.LABEL_DIVISOR, values // labels.LABEL_DIVISOR, values)
  good = np.where(values >= labels.LABEL_DIVISOR, labels.is_thing(cls)
                  & (values % labels.LABEL_DIVISOR >= 1),
                  (values < labels.NUM_CLASSES) | (values == labels.IGNORE))
  if not good.all():
    bad = ", ".join(f"{v} ({c} px)" for v, c in zip(values[~good][:5], counts[~good][:5]))
    report(problem(path, f"instance PNG values {bad} are outside the label table",
                   "pixels are train ids 0..17, 255 (void) or class*1000+k for the thing "
                   "classes 11..17"))
  return arr.astype(np.int32)


# --- the JSON files' rules: each finding goes to ``report`` -----------------------------


def check_categories(cats, path: str, report=strict) -> None:
  """A panoptic JSON's ``categories``: ids in the label table, ``isthing`` as the table's."""
  if not isinstance(cats, list):
    report(problem(path, "'categories' is not a list",
                   "list the 18 classes as {id, name, isthing}"))
    return
  seen = set()
  for c in cats:
    if not isinstance(c, dict) or "id" not in c:
      report(problem(path, f"category entry {c!r} has no 'id'", "give every category an id"))
      continue
    cid = c["id"]
    if not isinstance(cid, int) or not 0 <= cid < labels.NUM_CLASSES:
      report(problem(path, f"category id {cid!r} is outside the label table 0..17", LABEL_FIX))
      continue
    seen.add(cid)
    if "isthing" in c and bool(c["isthing"]) != bool(labels.is_thing(cid)):
      kind = "thing" if labels.is_thing(cid) else "stuff"
      report(problem(path, f"category {cid} ({labels.CLASS_NAMES[cid]}) has isthing="
                     f"{c['isthing']}, but it is a {kind} class",
                     "set isthing to 1 for ids 11..17 and 0 for ids 0..10"))
  missing = sorted(set(range(labels.NUM_CLASSES)) - seen)
  if missing:
    report(problem(path, f"'categories' lacks ids {missing}",
                   "list all 18 classes (PQ averages over the listed categories)",
                   severity="warning"))


def panoptic_annotations(pan, path: str, fix: str = "", report=strict) -> list | None:
  """A COCO panoptic JSON's usable annotations as (annotation, image stem) pairs.

  None if it has no ``annotations`` and ``categories`` (``fix``: where to get them).
  """
  if not isinstance(pan, dict) or not {"annotations", "categories"} <= set(pan):
    report(problem(path, "panoptic JSON needs 'annotations' and 'categories'",
                   fix or "write it in the COCO panoptic format (docs/formats.md §2)"))
    return None
  check_categories(pan["categories"], path, report)
  out = []
  for a in pan["annotations"]:
    if not isinstance(a, dict) or not {"file_name", "segments_info"} <= set(a):
      report(problem(path, f"annotation {str(a)[:80]} needs 'file_name' and 'segments_info'",
                     "complete the annotation"))
    elif not str(a["file_name"]).endswith(PANOPTIC_SUFFIX):
      report(problem(path, f"annotation file_name {a['file_name']!r} does not end with "
                     f"{PANOPTIC_SUFFIX!r}", "name panoptic PNGs <image stem>_panoptic.png"))
    else:
      out.append((a, a["file_name"][:-len(PANOPTIC_SUFFIX)]))
  return out


def check_segments(segments, path: str, stem: str, report=strict,
                   strict_ids: bool = False) -> bool:
  """Fields, ids and label values of one ``segments_info``; False if it is unusable.

  ``strict_ids``: a thing segment's id must be class*1000+k (an error; else a
  warning), as BlendPASS val's amodal PQ assumes.
  """
  if not isinstance(segments, list):
    report(problem(path, f"segments_info of {stem} is not a list",
                   "write segments_info as a list of segments"))
    return False
  ok, ids = True, set()
  for s in segments:
    if not isinstance(s, dict) or not {"id", "category_id", "iscrowd"} <= set(s):
      report(problem(path, f"segment {str(s)[:80]} of {stem} needs 'id', 'category_id' and "
                     "'iscrowd'", "complete the segment"))
      ok = False
      continue
    sid, cat = s["id"], s["category_id"]
    if sid in ids:
      report(problem(path, f"segment id {sid} appears twice in {stem}",
                     "give every segment of an image its own id"))
    ids.add(sid)
    if not isinstance(cat, int) or not 0 <= cat < labels.NUM_CLASSES:
      report(problem(path, f"segment {sid} of {stem} has category_id {cat!r}, outside the "
                     "label table 0..17", LABEL_FIX))
      ok = False
      continue
    if labels.is_thing(cat) and not s["iscrowd"] and not (
        sid // labels.LABEL_DIVISOR == cat and sid % labels.LABEL_DIVISOR >= 1):
      report(problem(path, f"thing segment {sid} of {stem} (category {cat}) does not have "
                     f"the id {cat}*1000+k", "number thing segments class*1000 + k, k >= 1 "
                     "(docs/formats.md §1)", severity="error" if strict_ids else "warning"))
  return ok


def _polygon_problem(seg) -> str | None:
  if isinstance(seg, dict):
    return None if {"size", "counts"} <= set(seg) else "RLE segmentation lacks size/counts"
  if not isinstance(seg, list):
    return f"segmentation is a {type(seg).__name__}, not a list of polygons"
  for poly in seg:
    if isinstance(poly, dict):  # uncompressed RLE, as pycocotools' frPyObjects takes it
      if not {"size", "counts"} <= set(poly):
        return "RLE segmentation lacks size/counts"
    elif (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
        or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in poly)):
      return f"polygon {str(poly)[:60]} is not an even list of >= 6 finite numbers"
  return None


def amodal_index(amodal, path: str, report=strict) -> dict | None:
  """Reference ``make_json_dict``: image file_name → {annotation id: annotation}.

  None if the JSON has no ``images`` and ``annotations``.
  """
  if not isinstance(amodal, dict) or not {"images", "annotations"} <= set(amodal):
    report(problem(path, "amodal JSON needs 'images' and 'annotations' lists",
                   "write it in the COCO instance format (images[{id, file_name}], "
                   "annotations[{id, image_id, segmentation}])"))
    return None
  names, index = {}, {}
  for img in amodal["images"]:
    if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
      report(problem(path, f"image entry {img!r} needs 'id' and 'file_name'",
                     "give every image entry its id and file_name"))
      continue
    names[img["id"]] = img["file_name"]
    index.setdefault(img["file_name"], {})
  for a in amodal["annotations"]:
    if not isinstance(a, dict) or not {"id", "image_id", "segmentation"} <= set(a):
      report(problem(path, f"annotation {str(a)[:80]} needs 'id', 'image_id' and "
                     "'segmentation'", "complete the annotation"))
      continue
    if a["image_id"] not in names:
      report(problem(path, f"annotation {a['id']} refers to image_id {a['image_id']!r}, "
                     "which is not in 'images'", "add the image entry or remove the annotation"))
      continue
    bad = _polygon_problem(a["segmentation"])
    if bad:
      report(problem(path, f"annotation {a['id']} ({names[a['image_id']]}): {bad}",
                     "write polygons as [[x1, y1, x2, y2, x3, y3, ...], ...] with at least "
                     "3 points each (or a COCO RLE {size, counts})"))
    index[names[a["image_id"]]][a["id"]] = a
  return index


def decode_polygons(segmentation, height: int, width: int) -> np.ndarray:
  """Polygons → uint8 0/1 mask, like the reference (pycocotools frPyObjects, merge, decode)."""
  import pycocotools.mask as mask_utils  # pylint: disable=g-import-not-at-top
  if not segmentation:
    return np.zeros((height, width), np.uint8)
  rles = mask_utils.frPyObjects(segmentation, height, width)
  rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
  return mask_utils.decode(rle).astype(np.uint8)


def _valid_box(mask: np.ndarray) -> bool:
  """Reference ``isValidBox(get_bbox_coord(mask))``: x1 < x2 and y1 < y2."""
  cols = np.flatnonzero(mask.any(0))
  rows = np.flatnonzero(mask.any(1))
  return cols.size > 0 and cols[-1] > cols[0] and rows[-1] > rows[0]


def build_gt(panoptic: np.ndarray, segments: list, amodal_anns: dict, json_path: str,
             name: str) -> dict:
  """Semantic map, segment list and the filtered, aligned modal/amodal instance lists."""
  h, w = panoptic.shape
  semantic = np.full((h, w), labels.IGNORE, np.uint8)
  segs, modal, amodal = [], [], []
  for s in segments:
    sid, cat, crowd = int(s["id"]), int(s["category_id"]), bool(s["iscrowd"])
    aid = s.get("amodal_id", 0)
    segs.append(dict(id=sid, category_id=cat, iscrowd=int(crowd), area=int(s.get("area", 0)),
                     amodal_id=aid))
    m = panoptic == sid
    if not crowd:
      semantic[m] = cat
    if crowd or not labels.is_thing(cat) or not m.any():
      continue
    if aid not in amodal_anns:
      raise DataError(f"segment {sid} of {name} in {json_path} has amodal_id {aid}, which is "
                      "not an annotation of this image in the amodal JSON")
    amask = decode_polygons(amodal_anns[aid]["segmentation"], h, w)
    if not amask.any() or not _valid_box(m) or not _valid_box(amask):
      continue
    modal.append(dict(mask=m.astype(np.uint8), category_id=cat, seg_id=sid))
    amodal.append(dict(mask=amask, category_id=cat, seg_id=sid, amodal_id=aid))
  return dict(semantic=semantic, segments=segs, modal=modal, amodal=amodal)


def boxes_from_masks(masks: np.ndarray, rule: str = "positive") -> np.ndarray:
  """Tight boxes [N,4] float32 (x1, y1, x2, y2 inclusive, as ``get_bbox_coord``) of masks [N,H,W].

  ``rule="positive"`` uses pixels == 1 (ignore value 255 excluded);
  ``rule="nonzero"`` uses pixels != 0, reproducing the reference's inflated
  boxes when masks carry 255 (docs/reference_differences.md item 1). Empty masks → zeros.
  """
  masks = np.asarray(masks)
  if rule == "positive":
    fg = masks == 1
  elif rule == "nonzero":
    fg = masks != 0
  else:
    raise ValueError(f"rule must be 'positive' or 'nonzero', got {rule!r}")
  n, h, w = fg.shape
  cols, rows = fg.any(1), fg.any(2)
  nonempty = cols.any(1)
  x1 = cols.argmax(1)
  x2 = w - 1 - cols[:, ::-1].argmax(1)
  y1 = rows.argmax(1)
  y2 = h - 1 - rows[:, ::-1].argmax(1)
  boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
  boxes[~nonempty] = 0
  return boxes.reshape(n, 4)


def to_padded(example: dict, max_instances: int) -> dict:
  """Static-shape instance arrays (keys from ``keys.py``, no batch dim) plus ``semantic`` int32.

  Rows j < count hold instance j of ``example["modal"]`` / ``example["amodal"]``
  (aligned); the rest are zeros with ``*_valid == False``. With more than
  ``max_instances`` instances the largest amodal ones are kept (in their
  original order) and a warning is logged once per process.
  """
  global _warned_truncation
  h, w = example["semantic"].shape
  modal, amodal = example["modal"], example["amodal"]
  if len(modal) != len(amodal):
    raise DataError(f"{example.get('name')}: {len(modal)} modal vs {len(amodal)} amodal instances")
  keep = list(range(len(amodal)))
  if len(keep) > max_instances:
    if not _warned_truncation:
      _log.warning("%s has %d instances, more than max_instances=%d; keeping the largest "
                   "(amodal area). Further truncations are not reported.",
                   example.get("name"), len(keep), max_instances)
      _warned_truncation = True
    areas = np.array([int(a["mask"].sum()) for a in amodal])
    keep = sorted(np.argsort(-areas, kind="stable")[:max_instances].tolist())
  n = max_instances
  out = {keys.SEMANTIC: example["semantic"].astype(np.int32)}
  for names, items in (((keys.MODAL_MASKS, keys.MODAL_CLASSES, keys.MODAL_BOXES,
                          keys.MODAL_VALID), modal),
                        ((keys.AMODAL_MASKS, keys.AMODAL_CLASSES, keys.AMODAL_BOXES,
                          keys.AMODAL_VALID), amodal)):
    masks = np.zeros((n, h, w), np.uint8)
    classes = np.zeros((n,), np.int32)
    valid = np.zeros((n,), bool)
    for row, j in enumerate(keep):
      masks[row] = items[j]["mask"]
      classes[row] = items[j]["category_id"] - labels.FIRST_THING
      valid[row] = True
    out[names[0]] = masks
    out[names[1]] = classes
    out[names[2]] = boxes_from_masks(masks, "positive")
    out[names[3]] = valid
  return out
