r"""Checks the configured data sets before a run: every problem, with its file and the fix.

  python -m unlock_jax.tools.check_data --config configs/<file>.py[:arg] \
      [--workdir DIR] [--config.data.source.root=/data/APS_KITTI_360 ...] [--all]

Walks the data sets that the configured stages read (``config.stage``; with
``--all`` every data set the config names) in their on-disk layouts
(docs/formats.md §2, readers in ``unlock_jax/data/layouts``) and lists,
each with the file and how to fix it: missing folders and files, unreadable
or wrongly sized images, label values outside the 18-class table (JSON
category ids, instance PNG values), panoptic JSON segments that disagree
with their PNG (areas, ids), amodal JSON entries without images and thing
segments whose ``amodal_id`` is not in the amodal JSON. AmodalSynthDrive
trees get the same kinds of checks in their own format: label PNG and
image of the same size, PNG values in ASD's label table, every thing
instance of a PNG with a usable amodal entry in its JSON. Errors are what
would stop a stage or silently change a metric; warnings are what the
readers tolerate (files no annotation uses, PNG ids no segment lists). It
reports everything, not only the first problem, ends with a count, and
exits 1 if there is an error. Files are decoded in ``--threads`` threads;
paths go through etils.epath, so roots may be ``gs://`` URLs.
"""
import collections
import concurrent.futures
import dataclasses
import json
import os
import sys
import threading
from typing import Callable

from absl import app
from absl import flags
from etils import epath
import numpy as np
from PIL import Image

from unlock_jax import fileio
from unlock_jax import registry
from unlock_jax.data import labels
from unlock_jax.data.layouts import amodalsynthdrive as asd
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import folder as folder_layout

PANOPTIC_SUFFIX = "_panoptic.png"
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png")
HIDDEN_DIR = "_synth_gt"  # blendpass.HIDDEN_DIR (synthpass-only train ground truth)
LABEL_FIX = ("use the 18 K2B train ids 0..17 (things 11..17; table in "
             "unlock_jax/data/labels.py and docs/formats.md §1)")


@dataclasses.dataclass(frozen=True)
class Problem:
  severity: str  # "error" or "warning"
  path: str
  message: str
  fix: str


class Report:
  """Problems of one data set; safe to fill from several threads."""

  def __init__(self):
    self.problems: list[Problem] = []
    self.files = 0
    self._lock = threading.Lock()

  def error(self, path, message: str, fix: str) -> None:
    with self._lock:
      self.problems.append(Problem("error", str(path), message, fix))

  def warning(self, path, message: str, fix: str) -> None:
    with self._lock:
      self.problems.append(Problem("warning", str(path), message, fix))

  def read(self, n: int = 1) -> None:
    with self._lock:
      self.files += n

  @property
  def errors(self) -> list[Problem]:
    return [p for p in self.problems if p.severity == "error"]

  @property
  def warnings(self) -> list[Problem]:
    return [p for p in self.problems if p.severity == "warning"]


@dataclasses.dataclass
class DataSet:
  """One data set to check.

  ``keys`` are the config entries that use it; ``where`` names the config key
  that set each of layout, root, split and image_size, for the fixes.
  """
  layout: str  # "kitti360aps", "blendpass", "amodalsynthdrive" or "folder"
  root: str
  split: str
  image_size: tuple | None
  keys: list
  where: dict
  generated: bool = False  # under config.synthpass.out_dir (the generate stage writes it)

  def label(self) -> str:
    name = f"{self.layout} {self.split}" if self.split else self.layout
    return f"{name} at {self.root} ({', '.join(self.keys)})"


# --- which data sets the config uses --------------------------------------------------


def data_sets(config, workdir: str | None, everything: bool = False) -> list[DataSet]:
  """The data sets read by the stages of ``config.stage`` (or all named ones), merged."""
  stages = {s.strip() for s in config.stage.split(",") if s.strip()}
  use = lambda *names: everything or bool(stages.intersection(names))
  wanted = []  # (key, layout, root template, split, image_size, where)
  fields = ("layout", "root", "split", "image_size")
  same = lambda key: {f: f"{key}.{f}" for f in fields}
  src, tgt = config.data.source, config.data.target
  if use("train_source"):
    wanted.append(("config.data.source", src.layout, src.root, src.split, src.image_size,
                   same("config.data.source")))
  if use("adapt") and not config.predict.images:  # else adapt reads predict's folder
    wanted.append(("config.data.target", tgt.layout, tgt.root, "train", tgt.image_size,
                   same("config.data.target")))
  adapt_evals = set(config.adapt.get("evals", ()) or ())
  for name, ev in config.evals.items():
    if use("evaluate") or (name in adapt_evals and use("adapt")):
      wanted.append((f"config.evals.{name}", ev.layout, ev.root, ev.split,
                     ev.get("image_size"), same(f"config.evals.{name}")))
  if use("predict", "opll", "adcl_pool", "adapt", "predict_adapted"):
    p = config.predict  # what adapt and predict_adapted read too (stages/adapt.py)
    # Empty predict entries fall back to config.data.target (stages/predict.py).
    where = {f: f"config.predict.{f}" if p[f] or f == "split" else f"config.data.target.{f}"
             for f in fields}
    size = tuple(p.image_size or tgt.image_size)
    if p.images:
      wanted.append(("config.predict.images", "folder", p.images, "", size,
                     where | {"root": "config.predict.images"}))
    else:
      wanted.append(("config.predict", p.layout or tgt.layout, p.root or tgt.root, p.split,
                     size, where))
  templated = [k for k, _, root, _, _, _ in wanted if "{workdir}" in str(root)]
  if templated and not workdir:
    raise app.UsageError(f"{', '.join(templated)} contain {{workdir}}: pass --workdir "
                         "(the run's workdir)")
  synth = (fileio.resolve(config.synthpass.out_dir, workdir) if workdir
           or "{workdir}" not in config.synthpass.out_dir else None)
  merged: dict = {}
  for key, layout, root, split, size, where in wanted:
    root = fileio.resolve(root, workdir or "")
    if not fileio.is_url(root):
      root = os.path.normpath(os.path.abspath(root))
    size = tuple(int(v) for v in size) if size else None
    ident = (layout, root, split, size)
    if ident in merged:
      merged[ident].keys.append(key)
    else:
      generated = synth is not None and (root + "/").startswith(synth.rstrip("/") + "/")
      merged[ident] = DataSet(layout, root, split, size, [key], where, generated)
  return list(merged.values())


def ungenerated(config, workdir: str) -> list[str]:
  """One line per data set the stages of ``config.stage`` read that the ``generate``
  stage writes (under ``config.synthpass.out_dir``) but has not written yet,
  unless ``generate`` is in that list: the fix before any stage starts."""
  stages = [s.strip() for s in config.stage.split(",") if s.strip()]
  if "generate" in stages:
    return []
  missing: dict = {}  # root -> the config keys reading it (any split)
  for ds in data_sets(config, workdir):
    if ds.generated and not fileio.isdir(ds.root):
      missing.setdefault(ds.root, []).extend(ds.keys)
  return [f"{', '.join(keys)}: data root {root} does not exist. This config generates "
          "its synthpass data there with the generate stage: run it first "
          f"(--config.stage=generate,{','.join(stages)})" for root, keys in missing.items()]


# --- file helpers ---------------------------------------------------------------------


def _listdir(path: str) -> set | None:
  """Names in a folder (one listing instead of a check per file), or None if it is missing."""
  return fileio.names(path)


def _open_image(path: str) -> Image.Image:
  """Decodes the whole file (a truncated file fails here, as it would in training)."""
  with epath.Path(path).open("rb") as f:
    im = Image.open(f)
    im.load()
  return im


def _read_json(path: str, what: str, report: Report, fix: str):
  p = epath.Path(path)
  if not p.exists():
    report.error(path, f"missing {what}", fix)
    return None
  report.read()
  try:
    return json.loads(p.read_text())
  except (OSError, ValueError, UnicodeDecodeError) as e:
    report.error(path, f"cannot parse {what}: {e}", "rewrite it as valid JSON (UTF-8)")
    return None


def _size_text(hw) -> str:
  return f"{hw[1]}x{hw[0]}"


class _Size:
  """The expected (H, W): configured, or else the first image's."""

  def __init__(self, ds: DataSet):
    self.configured = ds.image_size
    self.value = ds.image_size
    self.key = ds.where["image_size"]

  def first(self, paths) -> None:
    """Without a configured size, the first readable image's header fixes it (as the readers do)."""
    for path in [] if self.value else paths:
      try:
        with epath.Path(path).open("rb") as f:
          w, h = Image.open(f).size
      except (OSError, ValueError, SyntaxError):
        continue
      self.value = (h, w)
      return

  def check(self, path: str, hw, what: str, report: Report) -> None:
    if self.value is not None and tuple(hw) != self.value:
      if self.configured:
        fix = (f"resize the file to {_size_text(self.value)}, or set --{self.key}="
               f"'({hw[0]}, {hw[1]})' if that is the size of the whole data set")
        expected = f"{_size_text(self.value)} ({self.key})"
      else:
        fix = "give every file of the data set the same size"
        expected = f"{_size_text(self.value)} (the size of the first image)"
      report.error(path, f"{what} is {_size_text(hw)}, expected {expected}", fix)


def _check_image(path: str, what: str, size: _Size, report: Report,
                 missing_fix: str = "add the file") -> tuple | None:
  """Decodes an image; returns its (h, w) or None after reporting why it cannot be read."""
  try:
    im = _open_image(path)
  except FileNotFoundError:
    report.error(path, f"missing {what}", missing_fix)
    return None
  except (OSError, ValueError, SyntaxError) as e:
    report.error(path, f"cannot read {what}: {e}", "replace the file with an intact copy")
    return None
  report.read()
  hw = (im.size[1], im.size[0])
  size.check(path, hw, what, report)
  return hw


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


def _check_categories(cats, path: str, report: Report) -> None:
  if not isinstance(cats, list):
    report.error(path, "'categories' is not a list", "list the 18 classes as "
                 "{id, name, isthing}")
    return
  seen = set()
  for c in cats:
    if not isinstance(c, dict) or "id" not in c:
      report.error(path, f"category entry {c!r} has no 'id'", "give every category an id")
      continue
    cid = c["id"]
    if not isinstance(cid, int) or not 0 <= cid < labels.NUM_CLASSES:
      report.error(path, f"category id {cid!r} is outside the label table 0..17", LABEL_FIX)
      continue
    seen.add(cid)
    if "isthing" in c and bool(c["isthing"]) != bool(labels.is_thing(cid)):
      report.error(path, f"category {cid} ({labels.CLASS_NAMES[cid]}) has isthing="
                   f"{c['isthing']}, but it is a {'thing' if labels.is_thing(cid) else 'stuff'}"
                   " class", "set isthing to 1 for ids 11..17 and 0 for ids 0..10")
  missing = sorted(set(range(labels.NUM_CLASSES)) - seen)
  if missing:
    report.warning(path, f"'categories' lacks ids {missing}",
                   "list all 18 classes (PQ averages over the listed categories)")


def _amodal_index(spec: _Labelled, amodal, report: Report, annotated: set) -> dict | None:
  """file_name -> {annotation id: annotation}; reports structure problems and orphans."""
  path = spec.amodal_json
  if not isinstance(amodal, dict) or not {"images", "annotations"} <= set(amodal):
    report.error(path, "amodal JSON needs 'images' and 'annotations' lists",
                 "write it in the COCO instance format (images[{id, file_name}], "
                 "annotations[{id, image_id, segmentation}])")
    return None
  names, index = {}, {}
  for img in amodal["images"]:
    if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
      report.error(path, f"image entry {img!r} needs 'id' and 'file_name'",
                   "give every image entry its id and file_name")
      continue
    names[img["id"]] = img["file_name"]
    index.setdefault(img["file_name"], {})
  listed = collections.defaultdict(set)
  for name in index:
    folder, base = os.path.split(name)
    listed[folder].add(base)
  for folder, bases in sorted(listed.items()):
    present = _listdir(os.path.join(spec.amodal_image_dir, folder))
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
  for a in amodal["annotations"]:
    if not isinstance(a, dict) or not {"id", "image_id", "segmentation"} <= set(a):
      report.error(path, f"annotation {str(a)[:80]} needs 'id', 'image_id' and "
                   "'segmentation'", "complete the annotation")
      continue
    if a["image_id"] not in names:
      report.error(path, f"annotation {a['id']} refers to image_id {a['image_id']!r}, "
                   "which is not in 'images'", "add the image entry or remove the annotation")
      continue
    bad = _polygon_problem(a["segmentation"])
    if bad:
      report.error(path, f"annotation {a['id']} ({names[a['image_id']]}): {bad}",
                   "write polygons as [[x1, y1, x2, y2, x3, y3, ...], ...] with at least "
                   "3 points each (or a COCO RLE {size, counts})")
    index[names[a["image_id"]]][a["id"]] = a
  return index


def _polygon_problem(seg) -> str | None:
  if isinstance(seg, dict):
    return None if {"size", "counts"} <= set(seg) else "RLE segmentation lacks size/counts"
  if not isinstance(seg, list):
    return f"segmentation is a {type(seg).__name__}, not a list of polygons"
  for poly in seg:
    if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
        or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in poly)):
      return f"polygon {str(poly)[:60]} is not an even list of >= 6 finite numbers"
  return None


def _check_labelled(spec: _Labelled, size: _Size, report: Report, pool) -> int:
  """Checks one labelled split; returns the number of annotated examples."""
  pan_fix = (f"{spec.what} needs {spec.pan_json} (COCO panoptic: annotations[{{file_name, "
             "segments_info}], categories), see docs/formats.md §2")
  pan = _read_json(spec.pan_json, "panoptic JSON", report, pan_fix)
  amodal = _read_json(spec.amodal_json, "amodal JSON", report,
                      f"{spec.what} needs {spec.amodal_json} (COCO instances with the "
                      "amodal polygons), see docs/formats.md §2")
  if pan is None:
    return 0
  if not isinstance(pan, dict) or not {"annotations", "categories"} <= set(pan):
    report.error(spec.pan_json, "panoptic JSON needs 'annotations' and 'categories'", pan_fix)
    return 0
  _check_categories(pan["categories"], spec.pan_json, report)
  anns = []
  for a in pan["annotations"]:
    if not isinstance(a, dict) or not {"file_name", "segments_info"} <= set(a):
      report.error(spec.pan_json, f"annotation {str(a)[:80]} needs 'file_name' and "
                   "'segments_info'", "complete the annotation")
    elif not str(a["file_name"]).endswith(PANOPTIC_SUFFIX):
      report.error(spec.pan_json, f"annotation file_name {a['file_name']!r} does not end with "
                   f"{PANOPTIC_SUFFIX!r}", "name panoptic PNGs <image stem>_panoptic.png")
    else:
      anns.append(a)
  stems = [a["file_name"][:-len(PANOPTIC_SUFFIX)] for a in anns]
  index = None
  if amodal is not None:
    index = _amodal_index(spec, amodal, report,
                          {spec.amodal_key_of(s) for s in stems})
  pan_files = _listdir(spec.pan_dir)
  if pan_files is None and anns:
    report.error(spec.pan_dir, "missing panoptic PNG folder",
                 f"put the PNGs named in {spec.pan_json} there")
  if spec.image_dir is not None:
    present = _listdir(spec.image_dir)
    if present is None:
      report.error(spec.image_dir, f"missing {spec.what} image folder",
                   f"put the images named in {spec.pan_json} there")
    else:
      annotated = set(stems)
      unused = sorted(n for n in present if n.endswith(spec.image_ext)
                      and n[:-len(spec.image_ext)] not in annotated)
      if unused:
        report.warning(spec.image_dir, f"{len(unused)} images have no annotation in "
                       f"{spec.pan_json} and are not used: {', '.join(unused[:5])}"
                       f"{' ...' if len(unused) > 5 else ''}",
                       "annotate them or move them out of the split")
  size.first(filter(None, map(spec.image_of, stems)))
  jobs = [pool.submit(_check_example, spec, a, stem, size, index, pan_files, report)
          for a, stem in zip(anns, stems)]
  for j in jobs:
    j.result()
  return len(anns)


def _check_example(spec: _Labelled, ann: dict, stem: str, size: _Size, index, pan_files,
                   report: Report) -> None:
  image = spec.image_of(stem)
  if image is None:
    report.error(spec.pan_json, f"annotation {ann['file_name']} has no image {stem}"
                 f"{spec.image_ext}", "add the image or remove the annotation")
  elif spec.check_images:
    _check_image(image, f"{spec.what} image", size, report,
                 f"add the image or remove its annotation from {spec.pan_json}")
  segments = ann["segments_info"]
  ok_segments = _check_segments(spec, stem, segments, report)
  png = os.path.join(spec.pan_dir, ann["file_name"])
  counts = None
  if pan_files is not None and ann["file_name"] not in pan_files:
    report.error(png, f"missing panoptic PNG (listed in {spec.pan_json})",
                 "add the PNG or remove the annotation")
  elif pan_files is not None:
    counts = _panoptic_counts(png, spec, size, report)
  if spec.instance_of is not None:
    _check_instance_png(spec.instance_of(stem), spec, size, report)
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
    shown = ", ".join(f"{i} ({c} px)" for i, c in sorted(unlisted.items())[:5])
    report.warning(png, f"ids {shown}{' ...' if len(unlisted) > 5 else ''} are not in "
                   f"{stem}'s segments_info in {spec.pan_json}; their pixels are ignored",
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


def _check_segments(spec: _Labelled, stem: str, segments, report: Report) -> bool:
  """Fields, ids and label values of one segments_info; False if unusable."""
  if not isinstance(segments, list):
    report.error(spec.pan_json, f"segments_info of {stem} is not a list",
                 "write segments_info as a list of segments")
    return False
  ok, ids = True, set()
  for s in segments:
    if not isinstance(s, dict) or not {"id", "category_id", "iscrowd"} <= set(s):
      report.error(spec.pan_json, f"segment {str(s)[:80]} of {stem} needs 'id', "
                   "'category_id' and 'iscrowd'", "complete the segment")
      ok = False
      continue
    sid, cat = s["id"], s["category_id"]
    if sid in ids:
      report.error(spec.pan_json, f"segment id {sid} appears twice in {stem}",
                   "give every segment of an image its own id")
    ids.add(sid)
    if not isinstance(cat, int) or not 0 <= cat < labels.NUM_CLASSES:
      report.error(spec.pan_json, f"segment {sid} of {stem} has category_id {cat!r}, "
                   "outside the label table 0..17", LABEL_FIX)
      ok = False
      continue
    if labels.is_thing(cat) and not s["iscrowd"] and not (
        sid // labels.LABEL_DIVISOR == cat and sid % labels.LABEL_DIVISOR >= 1):
      msg = (f"thing segment {sid} of {stem} (category {cat}) does not have the id "
             f"{cat}*1000+k")
      fix = "number thing segments class*1000 + k, k >= 1 (docs/formats.md §1)"
      (report.error if spec.strict_ids else report.warning)(spec.pan_json, msg, fix)
  return ok


def _panoptic_counts(png: str, spec: _Labelled, size: _Size, report: Report) -> dict | None:
  """{segment id: pixel count} of an RGB id-encoded panoptic PNG."""
  try:
    im = _open_image(png)
  except (OSError, ValueError, SyntaxError) as e:
    report.error(png, f"cannot read panoptic PNG: {e}", "replace it with an intact copy")
    return None
  report.read()
  arr = np.asarray(im)
  size.check(png, arr.shape[:2], "panoptic PNG", report)
  if arr.ndim != 3 or arr.shape[2] != 3:
    report.error(png, f"panoptic PNG has mode {im.mode}, expected RGB (id = R + 256 G + "
                 "256^2 B)", "write the panoptic PNG as 8-bit RGB")
    return None
  ids, counts = np.unique(labels.rgb2id(arr), return_counts=True)
  return dict(zip(ids.tolist(), counts.tolist()))


def _check_instance_png(path: str, spec: _Labelled, size: _Size, report: Report) -> None:
  try:
    im = _open_image(path)
  except FileNotFoundError:
    report.error(path, "missing instance PNG", "add <stem>_instanceTrainIds.png "
                 "(train id for stuff, class*1000+k for things, 255 void)")
    return
  except (OSError, ValueError, SyntaxError) as e:
    report.error(path, f"cannot read instance PNG: {e}", "replace it with an intact copy")
    return
  report.read()
  arr = np.asarray(im)
  size.check(path, arr.shape[:2], "instance PNG", report)
  if arr.ndim != 2:
    report.error(path, f"instance PNG has mode {im.mode}, expected one channel (16-bit)",
                 "write it as a single-channel 16-bit PNG")
    return
  values, counts = np.unique(arr.astype(np.int64), return_counts=True)
  cls = np.where(values >= labels.LABEL_DIVISOR, values // labels.LABEL_DIVISOR, values)
  good = np.where(values >= labels.LABEL_DIVISOR, labels.is_thing(cls)
                  & (values % labels.LABEL_DIVISOR >= 1),
                  (values < labels.NUM_CLASSES) | (values == labels.IGNORE))
  if not good.all():
    bad = ", ".join(f"{v} ({c} px)" for v, c in zip(values[~good][:5], counts[~good][:5]))
    report.error(path, f"instance PNG values {bad} are outside the label table",
                 "pixels are train ids 0..17, 255 (void) or class*1000+k for the thing "
                 "classes 11..17")


# --- the layouts ----------------------------------------------------------------------


def _missing_root(ds: DataSet, report: Report, what: str) -> None:
  if ds.generated:
    fix = ("the generate stage writes it: run python -m unlock_jax.main with the same "
           "--config and --workdir and --config.stage=generate")
  else:
    fix = f"set --{ds.where['root']} (or the config) to the folder holding {what}"
  report.error(ds.root, f"data root does not exist ({what})", fix)


def check_kitti360aps(ds: DataSet, report: Report, pool) -> int:
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


def check_blendpass(ds: DataSet, report: Report, pool) -> int:
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


def _check_blendpass_train(ds: DataSet, report: Report, pool) -> int:
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
    for name in sorted(_listdir(os.path.join(train, city.name)) or ()):
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
  jobs = [pool.submit(_check_image, p, "BlendPASS train image", size, report)
          for p in images.values()]
  for j in jobs:
    j.result()
  hidden = os.path.join(ds.root, HIDDEN_DIR)
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


def check_folder(ds: DataSet, report: Report, pool) -> int:
  if not epath.Path(ds.root).is_dir():
    report.error(ds.root, "image folder does not exist",
                 f"set --{ds.where['root']} to a folder of panoramas")
    return 0
  paths = folder_layout.image_files(ds.root)  # what the reader reads
  if not paths:
    report.error(ds.root, f"no {'/'.join(FOLDER_EXTENSIONS)} images", "add panoramas")
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


def check_amodalsynthdrive(ds: DataSet, report: Report, pool) -> int:
  if not epath.Path(ds.root).is_dir():
    _missing_root(ds, report, "AmodalSynthDrive: <split>/images/, <split>/amodal_panoptic_seg/")
    return 0
  gt_dir = os.path.join(ds.root, ds.split, "amodal_panoptic_seg")
  img_dir = os.path.join(ds.root, ds.split, "images")
  present = {d: _listdir(d) is not None for d in (gt_dir, img_dir)}
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


def _check_asd_frame(ds: DataSet, key: str, png: str, images, report: Report) -> tuple | None:
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
    try:
      im = _open_image(image)
    except (OSError, ValueError, SyntaxError) as e:
      report.error(image, f"cannot read AmodalSynthDrive image: {e}",
                   "replace the file with an intact copy")
    else:
      report.read()
      hw = (im.size[1], im.size[0])
  info = _read_json(json_path, "amodal panoptic JSON", report,
                    f"add {os.path.basename(json_path)} ({{instance id: {{occluded, "
                    "amodal_mask}}}}) or remove the label PNG")
  if info is not None and not isinstance(info, dict):
    report.error(json_path, f"amodal panoptic JSON is a {type(info).__name__}, expected an "
                 "object keyed by instance id", "write {\"<id*1000+k>\": {occluded, "
                 "amodal_mask}, ...}")
    info = None
  try:
    im = _open_image(png)
  except (OSError, ValueError, SyntaxError) as e:
    report.error(png, f"cannot read amodal panoptic PNG: {e}", "replace it with an intact copy")
    return hw
  report.read()
  ids = np.asarray(im)
  if ids.ndim != 2:
    report.error(png, f"amodal panoptic PNG has mode {im.mode}, expected one channel (16-bit)",
                 "write it as a single-channel 16-bit PNG")
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


# The layouts of layouts.LAYOUTS, and a folder of panoramas (config.predict.images).
CHECKERS = registry.Registry("data layout", {
    "kitti360aps": check_kitti360aps, "blendpass": check_blendpass,
    "amodalsynthdrive": check_amodalsynthdrive, "folder": check_folder})


def check(ds: DataSet, threads: int = 16) -> tuple[Report, int]:
  """All problems of one data set, and its number of examples."""
  report = Report()
  if ds.layout not in CHECKERS:
    report.error(ds.root, CHECKERS.unknown(ds.layout),
                 f"set --{ds.where['layout']} to one of them")
    return report, 0
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    n = CHECKERS.get(ds.layout)(ds, report, pool)
  report.problems.sort(key=lambda p: (p.severity != "error", p.path, p.message))
  return report, n


def _plural(n: int, word: str) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


def run(config, workdir: str | None, everything: bool = False, threads: int = 16,
        out=sys.stdout) -> int:
  """Checks and prints; returns the number of errors."""
  sets = data_sets(config, workdir, everything)
  if not sets:
    print(f"check_data: the stages {config.stage!r} read no data set (use --all)", file=out)
    return 0
  errors = warnings = files = 0
  for ds in sets:
    report, n = check(ds, threads)
    errors += len(report.errors)
    warnings += len(report.warnings)
    files += report.files
    print(f"check_data: {ds.label()}: {_plural(n, 'example')}, "
          f"{_plural(len(report.errors), 'error')}, "
          f"{_plural(len(report.warnings), 'warning')}", file=out)
    for p in report.problems:
      print(f"  {p.severity.upper()} {p.path}: {p.message}\n    fix: {p.fix}", file=out)
  print(f"check_data: {_plural(len(sets), 'data set')}, {_plural(files, 'file')} read: "
        f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}", file=out)
  return errors


def _define_flags() -> None:
  """Only when run as a program: unlock_jax.main defines --config/--workdir too."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Expands {workdir} in the configured roots (configs "
                      "whose data the generate stage writes into the workdir).")
  flags.DEFINE_bool("all", False, "Check every data set the config names, not only those "
                    "the stages in config.stage read.")
  flags.DEFINE_integer("threads", 16, "Files decoded in parallel.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  workdir = fileio.absolute(f.workdir) if f.workdir else None
  return 1 if run(f.config, workdir, f.all, f.threads) else 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
