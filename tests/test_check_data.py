"""tools/check_data: a generated synthpass set passes; each kind of damage is reported.

The fixture is the tiny config's synthpass set (the generate stage's
writer), generated once; each test damages a copy by hand and expects the
problem it made, at the file it damaged, and nothing else. AmodalSynthDrive
is checked the same way on the hand-drawn fixture of tests/support/releases.py.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import app
from PIL import Image

from configs.asd2b import source_b5
from configs.synth import tiny
from tests.support.releases import ASD_H
from tests.support.releases import ASD_W
from tests.support.releases import make_asd_root
from tests.support.releases import rect
from tests.support.releases import rle
from unlock_jax.data import labels
from unlock_jax.data import synthpass
from unlock_jax.tools import check_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("check_data_clean")
  s = tiny.get_config().synthpass
  synthpass.generate(str(workdir / "data"), scale=s.scale, seed=s.seed,
                     num_source=dict(s.num_source), num_target=dict(s.num_target),
                     domain_shift=s.domain_shift)
  return str(workdir)


@pytest.fixture
def wd(clean, tmp_path):
  """A private copy of the clean workdir to damage."""
  dst = str(tmp_path / "w")
  shutil.copytree(clean, dst)
  return dst


def _problems(workdir, config=None, everything=True):
  config = config or tiny.get_config()
  out = {}
  for ds in check_data.data_sets(config, workdir, everything):
    report, n = check_data.check(ds, threads=4)
    out[ds.keys[0]] = (report, n)
  return out


def _all(workdir, **kwargs):
  problems = [p for r, _ in _problems(workdir, **kwargs).values() for p in r.problems]
  return ([p for p in problems if p.severity == "error"],
          [p for p in problems if p.severity == "warning"])


def _path(wd, *parts):
  return os.path.join(wd, "data", *parts)


def _edit_json(path, fn):
  with open(path) as f:
    obj = json.load(f)
  fn(obj)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_generated_synthpass_set_passes(clean):
  config = tiny.get_config()
  found = _problems(clean, config)
  s = config.synthpass
  expected = {"config.data.source": s.num_source.train, "config.data.target": s.num_target.train,
              "config.evals.source_val": s.num_source.val,
              "config.evals.target_val": s.num_target.val}
  assert {k: n for k, (_, n) in found.items()} == expected
  for key, (report, _) in found.items():
    assert report.problems == [], (key, report.problems)
  # Without --all only what tiny's stages (generate, train_source, evaluate) read.
  stages_only = check_data.data_sets(config, clean)
  assert sorted(k for ds in stages_only for k in ds.keys) == [
      "config.data.source", "config.evals.source_val", "config.evals.target_val"]


def test_ungenerated_synthpass_data_names_the_generate_stage(clean, tmp_path):
  """What main checks before any stage: a synthpass root not generated yet."""
  config = tiny.get_config()
  config.stage = "train_source,evaluate"
  fresh = str(tmp_path)
  fix = ("does not exist. This config generates its synthpass data there with the "
         "generate stage: run it first (--config.stage=generate,train_source,evaluate)")
  assert check_data.ungenerated(config, fresh) == [
      f"config.data.source, config.evals.source_val: data root "
      f"{os.path.join(fresh, 'data', 'KITTI360_APS')} {fix}",
      f"config.evals.target_val: data root {os.path.join(fresh, 'data', 'BlendPASS')} {fix}"]
  assert check_data.ungenerated(config, clean) == []  # generated already
  config.stage = "generate,train_source,evaluate"
  assert check_data.ungenerated(config, fresh) == []  # generated first
  # Real data elsewhere is not the generate stage's: no hint (check_data names it).
  config.stage = "train_source"
  config.data.source.root = str(tmp_path / "elsewhere")
  assert check_data.ungenerated(config, fresh) == []


def test_missing_data_root_names_the_config_key(wd):
  config = tiny.get_config()
  config.data.source.root = os.path.join(wd, "elsewhere")
  errors, warnings = _all(wd, config=config, everything=False)
  # The source-val evaluator follows config.data.source, so both data sets
  # (train and val splits) report the moved root.
  assert [(e.path, "does not exist" in e.message) for e in errors] == [
      (os.path.join(wd, "elsewhere"), True)] * 2
  assert any("--config.data.source.root" in e.fix for e in errors) and not warnings
  # A synthpass root in the workdir: the fix is to run the generate stage.
  shutil.rmtree(_path(wd, "BlendPASS"))
  errors, _ = _all(wd)
  assert {e.path for e in errors} == {_path(wd, "BlendPASS")}
  assert all("--config.stage=generate" in e.fix for e in errors) and len(errors) == 2
  # predict falls back to config.data.target: the fix names the key that set the root.
  config = tiny.get_config()
  config.stage = "predict"
  config.data.target.root = os.path.join(wd, "nowhere")
  errors, _ = _all(wd, config=config, everything=False)
  assert [e.path for e in errors] == [os.path.join(wd, "nowhere")]
  assert "--config.data.target.root" in errors[0].fix


def test_templated_roots_need_a_workdir():
  with pytest.raises(app.UsageError, match="--workdir"):
    check_data.data_sets(tiny.get_config(), None)


def test_missing_files(wd):
  os.remove(_path(wd, "KITTI360_APS", "Image", "val", "synthval_000001.png"))
  os.remove(_path(wd, "BlendPASS", "Instance", "val_K2B", "2__instanceTrainIds.png"))
  os.remove(_path(wd, "BlendPASS", "Panoptic", "val_trainId_K2B", "3__panoptic.png"))
  os.remove(_path(wd, "KITTI360_APS", "annotations", "train.json"))
  errors, warnings = _all(wd)
  got = sorted((e.path, e.message.split(" (")[0]) for e in errors)
  img = _path(wd, "KITTI360_APS", "Image", "val", "synthval_000001.png")
  assert got == sorted([
      (img, "missing KITTI-360 APS val image"),
      # The amodal JSON still lists the image it no longer has.
      (_path(wd, "KITTI360_APS", "annotations", "val.json"),
       "amodal entry synthval_000001.png has no image"),
      (_path(wd, "BlendPASS", "Instance", "val_K2B", "2__instanceTrainIds.png"),
       "missing instance PNG"),
      (_path(wd, "BlendPASS", "Panoptic", "val_trainId_K2B", "3__panoptic.png"),
       "missing panoptic PNG"),
      (_path(wd, "KITTI360_APS", "annotations", "train.json"), "missing amodal JSON"),
  ])
  assert not warnings


def test_wrong_image_sizes(wd):
  def widen(path, dw):
    im = Image.open(path)
    im.resize((im.size[0] + dw, im.size[1])).save(path, quality=95)
  widen(_path(wd, "BlendPASS", "leftImg8bit", "val", "2_.png"), 2)
  widen(_path(wd, "BlendPASS", "leftImg8bit", "train", "synthcity1", "synthcity1pano00001.jpg"),
        -6)
  errors, warnings = _all(wd)
  h, w = tiny.get_config().data.target.image_size
  assert sorted((os.path.basename(e.path), e.message) for e in errors) == [
      ("2_.png", f"BlendPASS val image is {w + 2}x{h}, expected {w}x{h} "
                 "(config.evals.target_val.image_size)"),
      ("synthcity1pano00001.jpg", f"BlendPASS train image is {w - 6}x{h}, expected {w}x{h} "
                                  "(config.data.target.image_size)"),
  ]
  assert not warnings
  # Without a configured size the first image's size is the reference, as in the readers.
  config = tiny.get_config()
  config.evals.target_val.image_size = ()
  found = _problems(wd, config)["config.evals.target_val"][0]
  assert [p.message for p in found.problems] == [
      f"BlendPASS val image is {w + 2}x{h}, expected {w}x{h} (the size of the first image)"]


def test_label_values_outside_the_table(wd):
  pan_json = _path(wd, "KITTI360_APS", "Panoptic", "train.json")

  def bad_category(obj):
    obj["annotations"][2]["segments_info"][0]["category_id"] = 40
    obj["categories"][13]["isthing"] = 0
  _edit_json(pan_json, bad_category)
  inst = _path(wd, "BlendPASS", "Instance", "val_K2B", "1__instanceTrainIds.png")
  arr = np.array(Image.open(inst)).astype(np.uint16)
  arr[0, :3] = 19          # not a class
  arr[1, :2] = 5001        # a stuff class with an instance number
  Image.fromarray(arr).save(inst)
  errors, warnings = _all(wd)
  with open(pan_json) as f:
    seg = json.load(f)["annotations"][2]["segments_info"][0]
  stem = "synthtrain_000002"
  assert sorted((os.path.basename(e.path), e.message) for e in errors) == sorted([
      ("train.json", f"segment {seg['id']} of {stem} has category_id 40, outside the label "
                     "table 0..17"),
      ("train.json", "category 13 (car) has isthing=0, but it is a thing class"),
      ("1__instanceTrainIds.png", "instance PNG values 19 (3 px), 5001 (2 px) are outside "
                                  "the label table"),
  ])
  assert not warnings


def test_panoptic_json_and_png_disagree(wd):
  pan_json = _path(wd, "BlendPASS", "Panoptic", "val_trainId_K2B.json")
  with open(pan_json) as f:
    segments = json.load(f)["annotations"][0]["segments_info"]
  png = _path(wd, "BlendPASS", "Panoptic", "val_trainId_K2B", "1__panoptic.png")
  ids = labels.rgb2id(np.array(Image.open(png)))
  dropped = next(s for s in segments if s["category_id"] == 2)  # a stuff segment
  changed = next(s for s in segments if s["category_id"] == 0)

  def edit(obj):
    info = obj["annotations"][0]["segments_info"]
    info.remove(next(s for s in info if s["id"] == dropped["id"]))
    next(s for s in info if s["id"] == changed["id"])["area"] += 5
  _edit_json(pan_json, edit)
  errors, warnings = _all(wd)
  n = int((ids == changed["id"]).sum())  # the oracle: the PNG's own pixel count
  assert [(e.path, e.message) for e in errors] == [
      (pan_json, f"segment {changed['id']} of 1_ has area {n + 5} but {n} pixels in {png}")]
  assert [(w.path, w.message.split(";")[0]) for w in warnings] == [
      (png, f"ids {dropped['id']} ({int((ids == dropped['id']).sum())} px) are not in 1_'s "
            f"segments_info in {pan_json}")]


def test_amodal_entries_and_ids(wd):
  amodal = _path(wd, "BlendPASS", "annotations", "val.json")
  pan_json = _path(wd, "BlendPASS", "Panoptic", "val_trainId_K2B.json")

  def add_ghost(obj):
    obj["images"].append({"id": 999, "file_name": "ghost_.png", "width": 1, "height": 1})
    obj["annotations"].append({"id": 5, "image_id": 12345, "segmentation": [[0, 0, 1, 0, 1, 1]]})
    obj["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]
  _edit_json(amodal, add_ghost)
  with open(pan_json) as f:
    pan = json.load(f)
  thing = next(s for s in pan["annotations"][1]["segments_info"]
               if s["category_id"] >= 11 and not s["iscrowd"])
  _edit_json(pan_json, lambda o: next(
      s for s in o["annotations"][1]["segments_info"] if s["id"] == thing["id"]
  ).update(amodal_id=424242))
  errors, warnings = _all(wd)
  with open(amodal) as f:
    first = json.load(f)["annotations"][0]
  assert sorted((os.path.basename(e.path), e.message.split(" (")[0]) for e in errors) == sorted([
      ("val.json", "amodal entry ghost_.png has no image"),
      ("val.json", "annotation 5 refers to image_id 12345, which is not in 'images'"),
      ("val.json", f"annotation {first['id']}"),
      ("val_trainId_K2B.json", f"segment {thing['id']} of 2_ has amodal_id 424242, which is "
                               f"not an annotation of 2_.png in {amodal}"),
  ])
  assert not warnings


def test_unreadable_and_unused_files(wd):
  png = _path(wd, "KITTI360_APS", "Panoptic", "val", "synthval_000000_panoptic.png")
  with open(png, "rb") as f:
    data = f.read()
  with open(png, "wb") as f:
    f.write(data[:len(data) // 2])
  shutil.copy(_path(wd, "KITTI360_APS", "Image", "val", "synthval_000000.png"),
              _path(wd, "KITTI360_APS", "Image", "val", "extra.png"))
  city = _path(wd, "BlendPASS", "leftImg8bit", "train", "synthcity0")
  shutil.copy(os.path.join(city, "synthcity0pano00000.jpg"), os.path.join(city, "x.png"))
  errors, warnings = _all(wd)
  assert [(e.path, e.message.split(":")[0]) for e in errors] == [
      (png, "cannot read panoptic PNG")]
  assert sorted((os.path.basename(w.path), w.message) for w in warnings) == [
      ("train", "1 entries are not <city>/<name>.jpg and are ignored: synthcity0/x.png"),
      ("val", "1 images have no annotation in "
              f"{_path(wd, 'KITTI360_APS', 'Panoptic', 'val.json')} and are not used: extra.png"),
  ]


def test_hidden_train_ground_truth_must_cover_every_panorama(wd):
  hidden = _path(wd, "BlendPASS", "_synth_gt", "Panoptic", "train_trainId_K2B.json")
  _edit_json(hidden, lambda o: o["annotations"].pop())
  errors, _ = _all(wd)
  assert [(e.path, e.message) for e in errors] == [(hidden, "covers 3 of the 4 train panoramas")]


def test_folder_of_panoramas(wd, tmp_path):
  folder = tmp_path / "mine"
  (folder / "trip").mkdir(parents=True)
  Image.new("RGB", (64, 32)).save(folder / "trip" / "a.jpg")
  Image.new("RGB", (60, 40)).save(folder / "b.png")
  (folder / "c.jpg").write_bytes(b"not a jpeg")
  config = tiny.get_config()
  config.stage = "predict"
  config.predict.images = str(folder)
  config.predict.image_size = (50, 100)
  found = _problems(wd, config, everything=False)
  assert list(found) == ["config.predict.images"]
  report, n = found["config.predict.images"]
  assert n == 3
  assert [(os.path.basename(p.path), p.severity) for p in report.problems] == [
      ("c.jpg", "error"), ("b.png", "warning")]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "unlock_jax.tools.check_data",
                         "--config", "configs/synth/tiny.py", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_command_line_reports_everything_and_exits_nonzero(wd):
  clean = _cli("--workdir", wd, "--all", "--threads", "2")
  assert clean.returncode == 0, clean.stderr[-3000:]
  assert re.search(r"4 data sets, \d+ files read: 0 errors, 0 warnings$", clean.stdout.strip())
  os.remove(_path(wd, "KITTI360_APS", "Image", "train", "synthtrain_000003.png"))
  _edit_json(_path(wd, "BlendPASS", "Panoptic", "val_trainId_K2B.json"),
             lambda o: o["annotations"][0]["segments_info"][0].update(category_id=-1))
  h, w = tiny.get_config().data.source.image_size
  # --config.x=y overrides work as in main.py: a wrong source size flags every source file.
  proc = _cli("--workdir", wd, f"--config.data.source.image_size=({h}, {w + 1})")
  assert proc.returncode == 1, proc.stderr[-3000:]
  out = proc.stdout
  assert "missing KITTI-360 APS train image" in out and "synthtrain_000003.png" in out
  assert "has category_id -1, outside the label table" in out
  assert f"is {w}x{h}, expected {w + 1}x{h} (config.data.source.image_size)" in out
  assert "fix: " in out
  # 5 train images and 6 panoptic PNGs of the wrong size, the missing image, its
  # amodal entry, the bad category: 14 errors; the size error repeats per file.
  # 14 from the damage plus 6 from source val, whose evaluator follows the
  # overridden config.data.source.image_size (its 3 examples now mis-sized).
  assert re.search(r"kitti360aps val .*\(config.evals.source_val\): 3 examples, 6 errors", out)
  assert re.search(r"3 data sets, \d+ files read: 20 errors, 0 warnings$", out.strip()), out


# --- AmodalSynthDrive: the hand-drawn fixture of tests/support/releases.py ---------------

ASD_FRAME = ("front", "seq_b", "000007")  # the drawn scene; back/seq_a/000001 is all road


def _asd_paths(root):
  gt = os.path.join(root, "train", "amodal_panoptic_seg", *ASD_FRAME)
  return (os.path.join(root, "train", "images", *ASD_FRAME) + "_rgb.jpg", gt + "_ampano.png",
          gt + "_ampano.json")


def _asd_check(root, size=(ASD_H // 2, ASD_W // 2), split="train"):
  """(severity, path relative to root, message) of every problem, and the example count."""
  where = {f: f"config.data.source.{f}" for f in ("layout", "root", "split", "image_size")}
  ds = check_data.DataSet("amodalsynthdrive", root, split, size, ["config.data.source"], where)
  report, n = check_data.check(ds, threads=2)
  return [(p.severity, os.path.relpath(p.path, root), p.message) for p in report.problems], n


@pytest.fixture
def asd_root(tmp_path):
  return make_asd_root(str(tmp_path / "AmodalSynthDrive"))


def test_amodalsynthdrive_fixture_passes_and_asd2b_selects_it(asd_root):
  config = source_b5.get_config()
  config.data.source.root = asd_root
  config.data.source.image_size = (ASD_H // 2, ASD_W // 2)  # the fixture's aspect ratio
  sets = [ds for ds in check_data.data_sets(config, None, everything=True)
          if ds.layout == "amodalsynthdrive"]
  assert [(ds.root, ds.split, ds.keys) for ds in sets] == [
      (asd_root, "train", ["config.data.source"])]
  report, n = check_data.check(sets[0], threads=2)
  assert n == 2 and report.problems == [] and report.files == 2 * 3  # image, PNG, JSON
  # asd2b's own 960x540 (16:9) distorts the fixture's 32x20 (16:10) frames: a warning.
  assert _asd_check(asd_root, size=(540, 960)) == ([(
      "warning", os.path.join("train", "images"),
      "2 images are 32x20 (aspect 1.600); they are resized to 960x540 (aspect 1.778) and "
      "distorted")], 2)


def _rewrite_png(path, fn):
  ids = np.asarray(Image.open(path)).astype(np.int32)
  Image.fromarray(fn(ids).astype(np.uint16)).save(path)


def _put(ids, rows, cols, value):
  ids = ids.copy()
  ids[rows, cols] = value
  return ids


def test_amodalsynthdrive_missing_and_unreadable_files(asd_root):
  image, png, js = _asd_paths(asd_root)
  rel = lambda p: os.path.relpath(p, asd_root)  # noqa: E731
  os.remove(image)
  os.remove(js)
  problems, n = _asd_check(asd_root)
  assert n == 2 and sorted(problems) == [
      ("error", rel(js), "missing amodal panoptic JSON"),
      ("error", rel(image), f"missing AmodalSynthDrive image of {png}")]
  with open(png, "rb") as f:
    data = f.read()
  with open(png, "wb") as f:
    f.write(data[:len(data) // 2])
  assert [(s, p, m.split(":")[0]) for s, p, m in _asd_check(asd_root)[0]
          if p == rel(png)] == [("error", rel(png), "cannot read amodal panoptic PNG")]
  # Whole folders: the fix names the split setting.
  shutil.rmtree(os.path.join(asd_root, "train", "images"))
  problems, _ = _asd_check(asd_root)
  assert ("error", os.path.join("train", "images"), "missing AmodalSynthDrive image folder") \
      in problems
  problems, n = _asd_check(asd_root, split="val")
  assert n == 0 and problems == [
      ("error", os.path.join("val", "amodal_panoptic_seg"), "missing AmodalSynthDrive label "
       "folder"), ("error", os.path.join("val", "images"), "missing AmodalSynthDrive image "
                   "folder")]
  problems, _ = _asd_check(asd_root + "_elsewhere")
  assert [(s, m) for s, _, m in problems] == [("error", "data root does not exist "
                                               "(AmodalSynthDrive: <split>/images/, "
                                               "<split>/amodal_panoptic_seg/)")]


def test_amodalsynthdrive_sizes_channels_and_label_values(asd_root):
  _, png, _ = _asd_paths(asd_root)
  rel = os.path.relpath(png, asd_root)
  _rewrite_png(png, lambda ids: _put(ids, slice(0, 1), slice(0, 3), 40))    # not a class
  _rewrite_png(png, lambda ids: _put(ids, slice(1, 2), slice(0, 2), 40001))  # nor this
  assert _asd_check(asd_root)[0] == [(
      "error", rel, "amodal panoptic PNG values 40 (3 px), 40001 (2 px) are outside "
      "AmodalSynthDrive's label table (class ids 0..36)")]
  _rewrite_png(png, lambda ids: np.pad(ids, ((0, 0), (0, 1)), mode="edge"))
  assert _asd_check(asd_root)[0] == [
      ("error", rel, f"amodal panoptic PNG is {ASD_W + 1}x{ASD_H}, its image {ASD_W}x{ASD_H}")]
  Image.new("RGB", (ASD_W, ASD_H)).save(png)
  assert _asd_check(asd_root)[0] == [
      ("error", rel, "amodal panoptic PNG has mode RGB, expected one channel (16-bit)")]


@pytest.mark.parametrize("change,severity,message", [
    (lambda info: info.pop("26001"), "error",
     "{json} has no object '26001' (an instance of its PNG)"),
    (lambda info: info.update({"24001": {"occluded": True}}), "error",
     "object '24001' in {json} is occluded but has no amodal_mask"),
    (lambda info: info.update({"27001": {"amodal_mask": rle(np.ones((4, 4), bool))}}), "error",
     "amodal_mask of object '27001' in {json} has size [4, 4], but its PNG is "
     f"{ASD_H}x{ASD_W} (rows x columns)"),
    # An amodal mask that is not a superset of its visible pixels (the truck's 16).
    (lambda info: info.update({"27001": {"amodal_mask": rle(
        rect((ASD_H, ASD_W), 0, 3, 20, 27))}}), "warning",
     "amodal masks miss visible pixels of objects 27001 (16 px)"),
    (lambda info: info.update({"99001": {"occluded": False}}), "warning",
     "objects 99001 have no pixels in {png} and are not used"),
])
def test_amodalsynthdrive_json_against_png(asd_root, change, severity, message):
  _, png, js = _asd_paths(asd_root)
  with open(js) as f:
    info = json.load(f)
  change(info)
  with open(js, "w") as f:
    json.dump(info, f)
  assert _asd_check(asd_root)[0] == [
      (severity, os.path.relpath(js, asd_root), message.format(json=js, png=png))]


def test_amodalsynthdrive_malformed_json(asd_root):
  _, _, js = _asd_paths(asd_root)
  rel = os.path.relpath(js, asd_root)
  with open(js, "w") as f:
    json.dump([1, 2], f)
  assert _asd_check(asd_root)[0] == [
      ("error", rel, "amodal panoptic JSON is a list, expected an object keyed by instance id")]
  with open(js, "w") as f:
    f.write("{not json")
  assert [(s, p, m.split(":")[0]) for s, p, m in _asd_check(asd_root)[0]] == [
      ("error", rel, "cannot parse amodal panoptic JSON")]


def test_amodalsynthdrive_files_the_reader_does_not_read(asd_root):
  """Label files off the <camera>/<sequence>/ depth, lone JSONs, unlabelled images: warnings."""
  gt = os.path.join(asd_root, "train", "amodal_panoptic_seg")
  img = os.path.join(asd_root, "train", "images")
  shutil.copy(os.path.join(gt, "back", "seq_a", "000001_ampano.png"),
              os.path.join(gt, "back", "000002_ampano.png"))
  shutil.copy(os.path.join(gt, "back", "seq_a", "000001_ampano.json"),
              os.path.join(gt, "back", "seq_a", "000003_ampano.json"))
  shutil.copy(os.path.join(img, "back", "seq_a", "000001_rgb.jpg"),
              os.path.join(img, "back", "seq_a", "000004_rgb.jpg"))
  problems, n = _asd_check(asd_root)
  seg, images = os.path.join("train", "amodal_panoptic_seg"), os.path.join("train", "images")
  assert n == 2 and sorted(problems) == [
      ("warning", seg, "1 _ampano.json files have no _ampano.png and are not used: "
                       "back/seq_a/000003_ampano.json"),
      ("warning", seg, "1 label files are not at <camera>/<sequence>/<frame>_ampano.png and "
                       "are not read: back/000002_ampano.png"),
      ("warning", images, "1 images have no _ampano.png and are not used: "
                          "back/seq_a/000004_rgb.jpg")]
