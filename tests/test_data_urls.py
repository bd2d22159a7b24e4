"""Data roots as ``gs://`` URLs: generated, converted, listed, read and checked through epath.

``gs://`` is served from memory by each of epath's backends (tests/fake_gcs.py).
Oracles: the same data made on the local disk, read by the same readers
there; files on the URL file system are compared byte for byte through
tf.io.gfile / the memory store directly, not through the code under test.
"""
import io
import os
import shutil

import numpy as np
import pytest

from configs.synth import tiny
from tests.support.fake_gcs import gcs  # pylint: disable=unused-import  (the fixture)
from tests.support.releases import make_asd_root
from unlock_jax.data import synthpass
from unlock_jax.data.layouts import amodalsynthdrive
from unlock_jax.data.layouts import blendpass
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import folder
from unlock_jax.data.layouts import kitti360aps
from unlock_jax.data.tfds import builders
from unlock_jax.data.tfds import source
from unlock_jax.tools import check_data
from unlock_jax.tools import convert_kitti360aps

SETTINGS = tiny.get_config().synthpass
SIZES = synthpass.image_sizes(SETTINGS.scale)
FOLDERS = {"kitti360aps": ("KITTI360_APS", kitti360aps, "source"),
           "blendpass": ("BlendPASS", blendpass, "target")}
SPLITS = [("kitti360aps", "train", False), ("kitti360aps", "val", False),
          ("blendpass", "train", False), ("blendpass", "train", True),
          ("blendpass", "val", False)]


def _generate(out_dir):
  return synthpass.generate(out_dir, scale=SETTINGS.scale, seed=SETTINGS.seed,
                            num_source=dict(SETTINGS.num_source),
                            num_target=dict(SETTINGS.num_target),
                            domain_shift=SETTINGS.domain_shift)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
  """tiny's synthpass set on the local disk, as the generate stage writes it."""
  workdir = str(tmp_path_factory.mktemp("urls_local"))
  _generate(os.path.join(workdir, "data"))
  return workdir


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, fs in os.walk(root) for f in fs)


def _assert_same(want, got, where):
  """Equal values, and equal dtypes for every array (np.testing.assert_equal ignores them)."""
  np.testing.assert_equal(got, want, err_msg=where)
  for k, v in want.items():
    if isinstance(v, np.ndarray):
      assert got[k].dtype == v.dtype, (where, k)


def _data_set(layout, root, split, size, key="config.data.source"):
  where = {f: f"{key}.{f}" for f in ("layout", "root", "split", "image_size")}
  return check_data.DataSet(layout, root, split, size, [key], where)


def _readers(root, layout, split, hidden_gt):
  folder_name, mod, domain = FOLDERS[layout]
  kw = {"hidden_gt": True} if hidden_gt else {}
  return mod.Reader(os.path.join(root, folder_name), split, image_size=SIZES[domain], **kw)


def test_synthpass_on_a_url_reads_and_checks_as_on_disk(gcs, local):
  workdir = f"{gcs.bucket}/run"
  summary = _generate(f"{workdir}/data")
  assert summary["root"] == f"{workdir}/data" and summary["generated"] > 0
  # Every file, byte for byte, as generated locally.
  for rel in _files(os.path.join(local, "data")):
    with open(os.path.join(local, "data", rel), "rb") as f:
      assert gcs.read(f"{workdir}/data/{rel}") == f.read(), rel
  # A second run finds every scene complete.
  assert _generate(f"{workdir}/data")["generated"] == 0
  for layout, split, hidden in SPLITS:
    want = _readers(os.path.join(local, "data"), layout, split, hidden)
    got = _readers(f"{workdir}/data", layout, split, hidden)
    assert got.names == want.names and getattr(got, "keys", 0) == getattr(want, "keys", 0)
    assert len(want) > 0 and got.categories == want.categories
    for i in range(len(want)):
      _assert_same(want.load(i), got.load(i), f"{layout}/{split}[{i}]")
  # check_data on the URL workdir: every data set of the config, no problem.
  sets = check_data.data_sets(tiny.get_config(), workdir, everything=True)
  assert len(sets) == 4 and all(ds.root.startswith(workdir) and ds.generated for ds in sets)
  for ds in sets:
    report, n = check_data.check(ds, threads=2)
    assert n > 0 and report.problems == [], (ds.label(), report.problems)
    assert report.files > 0


def test_missing_url_files_are_named(gcs, local, tmp_path):
  """A root with a file gone: the reader and check_data name the URL."""
  copy = str(tmp_path / "KITTI360_APS")
  shutil.copytree(os.path.join(local, "data", "KITTI360_APS"), copy)
  os.remove(os.path.join(copy, "Image", "val", "synthval_000001.png"))
  root = f"{gcs.bucket}/data/KITTI360_APS"
  gcs.upload(copy, root)
  gone = f"{root}/Image/val/synthval_000001.png"
  with pytest.raises(common.DataError, match=f"references a missing image {gone}"):
    kitti360aps.Reader(root, "val", image_size=SIZES["source"])
  ds = _data_set("kitti360aps", root, "val", SIZES["source"])
  report, n = check_data.check(ds, threads=2)
  assert n == SETTINGS.num_source.val
  assert sorted((p.path, p.message.split(" (")[0]) for p in report.problems) == [
      (f"{root}/Image/val/synthval_000001.png", "missing KITTI-360 APS val image"),
      (f"{root}/annotations/val.json", "amodal entry synthval_000001.png has no image")]


def test_amodalsynthdrive_and_folder_roots_on_a_url(gcs, tmp_path):
  local = make_asd_root(str(tmp_path / "asd"))
  url = f"{gcs.bucket}/AmodalSynthDrive"
  gcs.upload(local, url)
  for size in (None, (10, 16)):
    want = amodalsynthdrive.Reader(local, "train", image_size=size)
    got = amodalsynthdrive.Reader(url, "train", image_size=size)
    assert got.keys == want.keys == ["back/seq_a/000001", "front/seq_b/000007"]
    for i in range(len(want)):
      _assert_same(want.load(i), got.load(i), f"asd[{i}] at {size}")
  ds = _data_set("amodalsynthdrive", url, "train", (10, 16))
  report, n = check_data.check(ds, threads=2)
  assert n == 2 and report.problems == []
  # A folder of panoramas (predict.images) under a URL: the same files, images, order.
  want = folder.Reader(os.path.join(local, "train", "images"), (8, 16))
  got = folder.Reader(f"{url}/train/images", (8, 16))
  assert got.keys == want.keys == ["back/seq_a/000001_rgb.jpg", "front/seq_b/000007_rgb.jpg"]
  for i in range(len(want)):
    np.testing.assert_array_equal(got.load_image(i), want.load_image(i))


def test_converter_reads_and_writes_urls(gcs, tmp_path):
  """The KITTI-360-APS converter on an amodal panoptic release (ASD's format) at a URL."""
  release = make_asd_root(str(tmp_path / "release"))
  gcs.upload(release, f"{gcs.bucket}/release")
  local_out = str(tmp_path / "out")
  cmap = convert_kitti360aps.load_class_map("asd")
  want = convert_kitti360aps.convert(release, "train", local_out, cmap)
  got = convert_kitti360aps.convert(f"{gcs.bucket}/release", "train", f"{gcs.bucket}/out", cmap)
  assert got == want and want["images"] == 2
  for rel in _files(local_out):
    with open(os.path.join(local_out, rel), "rb") as f:
      assert gcs.read(f"{gcs.bucket}/out/{rel}") == f.read(), rel


def test_torch_checkpoint_at_a_url(gcs, tmp_path):
  torch = pytest.importorskip("torch")
  from unlock_jax.tools import convert_torch  # pylint: disable=g-import-not-at-top
  sd = {"backbone.w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
  buf = io.BytesIO()
  torch.save({"state_dict": sd}, buf)
  gcs.write(f"{gcs.bucket}/ckpt/model.pth", buf.getvalue())
  got = convert_torch.read_pth(f"{gcs.bucket}/ckpt/model.pth")
  assert list(got) == ["backbone.w"]
  np.testing.assert_array_equal(got["backbone.w"], np.arange(6, dtype=np.float32).reshape(2, 3))
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    convert_torch.read_pth(f"{gcs.bucket}/ckpt/missing.pth")


def test_tfds_build_from_a_url_manual_dir(gcs, tmp_path):
  local = make_asd_root(str(tmp_path / "asd"))
  gcs.upload(local, f"{gcs.bucket}/asd")
  data_dir = str(tmp_path / "tfds")
  b = builders.prepare("amodalsynthdrive", f"{gcs.bucket}/asd", data_dir, image_size=(10, 16))
  assert b.info.metadata["manual_dir"] == f"{gcs.bucket}/asd"
  want = amodalsynthdrive.Reader(local, "train", image_size=(10, 16))
  got = source.Reader("amodalsynthdrive", data_dir, "train", (10, 16))
  assert got.keys == want.keys
  for i in range(len(want)):
    _assert_same(want.load(i), got.load(i), f"asd[{i}]")
