"""The checks of each data set layout, run by ``tools/check_data.py``.

Each check walks one data set and hands every finding to the report: the
readers' rules (``data/layouts/common.py``, ``amodalsynthdrive.py``), which
a reader raises on the first problem, plus what only a walk over the whole
tree sees (files no annotation uses, JSON against PNG, one size throughout).
Files are decoded in the caller's thread pool.
"""
import collections
import dataclasses
import os
from typing import Callable

from etils import epath
import numpy as np

from unlock_jax import fileio
from unlock_jax.data import labels
from unlock_jax.data.layouts import amodalsynthdrive as asd
from unlock_jax.data.layouts import blendpass
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import folder as folder_layout
from unlock_jax.tools import check_data


# --- file helpers: the readers' rules, each finding reported instead of raised ----------


def _collected(report: check_data.Report, rule, *args):
  """``rule(*args)``, or None once the problem it raised is reported."""
  try:
    return rule(*args)
  except common.DataError as e:
    report(e)
    return None


def _read_json(path: str, what: str, report: check_data.Report, fix: str):
  obj = _collected(report, common.read_json, path, what, fix)
  if obj is not None:
    report.read()
  return obj


def _size_text(hw) -> str:
  return f"{hw[1]}x{hw[0]}"


class _Size:
  """The expected (H, W): configured, or else the first image's."""

  def __init__(self, ds: check_data.DataSet):
    self.configured = ds.image_size
    self.value = ds.image_size
    self.key = ds.where["image_size"]

  def first(self, paths) -> None:
    """Without a configured size, the first readable image's header fixes it (as the readers do)."""
    for path in [] if self.value else paths:
      try:
        self.value = common.read_png_size(path, "image")
        return
      except common.DataError:
        continue

  def check(self, path: str, hw, what: str, report: check_data.Report) -> None:
    if self.value is not None and tuple(hw) != self.value:
      if self.configured:
        fix = (f"resize the file to {_size_text(self.value)}, or set --{self.key}="
               f"'({hw[0]}, {hw[1]})' if that is the size of the whole data set")
        expected = f"{_size_text(self.value)} ({self.key})"
      else:
        fix = "give every file of the data set the same size"
        expected = f"{_size_text(self.value)} (the size of the first image)"
      report.error(path, f"{what} is {_size_text(hw)}, expected {expected}", fix)


def _open(path: str, what: str, size: _Size | None, report: check_data.Report,
          missing_fix: str = "add the file"):
  """The decoded image (size-checked unless ``size`` is None), or None once reported."""
  im = _collected(report, common.open_image, path, what, missing_fix)
  if im is None:
    return None
  report.read()
  if size is not None:
    size.check(path, (im.size[1], im.size[0]), what, report)
  return im


# --- labelled splits (KITTI-360 APS, BlendPASS val, synthpass hidden train GT) ----------


@dataclasses.dataclass
class _Labelled:
  """Where one labelled split keeps its files."""
  what: str
  pan_json: str
  pan_dir: str
  image_of: Callable  # stem -> image path, or None if there is none
  amodal_json: str
  amodal_key_of: Callable  # stem -> file_name in the amodal JSON
  amodal_image_dir: str  # the amodal JSON's file_names are relative to this
  amodal_required: bool  # KITTI-360 APS: every image must be in the amodal JSON
  instance_of: Callable | None = None  # stem -> instance PNG (BlendPASS)
  image_dir: str | None = None  # images here that no annotation uses are reported
  image_ext: str = ".png"
  strict_ids: bool = False  # thing ids must be class*1000+k (the amodal PQ asserts it)
  check_images: bool = True  # False: the images were decoded by another check


def _check_amodal_images(spec: _Labelled, index: dict, annotated: set, report: check_data.Report) -> None:
  """Amodal JSON entries without an image (errors) or without a panoptic annotation."""
  path, listed = spec.amodal_json, collections.defaultdict(set)
  for name in index:
    folder, base = os.path.split(name)
    listed[folder].add(base)
  for folder, bases in sorted(listed.items()):
    present = fileio.names(os.path.join(spec.amodal_image_dir, folder))
    for base in sorted(bases):
      image = os.path.join(spec.amodal_image_dir, folder, base)
      if present is None or base not in present:
        report.error(path, f"amodal entry {os.path.join(folder, base)} has no image "
                     f"({image} does not exist)", f"remove the entry from {path} or add "
                     "the image")
      elif os.path.join(folder, base) not in annotated:
        report.warning(path, f"amodal entry {os.path.join(folder, base)} has no panoptic "
                       f"annotation in {spec.pan_json}, so it is not used",
                       "add its panoptic annotation or remove the entry")


def _check_labelled(spec: _Labelled, size: _Size, report: check_data.Report, pool) -> int:
  """Checks one labelled split; returns the number of annotated examples."""
  pan_fix = (f"{spec.what} needs {spec.pan_json} (COCO panoptic: annotations[{{file_name, "
             "segments_info}], categories), see docs/formats.md §2")
  pan = _read_json(spec.pan_json, "panoptic JSON", report, pan_fix)
  amodal = _read_json(spec.amodal_json, "amodal JSON", report,
                      f"{spec.what} needs {spec.amodal_json} (COCO instances with the "
                      "amodal polygons), see docs/formats.md §2")
  if pan is None:
    return 0
  anns = common.panoptic_annotations(pan, spec.pan_json, pan_fix, report)
  if anns is None:
    return 0
  stems = [stem for _, stem in anns]
  index = None if amodal is None else common.amodal_index(amodal, spec.amodal_json, report)
  if index is not None:
    _check_amodal_images(spec, index, {spec.amodal_key_of(s) for s in stems}, report)
  pan_files = fileio.names(spec.pan_dir)
  if pan_files is None and anns:
    report.error(spec.pan_dir, "missing panoptic PNG folder",
                 f"put the PNGs named in {spec.pan_json} there")
  if spec.image_dir is not None:
    present = fileio.names(spec.image_dir)
    if present is None:
      report.error(spec.image_dir, f"missing {spec.what} image folder",
                   f"put the images named in {spec.pan_json} there")
    else:
      annotated = set(stems)
      unused = sorted(n for n in present if n.endswith(spec.image_ext)
                      and n[:-len(spec.image_ext)] not in annotated)
      if unused:
        report.warning(spec.image_dir, f"{len(unused)} images have no annotation in "
                       f"{spec.pan_json} and are not used: {_shown(unused)}",
                       "annotate them or move them out of the split")
  size.first(filter(None, map(spec.image_of, stems)))
  jobs = [pool.submit(_check_example, spec, a, stem, size, index, pan_files, report)
          for a, stem in anns]
  for j in jobs:
    j.result()
  return len(anns)


def _check_example(spec: _Labelled, ann: dict, stem: str, size: _Size, index, pan_files,
                   report: check_data.Report) -> None:
  image = spec.image_of(stem)
  if image is None:
    report.error(spec.pan_json, f"annotation {ann['file_name']} has no image {stem}"
                 f"{spec.image_ext}", "add the image or remove the annotation")
  elif spec.check_images:
    _open(image, f"{spec.what} image", size, report,
          f"add the image or remove its annotation from {spec.pan_json}")
  segments = ann["segments_info"]
  ok_segments = common.check_segments(segments, spec.pan_json, stem, report, spec.strict_ids)
  png = os.path.join(spec.pan_dir, ann["file_name"])
  counts = None
  if pan_files is not None and ann["file_name"] not in pan_files:
    report.error(png, f"missing panoptic PNG (listed in {spec.pan_json})",
                 "add the PNG or remove the annotation")
  elif pan_files is not None:
    counts = _panoptic_counts(png, size, report)
  if spec.instance_of is not None:
    _check_instance_png(spec.instance_of(stem), size, report)
  if counts is None or not ok_segments:
    return
  # The JSON against its PNG.
  listed = set()
  for s in segments:
    sid = s["id"]
    listed.add(sid)
    n = counts.get(sid, 0)
    if "area" in s and int(s["area"]) != n:
      report.error(spec.pan_json, f"segment {sid} of {stem} has area {s['area']} but "
                   f"{n} pixels in {png}", "recompute the segment areas from the PNG "
                   "(PQ uses the JSON areas)")
    elif "area" not in s and n == 0:
      report.warning(spec.pan_json, f"segment {sid} of {stem} has no pixels in {png}",
                     "remove the segment or fix the PNG")
  unlisted = {i: c for i, c in counts.items() if i not in listed and i != labels.IGNORE}
  if unlisted:
    shown = _shown(f"{i} ({c} px)" for i, c in sorted(unlisted.items()))
    report.warning(png, f"ids {shown} are not in {stem}'s segments_info in {spec.pan_json}; "
                   "their pixels are ignored",
                   "list every segment id of the PNG in segments_info (255 is void)")
  # Thing segments against the amodal JSON.
  if index is None:
    return
  key = spec.amodal_key_of(stem)
  things = [s for s in segments if labels.is_thing(int(s["category_id"]))
            and not s["iscrowd"] and counts.get(s["id"], 0) > 0]
  if key not in index:
    if spec.amodal_required or things:
      report.error(spec.amodal_json, f"image {key} is not in the amodal JSON"
                   + (f" but has {len(things)} thing segments" if things else ""),
                   f"add {key} and its amodal polygons to 'images'/'annotations'")
    return
  for s in things:
    aid = s.get("amodal_id", 0)
    if aid not in index[key]:
      report.error(spec.pan_json, f"segment {s['id']} of {stem} has amodal_id {aid}, "
                   f"which is not an annotation of {key} in {spec.amodal_json}",
                   "point amodal_id at the annotation id of the object's amodal polygons")


def _panoptic_counts(png: str, size: _Size, report: check_data.Report) -> dict | None:
  """{segment id: pixel count} of an RGB id-encoded panoptic PNG."""
  im = _open(png, "panoptic PNG", size, report)
  if im is None:
    return None
  ids = _collected(report, common.panoptic_ids, np.asarray(im), im.mode, png)
  if ids is None:
    return None
  ids, counts = np.unique(ids, return_counts=True)
  return dict(zip(ids.tolist(), counts.tolist()))


def _check_instance_png(path: str, size: _Size, report: check_data.Report) -> None:
  im = _open(path, "instance PNG", size, report, "add <stem>_instanceTrainIds.png (train id "
             "for stuff, class*1000+k for things, 255 void)")
  if im is not None:
    common.instance_ids(np.asarray(im), im.mode, path, report)


# --- the layouts ----------------------------------------------------------------------


def _missing_root(ds: check_data.DataSet, report: check_data.Report, what: str) -> None:
  if ds.generated:
    fix = ("the generate stage writes it: run python -m unlock_jax.main with the same "
           "--config and --workdir and --config.stage=generate")
  else:
    fix = f"set --{ds.where['root']} (or the config) to the folder holding {what}"
  report.error(ds.root, f"data root does not exist ({what})", fix)


def check_kitti360aps(ds: check_data.DataSet, report: check_data.Report, pool) -> int:
  if not epath.Path(ds.root).is_dir():
    _missing_root(ds, report, "KITTI-360 APS: Panoptic/, Image/, annotations/")
    return 0
  r, s = ds.root, ds.split
  image_dir = os.path.join(r, "Image", s)
  spec = _Labelled(
      what=f"KITTI-360 APS {s}", pan_json=os.path.join(r, "Panoptic", f"{s}.json"),
      pan_dir=os.path.join(r, "Panoptic", s),
      image_of=lambda stem: os.path.join(image_dir, stem + ".png"),
      amodal_json=os.path.join(r, "annotations", f"{s}.json"),
      amodal_key_of=lambda stem: stem + ".png", amodal_image_dir=image_dir,
      amodal_required=True, image_dir=image_dir)
  return _check_labelled(spec, _Size(ds), report, pool)


def check_blendpass(ds: check_data.DataSet, report: check_data.Report, pool) -> int:
  if not epath.Path(ds.root).is_dir():
    _missing_root(ds, report, "BlendPASS: leftImg8bit/, Panoptic/, Instance/, annotations/")
    return 0
  r = ds.root
  if ds.split == "val":
    image_dir = os.path.join(r, "leftImg8bit", "val")
    spec = _Labelled(
        what="BlendPASS val", pan_json=os.path.join(r, "Panoptic", "val_trainId_K2B.json"),
        pan_dir=os.path.join(r, "Panoptic", "val_trainId_K2B"),
        image_of=lambda stem: os.path.join(image_dir, stem + ".png"),
        amodal_json=os.path.join(r, "annotations", "val.json"),
        amodal_key_of=lambda stem: stem + ".png", amodal_image_dir=image_dir,
        amodal_required=False,
        instance_of=lambda stem: os.path.join(r, "Instance", "val_K2B",
                                              stem + "_instanceTrainIds.png"),
        image_dir=image_dir, strict_ids=True)
    return _check_labelled(spec, _Size(ds), report, pool)
  if ds.split != "train":
    report.error(r, f"BlendPASS split {ds.split!r} does not exist",
                 f"set --{ds.where['split']} to 'train' or 'val'")
    return 0
  return _check_blendpass_train(ds, report, pool)


def _check_blendpass_train(ds: check_data.DataSet, report: check_data.Report, pool) -> int:
  train = os.path.join(ds.root, "leftImg8bit", "train")
  if not epath.Path(train).is_dir():
    report.error(train, "missing BlendPASS train image folder",
                 "put the unlabelled panoramas at leftImg8bit/train/<city>/<name>.jpg")
    return 0
  images, ignored = {}, []
  for city in sorted(epath.Path(train).iterdir()):
    if not city.is_dir():
      ignored.append(city.name)
      continue
    for name in sorted(fileio.names(os.path.join(train, city.name)) or ()):
      # One listing per city, no stat per file (GCS): the reader's glob rule.
      if name.endswith(".jpg"):
        images[name[:-4]] = os.path.join(train, city.name, name)
      else:
        ignored.append(f"{city.name}/{name}")
  if ignored:
    report.warning(train, f"{len(ignored)} entries are not <city>/<name>.jpg and are "
                   f"ignored: {', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}",
                   "store the panoramas as leftImg8bit/train/<city>/<name>.jpg (JPEG, "
                   "lower-case .jpg)")
  if not images:
    report.error(train, "no panoramas (<city>/<name>.jpg)",
                 "put the unlabelled panoramas at leftImg8bit/train/<city>/<name>.jpg")
    return 0
  size = _Size(ds)
  size.first(images.values())
  jobs = [pool.submit(_open, p, "BlendPASS train image", size, report)
          for p in images.values()]
  for j in jobs:
    j.result()
  hidden = os.path.join(ds.root, blendpass.HIDDEN_DIR)
  if epath.Path(hidden).is_dir():
    # synthpass keeps train ground truth apart for pseudo-label quality (opll).
    spec = _Labelled(
        what="synthpass hidden train ground truth",
        pan_json=os.path.join(hidden, "Panoptic", "train_trainId_K2B.json"),
        pan_dir=os.path.join(hidden, "Panoptic", "train_trainId_K2B"),
        image_of=images.get,
        amodal_json=os.path.join(hidden, "annotations", "train.json"),
        amodal_key_of=lambda stem: os.path.relpath(images.get(stem, stem), train),
        amodal_image_dir=train, amodal_required=False,
        instance_of=lambda stem: os.path.join(hidden, "Instance", "train_K2B",
                                              stem + "_instanceTrainIds.png"),
        image_ext=".jpg", check_images=False)
    n = _check_labelled(spec, size, report, pool)
    if n != len(images):
      report.error(spec.pan_json, f"covers {n} of the {len(images)} train panoramas",
                   "annotate every train panorama or none (regenerate the synthpass set)")
  return len(images)


def check_folder(ds: check_data.DataSet, report: check_data.Report, pool) -> int:
  if not epath.Path(ds.root).is_dir():
    report.error(ds.root, "image folder does not exist",
                 f"set --{ds.where['root']} to a folder of panoramas")
    return 0
  paths = folder_layout.image_files(ds.root)  # what the reader reads
  if not paths:
    report.error(ds.root, f"no {'/'.join(folder_layout.EXTENSIONS)} images", "add panoramas")
    return 0
  h, w = ds.image_size
  try:
    folder_layout.check_names([folder_layout.name_of(ds.root, p) for p in paths], ds.root)
  except common.DataError as e:
    report.error(ds.root, str(e), "rename the files")

  def one(path):
    try:
      rgb = folder_layout.decode(path)  # as predict reads it: EXIF orientation, RGB
    except common.DataError as e:
      report.error(path, str(e), "replace or remove the file (predict skips it)")
      return
    report.read()
    ih, iw = rgb.shape[:2]
    msg = folder_layout.aspect_problem((iw, ih), (w, h))
    if msg:
      report.warning(path, msg, f"use panoramas of the configured aspect ratio ({w / h:.2f}:1)")
  list(pool.map(one, paths))
  return len(paths)


# --- AmodalSynthDrive ------------------------------------------------------------------

_ASD_TREE = ("<root>/<split>/images/<camera>/<sequence>/<frame>_rgb.jpg and "
             "<root>/<split>/amodal_panoptic_seg/<camera>/<sequence>/<frame>_ampano.{png,json}")
_ASD_DEPTHS = ("*", "*/*", "*/*/*/*")  # label files here are not read (the reader's is */*/*)


def _shown(items, n: int = 5) -> str:
  items = list(items)
  return ", ".join(map(str, items[:n])) + (" ..." if len(items) > n else "")


def check_amodalsynthdrive(ds: check_data.DataSet, report: check_data.Report, pool) -> int:
  if not epath.Path(ds.root).is_dir():
    _missing_root(ds, report, "AmodalSynthDrive: <split>/images/, <split>/amodal_panoptic_seg/")
    return 0
  gt_dir = os.path.join(ds.root, ds.split, "amodal_panoptic_seg")
  img_dir = os.path.join(ds.root, ds.split, "images")
  present = {d: fileio.names(d) is not None for d in (gt_dir, img_dir)}
  for d, what in ((gt_dir, "label"), (img_dir, "image")):
    if not present[d]:
      report.error(d, f"missing AmodalSynthDrive {what} folder",
                   f"the tree is {_ASD_TREE}; set --{ds.where['split']} to a split the root "
                   "has (train, val, test)")
  if not present[gt_dir]:
    return 0
  stray = [p for depth in _ASD_DEPTHS for p in fileio.glob(gt_dir, depth + asd.AMPANO_SUFFIX)]
  if stray:
    report.warning(gt_dir, f"{len(stray)} label files are not at <camera>/<sequence>/<frame>"
                   f"{asd.AMPANO_SUFFIX} and are not read: "
                   f"{_shown(os.path.relpath(p, gt_dir) for p in stray)}",
                   "move them to amodal_panoptic_seg/<camera>/<sequence>/")
  pngs = fileio.glob(gt_dir, asd.LABEL_GLOB)
  if not pngs:
    report.error(gt_dir, f"no label files <camera>/<sequence>/<frame>{asd.AMPANO_SUFFIX}",
                 f"the tree is {_ASD_TREE}")
    return 0
  keys = {"/".join(p.split("/")[-3:])[:-len(asd.AMPANO_SUFFIX)]: p for p in pngs}
  labelled = set(pngs)
  lone = [p[:-len(asd.AMPANO_JSON_SUFFIX)] for p in
          fileio.glob(gt_dir, "*/*/*" + asd.AMPANO_JSON_SUFFIX)]
  lone = [j for j in lone if j + asd.AMPANO_SUFFIX not in labelled]
  if lone:
    report.warning(gt_dir, f"{len(lone)} {asd.AMPANO_JSON_SUFFIX} files have no "
                   f"{asd.AMPANO_SUFFIX} and are not used: "
                   f"{_shown(os.path.relpath(j, gt_dir) + asd.AMPANO_JSON_SUFFIX for j in lone)}",
                   "add their label PNGs or remove them")
  images = None  # keys of the images present; None: no image folder (reported)
  if present[img_dir]:
    suffix = asd.IMAGE_SUFFIX
    images = {"/".join(p.split("/")[-3:])[:-len(suffix)]
              for p in fileio.glob(img_dir, "*/*/*" + suffix)}
    unused = sorted(images - set(keys))
    if unused:
      report.warning(img_dir, f"{len(unused)} images have no {asd.AMPANO_SUFFIX} and are not "
                     f"used: {_shown(k + suffix for k in unused)}",
                     "add their labels or move them out of the split")
  jobs = [pool.submit(_check_asd_frame, ds, key, png, images, report)
          for key, png in keys.items()]
  shapes = collections.Counter(hw for hw in (j.result() for j in jobs) if hw)
  if ds.image_size:
    h, w = ds.image_size
    for (ih, iw), n in sorted(shapes.items()):
      if abs(iw / ih - w / h) > 0.01 * (w / h):
        report.warning(img_dir, f"{n} images are {iw}x{ih} (aspect {iw / ih:.3f}); they are "
                       f"resized to {w}x{h} (aspect {w / h:.3f}) and distorted",
                       f"set --{ds.where['image_size']} to a size of the images' aspect ratio")
  return len(keys)


def _check_asd_frame(ds: check_data.DataSet, key: str, png: str, images, report: check_data.Report) -> tuple | None:
  """One frame: image, label PNG (size, values) and JSON (an amodal entry per instance).

  Returns the image's (h, w), None if it cannot be read.
  """
  image = asd.image_path(ds.root, ds.split, key)
  json_path = png[:-len(asd.AMPANO_SUFFIX)] + asd.AMPANO_JSON_SUFFIX
  hw = None
  if images is not None and key not in images:
    report.error(image, f"missing AmodalSynthDrive image of {png}",
                 "add the image or remove its label files")
  elif images is not None:
    im = _open(image, "AmodalSynthDrive image", None, report)
    hw = None if im is None else (im.size[1], im.size[0])
  info = _collected(report, asd.read_info, json_path)
  if info is not None:
    report.read()
  im = _open(png, "amodal panoptic PNG", None, report, "replace it with an intact copy")
  ids = None if im is None else _collected(report, asd.ampano_ids, np.asarray(im), im.mode, png)
  if ids is None:
    return hw
  if hw is not None and ids.shape != hw:
    report.error(png, f"amodal panoptic PNG is {_size_text(ids.shape)}, its image "
                 f"{_size_text(hw)}", "give the label PNG its image's size")
    return hw
  values, counts = np.unique(ids.astype(np.int64), return_counts=True)
  classes = np.where(values >= labels.LABEL_DIVISOR, values // labels.LABEL_DIVISOR, values)
  known = np.isin(classes, list(asd.ASD_TO_TRAIN))
  if not known.all():
    bad = ", ".join(f"{v} ({c} px)" for v, c in zip(values[~known][:5], counts[~known][:5]))
    report.error(png, f"amodal panoptic PNG values {bad} are outside AmodalSynthDrive's label "
                 f"table (class ids {min(asd.ASD_TO_TRAIN)}..{max(asd.ASD_TO_TRAIN)})",
                 "pixels are ASD class ids (asd_labels.py) or class id*1000 + instance")
  if info is None:
    return hw
  # JSON against PNG: every thing instance the reader keeps needs a usable entry.
  instances = [int(v) for v, c, ok in zip(values, classes, known) if ok
               and v >= labels.LABEL_DIVISOR and asd.ASD_TO_TRAIN[int(c)] != labels.IGNORE
               and labels.is_thing(asd.ASD_TO_TRAIN[int(c)])]
  short = {}
  for v in instances:
    visible = ids == v
    try:
      amodal = asd.amodal_mask(info, v, visible, json_path)
    except common.DataError as e:  # what the reader stops on
      report.error(json_path, str(e), f"give object '{v}' an entry {{occluded, amodal_mask "
                   "(COCO RLE of the PNG's size)}")
      continue
    missed = int((visible & (amodal == 0)).sum())
    if missed:
      short[v] = missed
  if short:
    report.warning(json_path, "amodal masks miss visible pixels of objects "
                   f"{_shown(f'{v} ({n} px)' for v, n in short.items())}",
                   "an amodal mask should contain the object's visible pixels (the reader "
                   "uses it as stored)")
  in_png = {str(int(v)) for v in values}
  orphans = sorted(k for k in info if k not in in_png)
  if orphans:
    report.warning(json_path, f"objects {_shown(orphans)} have no pixels in {png} and are not "
                   "used", "remove them or fix the PNG")
  return hw
