"""TFDS/ArrayRecord builds read back equal to the file readers, in and out of grain.

Oracle: the file readers (layouts/), which read the PNG/JPEG/JSON files
themselves; the TFDS side is built with the documented command and read
through ``tfds.data_source``. Synthpass covers KITTI-360 APS and BlendPASS,
the hand-drawn ASD fixture (tests/support/releases.py) AmodalSynthDrive.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.support.releases import ASD_H
from tests.support.releases import ASD_W
from tests.support.releases import make_asd_root
from tests.support.synthpass import make_tiny_dataset
from unlock_jax.data import pipeline
from unlock_jax.data import synthpass
from unlock_jax.data.layouts import amodalsynthdrive
from unlock_jax.data.layouts import blendpass
from unlock_jax.data.layouts import DataError
from unlock_jax.data.layouts import kitti360aps
from unlock_jax.data.tfds import builders
from unlock_jax.data.tfds import records
from unlock_jax.data.tfds import source

SCALE = 0.125
SIZES = synthpass.image_sizes(SCALE)
FOLDERS = {"kitti360aps": "KITTI360_APS", "blendpass": "BlendPASS"}
CASES = [("kitti360aps", "train", False), ("kitti360aps", "val", False),
         ("blendpass", "train", False), ("blendpass", "train", True),
         ("blendpass", "val", False)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """The tiny synthpass set and its two TFDS builds (made by the build command)."""
  tmp = tmp_path_factory.mktemp("tfds")
  root = make_tiny_dataset(str(tmp), scale=SCALE, seed=3)
  dirs = {}
  for layout, folder in FOLDERS.items():
    dirs[layout] = str(tmp / f"tfds_{layout}")
    subprocess.run([sys.executable, "-m", "unlock_jax.data.tfds.build", "--layout", layout,
                    "--manual_dir", os.path.join(root, folder), "--data_dir", dirs[layout]],
                   check=True, capture_output=True)
  return root, dirs


def file_reader(root, layout, split, hidden_gt=False):
  size = SIZES["source" if layout == "kitti360aps" else "target"]
  kw = {"hidden_gt": True} if hidden_gt else {}
  mod = kitti360aps if layout == "kitti360aps" else blendpass
  return mod.Reader(os.path.join(root, FOLDERS[layout]), split, image_size=size, **kw)


def assert_same(want, got, path="example"):
  """Recursive equality of reader outputs: types, dict keys in order, array dtypes and values."""
  assert type(got) is type(want), (path, type(want), type(got))
  if isinstance(want, np.ndarray):
    assert got.dtype == want.dtype and got.shape == want.shape, (path, want.dtype, got.dtype)
    np.testing.assert_array_equal(got, want, err_msg=path)
    assert got.flags.writeable == want.flags.writeable, path
  elif isinstance(want, dict):
    assert list(got) == list(want), (path, list(want), list(got))
    for k in want:
      assert_same(want[k], got[k], f"{path}.{k}")
  elif isinstance(want, list):
    assert len(got) == len(want), path
    for j, (w, g) in enumerate(zip(want, got)):
      assert_same(w, g, f"{path}[{j}]")
  else:
    assert got == want, (path, want, got)


@pytest.mark.parametrize("layout,split,hidden_gt", CASES)
def test_every_example_equals_the_file_readers(data, layout, split, hidden_gt):
  root, dirs = data
  want = file_reader(root, layout, split, hidden_gt)
  got = source.Reader(layout, dirs[layout], split, want.image_size, hidden_gt=hidden_gt)
  if (layout, split, hidden_gt) == ("blendpass", "train", False):
    got = pickle.loads(pickle.dumps(got))  # as a grain worker receives it
  assert len(want) > 0 and len(got) == len(want)
  assert got.names == want.names and got.image_size == want.image_size
  assert got.keys == getattr(want, "keys", want.names)
  assert_same(want.categories, got.categories, "categories")
  # The records themselves, in the reader's order.
  raw = tfds.data_source(layout, split=split, data_dir=dirs[layout], download=False)
  assert [raw[i]["name"].decode() for i in range(len(raw))] == want.names
  for i in range(len(want)):
    ex = want.load(i)
    if hidden_gt or split == "val" or layout == "kitti360aps":
      assert len(ex["modal"]) > 0  # the comparison covers instances
    assert_same(ex, got.load(i), f"{layout}/{split}[{i}]")
    assert_same(want.load_image(i), got.load_image(i), f"{layout}/{split}[{i}].image")


def test_mask_crops_round_trip():
  """Crops keep any uint8 mask exactly: empty, one pixel, full, non-binary values."""
  rng = np.random.default_rng(0)
  h, w = 7, 9
  masks = [np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8),
           np.ones((h, w), np.uint8), (rng.random((h, w)) < 0.2).astype(np.uint8) * 255]
  masks[1][6, 0] = 1
  masks[3][2, 3], masks[3][0, 8] = 7, 1
  boxes, crops = records.crop_masks(masks)
  np.testing.assert_array_equal(boxes[:3], [[0, 0, 0, 0], [6, 7, 0, 1], [0, 7, 0, 9]])
  assert crops.size == 1 + h * w + int(np.prod(boxes[3, 1::2] - boxes[3, ::2]))
  assert_same(masks, records.paste_masks(boxes, crops, h, w), "masks")
  assert records.paste_masks(*records.crop_masks([]), h, w) == []


def test_open_reader_dispatches_on_format(data):
  root, dirs = data
  r = pipeline.open_reader("blendpass", "/nonexistent", "val", SIZES["target"],
                           format="tfds", data_dir=dirs["blendpass"])
  assert isinstance(r, source.Reader) and len(r) == 3
  assert not isinstance(pipeline.open_reader("blendpass", os.path.join(root, "BlendPASS"),
                                             "val", SIZES["target"]), source.Reader)
  with pytest.raises(ValueError, match="tfds_data_dir"):
    pipeline.open_reader("blendpass", "", "val", format="tfds")
  with pytest.raises(ValueError, match="unknown data format 'zip'"):
    pipeline.open_reader("blendpass", root, "val", format="zip")


def _batches(it, n):
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_train_iterator_batches_equal_and_resume(data, process_index, process_count):
  root, dirs = data
  size = SIZES["source"]
  args = dict(batch_size=2, crop_size=(size[0], size[0]), seed=5, max_instances=8,
              process_index=process_index, process_count=process_count)
  files = pipeline.train_iterator(pipeline.open_reader("kitti360aps", os.path.join(
      root, "KITTI360_APS"), "train", size), **args)
  reader = pipeline.open_reader("kitti360aps", "", "train", size, format="tfds",
                                data_dir=dirs["kitti360aps"])
  it = pipeline.train_iterator(reader, **args)
  want = _batches(files, 4)
  got = _batches(it, 2)
  state = it.get_state()
  got += _batches(it, 2)
  for w, g in zip(want, got):
    assert_same(w, g, "batch")
  assert any(b["modal_valid"].any() for b in got)
  resumed = pipeline.train_iterator(reader, **args)
  resumed.set_state(state)
  for w, g in zip(want[2:], _batches(resumed, 2)):
    assert_same(w, g, "resumed batch")


def test_bad_requests_are_clear_errors(data, tmp_path):
  root, dirs = data
  with pytest.raises(DataError, match="unlock_jax.data.tfds.build --layout kitti360aps"):
    source.Reader("kitti360aps", str(tmp_path / "empty"), "train")
  with pytest.raises(DataError, match=r"holds 256x50 images, expected 512x100"):
    source.Reader("blendpass", dirs["blendpass"], "val", (100, 512))
  with pytest.raises(DataError, match="no hidden ground truth"):
    source.Reader("blendpass", dirs["blendpass"], "val", hidden_gt=True)
  with pytest.raises(DataError, match=r"splits \['train', 'val'\], not 'test'"):
    source.Reader("blendpass", dirs["blendpass"], "test")
  with pytest.raises(ValueError, match="unknown data layout 'coco'"):
    source.Reader("coco", dirs["blendpass"], "val")
  # Rebuilding into the same data_dir: a no-op from the same folder, an error from another.
  b = builders.prepare("blendpass", os.path.join(root, "BlendPASS"), dirs["blendpass"])
  assert b.info.splits["val"].num_examples == 3
  with pytest.raises(DataError, match="was built from"):
    builders.prepare("blendpass", os.path.join(root, "KITTI360_APS"), dirs["blendpass"])
  with pytest.raises(DataError, match="no blendpass split"):
    builders.prepare("blendpass", str(tmp_path), str(tmp_path / "out"))


@pytest.mark.parametrize("size", [None, (ASD_H // 2, ASD_W // 2)])
def test_amodalsynthdrive_build_equals_the_file_reader(tmp_path, size):
  """At the native size, and resized as a config's image_size asks (the build's --image_size)."""
  root = make_asd_root(str(tmp_path / "asd"))
  data_dir = str(tmp_path / "tfds")
  if size is None:
    builders.prepare("amodalsynthdrive", root, data_dir)
  else:  # the documented command
    subprocess.run([sys.executable, "-m", "unlock_jax.data.tfds.build", "--layout",
                    "amodalsynthdrive", "--image_size", f"{size[0]},{size[1]}",
                    "--manual_dir", root, "--data_dir", data_dir],
                   check=True, capture_output=True)
  want = amodalsynthdrive.Reader(root, "train", image_size=size)
  got = pipeline.open_reader("amodalsynthdrive", "", "train", size, format="tfds",
                             data_dir=data_dir)
  got = pickle.loads(pickle.dumps(got))  # as a grain worker receives it
  assert isinstance(got, source.Reader) and len(got) == len(want) == 2
  assert got.names == want.names and got.keys == want.keys
  assert got.image_size == want.image_size == (size or (ASD_H, ASD_W))
  assert_same(want.categories, got.categories, "categories")
  assert len(want.load(1)["amodal"]) >= 2  # the comparison covers instances
  for i in range(len(want)):
    assert_same(want.load(i), got.load(i), f"asd[{i}]")
    assert_same(want.load_image(i), got.load_image(i), f"asd[{i}].image")
  other = (ASD_H, ASD_W) if size else (ASD_H // 2, ASD_W // 2)
  with pytest.raises(DataError, match=f"rebuild with --image_size {other[0]},{other[1]}"):
    source.Reader("amodalsynthdrive", data_dir, "train", other)
  with pytest.raises(DataError, match="at image_size"):
    builders.prepare("amodalsynthdrive", root, data_dir, image_size=other)
  b = builders.prepare("amodalsynthdrive", root, data_dir, overwrite=True, image_size=other)
  assert b.info.metadata["splits"]["train"]["image_size"] == list(other)
