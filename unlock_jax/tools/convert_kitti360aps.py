r"""Converts the public KITTI-360-APS release into the layout our kitti360aps reader reads.

    python -m unlock_jax.tools.convert_kitti360aps --release /data/KITTI-360-APS \
        --split train --out /data/APS_KITTI_360 [--class_map identity|asd|map.json]

The reference's "preprocessed KITTI-360 APS labels" link is empty and no
converter is published (docs/formats.md §2.2). This one writes,
under ``--out``, what ``unlock_jax/data/layouts/kitti360aps.py`` reads:

  Image/<split>/<name>.png              RGB (a PNG input is copied byte for byte)
  Panoptic/<split>/<name>_panoptic.png  RGB id-encoded panoptic map
  Panoptic/<split>.json                 COCO panoptic: segments_info {id, category_id,
                                        iscrowd, area, bbox, amodal_id}, categories
  annotations/<split>.json              amodal instances {id, image_id, category_id,
                                        segmentation, area, bbox, iscrowd}
  Semantic/<split>/<name>.png           train ids, 255 void (not read by our reader)

Panoptic ids: thing instances ``class*1000 + k`` (k counting the class's
instances in ascending release id order), stuff and crowd regions their class
id, void 255 (no segment; the reference's amodalscripts/preparation/
createPanopticImgs.py leaves void at 0, road's id). Each non-crowd thing segment has an amodal annotation, its
``segmentation`` a one-element list holding an *uncompressed* COCO RLE
(``[{"size": [h, w], "counts": [...]}]``): exact, and decoded by both our
reader and the reference's loader (``frPyObjects`` + ``merge``).

Input: the amodal panoptic format of the benchmark's evaluation toolkit
(``robot-learning-freiburg/amodal-panoptic: README.md`` "Dataset Format",
``amodal_panoptic_eval/eval.py`` ``load_annotation``/``prepare_segments``):
``<name>_ampano.png`` 1-channel uint16, class id for stuff and ``id*1000 +
instance`` for things; ``<name>_ampano.json`` maps ``str(id*1000 + instance)``
to ``{"occluded", "amodal_mask", "occlusion_mask"}`` (COCO RLE), the amodal
mask of an instance that is not occluded being its visible mask. Folder tree
(``APSNet: docs/DATASET.md``, "for any dataset"; ``APSNet: tools/
dataset_converters/data_struct.py``): ``amodal_panoptic_seg/`` and ``images/``
mirroring each other, found as ``<release>/<split>/{amodal_panoptic_seg,
images}``, ``<release>/{amodal_panoptic_seg,images}/<split>`` or
``<release>/{amodal_panoptic_seg,images}``. ``<name>`` is the label file's
path under ``amodal_panoptic_seg`` with "/" → "_".

Not verified (the KITTI-360-APS files themselves were not available, and no
public code reads them):
* that the release uses exactly this format and tree (the evaluation toolkit
  ships labels for AmodalSynthDrive only);
* its class ids. ``--class_map identity`` (default) assumes ids 0..17 in our
  order with 255 void, as the reference's ``amodalscripts/helpers/labels.py``
  (id == trainId, KITTI-360-APS class names) suggests. Cityscapes-style ids
  (sky 23, vegetation 21, ...) fail loudly on the first image with a value
  above 17; pass a JSON map ``{"<release id>": <our id or 255>}`` then;
* the image file suffix (tried in ``--image_suffixes`` order).

``--release`` and ``--out`` may be URLs (``gs://...``): files are read and
written through etils.epath, every output atomically.
"""
import io
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data.layouts import amodalsynthdrive as asd
from unlock_jax.data.layouts import common

IMAGE_SUFFIXES = (".png", "_rgb.png", ".jpg", "_rgb.jpg", ".jpeg")
CLASS_MAPS = {
    "identity": {**{i: i for i in range(labels.NUM_CLASSES)}, labels.IGNORE: labels.IGNORE},
    "asd": asd.ASD_TO_TRAIN,
}

def load_class_map(spec: str) -> dict:
  """A preset name or a JSON file ``{"<release id>": <our id 0..17 or 255>}``."""
  if spec in CLASS_MAPS:
    return dict(CLASS_MAPS[spec])
  raw = common.read_json(spec, "class map")
  if not isinstance(raw, dict):
    raise common.DataError(f"class map {spec} must be a JSON object {{release id: our id}}")
  out = {}
  for k, v in raw.items():
    try:
      key, val = int(k), int(v)
    except (TypeError, ValueError) as e:
      raise common.DataError(f"class map {spec}: entry {k!r}: {v!r} is not integer") from e
    if not (0 <= val < labels.NUM_CLASSES or val == labels.IGNORE):
      raise common.DataError(f"class map {spec} sends {key} to {val}, expected "
                             f"0..{labels.NUM_CLASSES - 1} or {labels.IGNORE}")
    out[key] = val
  return out


def find_split(release: str, split: str) -> tuple[str, str]:
  """(label folder, image folder) of ``split`` in one of the three accepted trees."""
  for base in (os.path.join(release, split), release):
    gt, img = os.path.join(base, "amodal_panoptic_seg"), os.path.join(base, "images")
    if epath.Path(gt, split).is_dir():
      gt, img = os.path.join(gt, split), os.path.join(img, split)
    if epath.Path(gt).is_dir():
      if not epath.Path(img).is_dir():
        raise common.DataError(f"{gt} has no image folder {img} next to it")
      return gt, img
  raise common.DataError(f"no amodal_panoptic_seg folder for split {split!r} in {release} "
                         "(looked for <release>/<split>/amodal_panoptic_seg, "
                         "<release>/amodal_panoptic_seg/<split>, <release>/amodal_panoptic_seg)")


def uncompressed_rle(mask: np.ndarray) -> dict:
  """0/1 mask → COCO uncompressed RLE: column-major run lengths, starting with zeros."""
  h, w = mask.shape
  flat = np.asarray(mask, bool).ravel(order="F")
  edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
  if flat[0]:
    counts = [0] + counts
  return {"size": [h, w], "counts": counts}


def coco_bbox(mask: np.ndarray) -> list:
  """[x, y, width, height] of a mask's pixels; zeros when empty."""
  cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
  if not cols.size:
    return [0, 0, 0, 0]
  return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _pairs(gt_dir: str, img_dir: str, suffixes) -> list:
  """(name, label PNG, label JSON, image) for every ``*_ampano.png`` under ``gt_dir``."""
  out, seen, files = [], {}, fileio.Listing()
  for sub, _, names in sorted(fileio.walk(gt_dir)):
    for fn in sorted(names):
      if not fn.endswith(asd.AMPANO_SUFFIX):
        continue
      png = os.path.join(gt_dir, sub, fn)
      rel = png[len(gt_dir):].strip("/")[:-len(asd.AMPANO_SUFFIX)]
      name = rel.replace("/", "_")
      if name in seen:
        raise common.DataError(f"{png} and {seen[name]} both become {name!r}")
      seen[name] = png
      jpath = png[:-len(asd.AMPANO_SUFFIX)] + asd.AMPANO_JSON_SUFFIX
      if not files.has(jpath):
        raise common.DataError(f"{png} has no JSON {jpath}")
      base = os.path.join(img_dir, rel)
      image = next((base + s for s in suffixes if files.has(base + s)), None)
      if image is None:
        raise common.DataError(f"{png} has no image {base}{{{','.join(suffixes)}}}")
      out.append((name, png, jpath, image))
  if not out:
    raise common.DataError(f"no *{asd.AMPANO_SUFFIX} files under {gt_dir}")
  return out


def _write_png(path: str, array: np.ndarray) -> None:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  fileio.atomic_write_bytes(path, buf.getvalue())


def convert(release: str, split: str, out: str, class_map: dict,
            image_suffixes=IMAGE_SUFFIXES) -> dict:
  """Converts one split; returns counts {images, segments, amodal}."""
  gt_dir, img_dir = find_split(release, split)
  pairs = _pairs(gt_dir, img_dir, tuple(image_suffixes))
  dirs = {k: os.path.join(out, k, split) for k in ("Image", "Panoptic", "Semantic")}
  for d in (*dirs.values(), os.path.join(out, "annotations")):
    fileio.makedirs(d)
  images, pan_anns, amodal_anns = [], [], []
  n_segments = 0
  for image_id, (name, png, jpath, image) in enumerate(pairs, 1):
    ids = asd.read_ampano(png)
    h, w = ids.shape
    common.check_size(ids, png, "amodal panoptic PNG",
                      common.read_png_size(image, "KITTI-360-APS image"))
    info = common.read_json(jpath, "amodal panoptic JSON")
    if not isinstance(info, dict):
      raise common.DataError(f"amodal panoptic JSON {jpath} is a {type(info).__name__}, "
                             "expected an object keyed by instance id")
    pan, segments, amodal = asd.segments_from_ampano(ids, info, class_map, png, jpath)
    semantic = np.full((h, w), labels.IGNORE, np.uint8)
    for s in segments:
      m = pan == s["id"]
      s["bbox"] = coco_bbox(m)
      if s["iscrowd"]:
        continue
      semantic[m] = s["category_id"]
      if s["id"] in amodal:
        amask = amodal[s["id"]]
        s["amodal_id"] = len(amodal_anns) + 1
        amodal_anns.append(dict(id=s["amodal_id"], image_id=image_id,
                                category_id=s["category_id"], iscrowd=0,
                                area=int(amask.sum()), bbox=coco_bbox(amask),
                                segmentation=[uncompressed_rle(amask)]))
    n_segments += len(segments)
    images.append(dict(id=image_id, file_name=name + ".png", width=w, height=h))
    pan_anns.append(dict(image_id=image_id, file_name=name + common.PANOPTIC_SUFFIX,
                         segments_info=segments))
    dst = os.path.join(dirs["Image"], name + ".png")
    if image.lower().endswith(".png"):
      fileio.atomic_write_bytes(dst, epath.Path(image).read_bytes())
    else:
      _write_png(dst, common.read_rgb(image, "KITTI-360-APS image", (h, w)))
    _write_png(os.path.join(dirs["Panoptic"], name + common.PANOPTIC_SUFFIX),
               labels.id2rgb(pan))
    _write_png(os.path.join(dirs["Semantic"], name + ".png"), semantic)
    if image_id % 200 == 0:
      logging.info("%s: %d / %d images", split, image_id, len(pairs))
  categories = [dict(id=i, name=n, isthing=int(labels.is_thing(i)),
                     color=[int(v) for v in labels.PALETTE[i]])
                for i, n in enumerate(labels.CLASS_NAMES)]
  fileio.atomic_write_text(os.path.join(out, "Panoptic", f"{split}.json"), json.dumps(
      dict(images=images, annotations=pan_anns, categories=categories)))
  fileio.atomic_write_text(os.path.join(out, "annotations", f"{split}.json"), json.dumps(
      dict(images=images, annotations=amodal_anns,
           categories=[c for c in categories if c["isthing"]])))
  return dict(images=len(images), segments=n_segments, amodal=len(amodal_anns))


def _define_flags():
  """Defined only when run as a program, so importing this module (tests, other
  tools with an --out flag) registers no absl flags."""
  flags.DEFINE_string("release", None, "folder of the KITTI-360-APS release")
  flags.DEFINE_string("split", "train", "split name (input folder and output name)")
  flags.DEFINE_string("out", None, "output data set folder (config.data.source.root)")
  flags.DEFINE_string("class_map", "identity",
                      "'identity', 'asd', or a JSON file {release id: our id}")
  flags.DEFINE_list("image_suffixes", list(IMAGE_SUFFIXES),
                    "image file suffixes to try, in order")


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not f.release or not f.out:
    raise app.UsageError("--release and --out are required")
  try:
    counts = convert(f.release, f.split, f.out, load_class_map(f.class_map),
                     f.image_suffixes)
  except (OSError, ValueError) as e:  # DataError included
    print(f"convert_kitti360aps: {e}", file=sys.stderr)
    return 1
  print(f"{f.split}: {counts['images']} images, {counts['segments']} segments, "
        f"{counts['amodal']} amodal instances → {fileio.absolute(f.out)}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
