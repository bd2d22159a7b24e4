"""A folder of one's own panoramas: names, colour modes, unreadable files, adaptation.

The reader's conversions are checked against numpy written here (16-bit
grayscale, alpha, palettes with transparency, CMYK, YCbCr, 1-bit, EXIF
orientation); then ``configs/own_panoramas.py`` runs predict → opll →
adcl_pool → adapt → predict_adapted through main on a folder of tiny
panoramas of mixed names, depths, formats, sizes and modes with a corrupt
file, with the committed demo model.
"""
import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.support import fast_compile
from unlock_jax.data.layouts import common
from unlock_jax.data.layouts import folder
from unlock_jax import inference
from unlock_jax.pseudo import store
from unlock_jax.tools import example_panoramas

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 16, 32
RNG = np.random.default_rng(0)


def _save(path, im, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im.save(path, **kw)
  return str(path)


def _reader_image(path, size=(H, W)):
  """The reader's RGB of one file (alone in its folder), at its own size."""
  r = folder.Reader(os.path.dirname(path), size)
  (i,) = [i for i, p in enumerate(r.paths) if p == str(path)]
  return r.load(i)


# ---- names -------------------------------------------------------------------------

def test_names_keep_the_relative_path_and_extension(tmp_path):
  rgb = RNG.integers(0, 256, (H, W, 3), np.uint8)
  for rel in ("dup.jpg", "dup.png", "a/b/c d.PNG", ".hidden.jpg", ".git/x.jpg", "a/notes.txt"):
    _save(tmp_path / rel, Image.fromarray(rgb)) if not rel.endswith(".txt") else \
        (tmp_path / rel).write_text("x")
  r = folder.Reader(str(tmp_path), (H, W))
  assert r.keys == ["a/b/c d.PNG", "dup.jpg", "dup.png"]  # two entries for dup.*
  assert r.paths == [str(tmp_path / k) for k in r.keys]
  ex = r.load(1)
  assert ex["name"] == "dup.jpg"
  assert ex[folder.SOURCE_PATH] == str(tmp_path / "dup.jpg")
  assert ex[folder.SOURCE_SIZE] == (H, W)
  np.testing.assert_array_equal(r.load(2)["image"], rgb)


def test_names_differing_only_in_case_are_refused(tmp_path):
  for rel in ("trip/X.jpg", "trip/x.jpg"):
    _save(tmp_path / rel, Image.new("RGB", (W, H)))
  with pytest.raises(common.DataError, match=r"trip/X\.jpg and trip/x\.jpg.*differ only in case"):
    folder.Reader(str(tmp_path), (H, W))


# ---- colour modes, against numpy -----------------------------------------------------

def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
  g = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
  g[0, :4] = [0, 257, 65534, 65535]
  path = _save(tmp_path / "g16.png", Image.fromarray(g))
  assert Image.open(path).mode == "I;16"
  want = np.floor(g / 257 + 0.5).astype(np.uint8)  # no ties: g / 257 is never k + 0.5
  got = _reader_image(path)["image"]
  np.testing.assert_array_equal(got, np.stack([want] * 3, -1))
  assert got.std() > 50  # not all white
  # The other 16/32-bit integer modes, in memory.
  big = Image.frombytes("I;16B", (W, H), g.astype(">u2").tobytes())
  np.testing.assert_array_equal(folder.to_rgb(big, "big.png")[..., 0], want)
  i32 = Image.fromarray(g.astype(np.int32), "I")
  np.testing.assert_array_equal(folder.to_rgb(i32, "i.png")[..., 1], want)
  with pytest.raises(common.DataError, match=r"neg\.png.*outside 16 bits"):
    folder.to_rgb(Image.fromarray(np.full((2, 2), -1, np.int32), "I"), "neg.png")


def test_alpha_is_composited_over_black(tmp_path):
  rgba = RNG.integers(0, 256, (H, W, 4), np.uint8)
  rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
  path = _save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"))
  a = rgba[..., 3:].astype(np.float64)
  want = np.floor(rgba[..., :3] * a / 255 + 0.5).astype(np.uint8)  # c * a / 255: no ties
  got = _reader_image(path)["image"]
  np.testing.assert_array_equal(got, want)
  assert (got[0, 0] == 0).all() and (got[0, 1] == rgba[0, 1, :3]).all()

  la = RNG.integers(0, 256, (H, W, 2), np.uint8)
  path = _save(tmp_path / "la.png", Image.fromarray(la, "LA"))
  want = np.floor(la[..., 0] * la[..., 1].astype(np.float64) / 255 + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(_reader_image(path)["image"], np.stack([want] * 3, -1))


def test_palettes_with_and_without_transparency(tmp_path):
  palette = RNG.integers(0, 256, (256, 3), np.uint8)
  idx = RNG.integers(0, 8, (H, W)).astype(np.uint8)
  im = Image.fromarray(idx, "P")
  im.putpalette(palette.ravel().tolist())
  plain = _save(tmp_path / "p.png", im)
  np.testing.assert_array_equal(_reader_image(plain)["image"], palette[idx])
  trns = _save(tmp_path / "t" / "pt.png", im, transparency=3)  # index 3 fully transparent
  assert Image.open(trns).mode == "P" and Image.open(trns).info["transparency"] == 3
  want = np.where((idx == 3)[..., None], 0, palette[idx]).astype(np.uint8)
  np.testing.assert_array_equal(_reader_image(trns)["image"], want)


def test_cmyk_ycbcr_bilevel_and_float(tmp_path):
  cmyk = RNG.integers(0, 256, (H, W, 4), np.uint8)
  path = _save(tmp_path / "cmyk.jpg", Image.fromarray(cmyk, "CMYK"), quality=95)
  stored = np.asarray(Image.open(path)).astype(np.float64)  # the decoded CMYK values
  assert Image.open(path).mode == "CMYK"
  want = np.floor((255 - stored[..., :3]) * (255 - stored[..., 3:]) / 255 + 0.5)
  np.testing.assert_array_equal(_reader_image(path)["image"], want.astype(np.uint8))

  ycc = RNG.integers(0, 256, (H, W, 3), np.uint8)
  y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
  want = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                   y + 1.772 * (cb - 128)], -1)  # JFIF
  got = folder.to_rgb(Image.fromarray(ycc, "YCbCr"), "ycc.jpg").astype(np.float64)
  assert np.abs(got - np.clip(np.round(want), 0, 255)).max() <= 1

  bits = RNG.random((H, W)) < 0.5
  path = _save(tmp_path / "b" / "one.png", Image.fromarray(bits))
  assert Image.open(path).mode == "1"
  np.testing.assert_array_equal(_reader_image(path)["image"],
                                np.repeat(bits[..., None] * 255, 3, -1).astype(np.uint8))

  with pytest.raises(common.DataError, match=r"f\.png has PIL mode 'F'"):
    folder.to_rgb(Image.fromarray(np.zeros((2, 2), np.float32)), "f.png")


def test_exif_orientation_and_source_size(tmp_path):
  rgb = RNG.integers(0, 256, (H, W, 3), np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
  path = _save(tmp_path / "rot.png", Image.fromarray(rgb), exif=exif)
  ex = _reader_image(path, size=(W, H))
  assert ex[folder.SOURCE_SIZE] == (W, H)
  np.testing.assert_array_equal(ex["image"], np.rot90(rgb, k=-1))


# ---- sizes and unreadable files ------------------------------------------------------

def test_aspect_warning_states_both_ratios_once_per_size(tmp_path, caplog):
  for rel in ("a.jpg", "b.jpg"):
    _save(tmp_path / rel, Image.new("RGB", (200, 100)))
  _save(tmp_path / "c.jpg", Image.new("RGB", (512, 100)))
  r = folder.Reader(str(tmp_path), (50, 256))
  with caplog.at_level(logging.WARNING):
    for i in range(3):
      assert r.load(i)["image"].shape == (50, 256, 3)
  msgs = [m for m in caplog.messages if "aspect" in m]
  assert len(msgs) == 1, msgs
  assert msgs[0].startswith(f"{tmp_path / 'a.jpg'} is 200x100 (aspect 2.00:1), but panoramas "
                            "are resized to the configured 256x50 (5.12:1)")
  assert "should be 2:1" not in msgs[0]
  assert folder.aspect_problem((1024, 200), (512, 100)) is None  # 5.12:1 both


def test_unreadable_files_name_the_file_and_do_not_stop_the_pipeline(tmp_path):
  good = Image.fromarray(RNG.integers(0, 256, (H, W, 3), np.uint8))
  _save(tmp_path / "ok.png", good)
  (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg")
  buf = io.BytesIO()
  good.save(buf, format="PNG")
  (tmp_path / "truncated.png").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  r = folder.Reader(str(tmp_path), (H, W))
  assert r.keys == ["garbage.jpg", "ok.png", "truncated.png"]
  for i in (0, 2):
    with pytest.raises(common.DataError, match=r.keys[i]):
      r.load(i)
  sub = inference.Subset(r, [0, 1, 2])
  exs = [sub.load(i) for i in range(3)]
  assert [("error" in e) for e in exs] == [True, False, True]
  assert str(tmp_path / "garbage.jpg") in exs[0]["error"]
  assert exs[0]["image"].shape == (H, W, 3) and exs[0]["name"] == "garbage.jpg"
  assert exs[0][folder.SOURCE_PATH] == str(tmp_path / "garbage.jpg")
  assert exs[1][folder.SOURCE_PATH] == str(tmp_path / "ok.png")


# ---- the own-folder adaptation command, end to end -----------------------------------

def test_own_panoramas_config_reads_only_the_folder(tmp_path):
  """No stage of the command reads a data set: nothing to generate, only the folder."""
  from configs import own_panoramas  # pylint: disable=g-import-not-at-top
  from unlock_jax.tools import check_data  # pylint: disable=g-import-not-at-top
  config = own_panoramas.get_config(f"images={tmp_path}")
  assert check_data.ungenerated(config, str(tmp_path / "wd")) == []
  (ds,) = check_data.data_sets(config, str(tmp_path / "wd"))
  assert (ds.layout, ds.root, ds.image_size) == ("folder", str(tmp_path), (100, 512))
  with pytest.raises(ValueError, match="needs the folder"):
    own_panoramas.get_config("")


SIZE = (50, 256)


def _own_folder(root):
  """Synthpass panoramas in mixed names, depths, formats, sizes, modes, and a broken file."""
  example_panoramas.write(str(root), 4, scale=0.125)  # dup.jpg, dup.png, trip2/day2/..., ...
  pano = example_panoramas.panorama(5, 0.125)
  gray16 = (pano.astype(np.float64).mean(-1) * 257).astype(np.uint16)
  _save(root / "gray" / "pano16.png", Image.fromarray(gray16))
  rgba = np.concatenate([pano, np.full(pano.shape[:2] + (1,), 255, np.uint8)], -1)
  _save(root / "alpha.png", Image.fromarray(rgba, "RGBA"))
  c = Image.fromarray(example_panoramas.panorama(6, 0.125)).convert("CMYK")
  _save(root / "print" / "cmyk.jpeg", c, quality=92)
  os.makedirs(root / "trip 1")
  (root / "trip 1" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")


def _main(workdir, *args, config="configs/own_panoramas.py", timeout=900):
  return subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", config, "--workdir",
       str(workdir), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
      env=fast_compile.env())


def test_own_folder_adaptation_end_to_end(tmp_path):
  root = tmp_path / "my panoramas"
  _own_folder(root)
  wd = tmp_path / "wd"
  config = f"configs/own_panoramas.py:images={root},size={SIZE[0]}x{SIZE[1]},runlocal=1"
  proc = _main(wd, config=config)
  assert proc.returncode == 0, proc.stderr[-4000:]
  names = ["IMG_0003.jpg", "alpha.png", "dup.jpg", "dup.png", "gray/pano16.png",
           "print/cmyk.jpeg", "trip2/day2/IMG_0002.jpg"]
  assert store.list_predictions(str(wd / "predict")) == names

  # The broken file: skipped, listed with its reason, left out by every later stage.
  skipped = json.load(open(wd / "predict" / "skipped.json"))
  assert skipped["total"] == 8
  assert [(s["name"], s["path"]) for s in skipped["skipped"]] == [
      ("trip 1/broken.jpg", str(root / "trip 1" / "broken.jpg"))]
  assert "broken.jpg" in skipped["skipped"][0]["reason"]
  assert "skipped 1 unreadable image(s) of 8" in proc.stderr
  assert "opll: 1 of 8 images have no prediction" in proc.stderr
  assert "adapt: 1 of 8 images are left out" in proc.stderr

  for n in names:
    assert os.path.isfile(wd / "opll" / "packed" / (n + ".npz"))
    assert os.path.isfile(wd / "opll" / "OPLL" / "semantic" / (n + ".png"))
    assert os.path.isfile(wd / "adcl_pool" / "shards" / (n + ".npz"))
  assert os.path.isfile(wd / "adcl_pool" / "pool_index.npz")
  assert not os.path.exists(wd / "opll" / "quality.json")  # no ground truth anywhere
  assert os.path.isdir(wd / "adapt" / "checkpoints" / "4")

  # The adapted model's predictions: the same panoramas, in a store of their own.
  assert store.list_predictions(str(wd / "predict_adapted")) == names
  meta = store.read_meta(str(wd / "predict_adapted"))
  assert meta["checkpoint"] == str(wd / "adapt" / "checkpoints")
  assert store.read_meta(str(wd / "predict"))["checkpoint"].endswith(
      os.path.join("assets", "demo_source"))
  pred = store.load_prediction(str(wd / "predict_adapted"), "gray/pano16.png")
  assert pred["semantic"].shape == SIZE
  # ... and at each image's own size (they come in three sizes).
  export = wd / "predict_adapted" / "export"
  sizes = {n: Image.open(root / n).size for n in names}
  assert len(set(sizes.values())) == 3
  for n in names:
    assert Image.open(export / "semantic" / (n + ".png")).size == sizes[n], n
  coco = json.load(open(export / "panoptic.json"))
  assert [im["file_name"] for im in coco["images"]] == names
  assert not os.path.exists(wd / "predict" / "export")

  # on_bad_image=fail: the first unreadable file stops the run, named.
  proc = _main(wd, "--config.stage=predict", "--config.predict.on_bad_image=fail",
               config=config)
  assert proc.returncode != 0
  assert str(root / "trip 1" / "broken.jpg") in proc.stderr
  assert "on_bad_image=skip" in proc.stderr
