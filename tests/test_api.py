"""unlock_jax.load / Model.predict against the predict stage's store and export.

One tiny model with both R-CNN branches (weights drawn in numpy: no training,
no init run) predicts three panoramas of the user-images kind through the
``predict`` stage (store + export at the images' own sizes) and through the
API. At the model's own size the API equals the store exactly (semantic, the
quantised confidence, every detection); at other sizes it equals the store
resized by exact rational nearest-neighbour indices written here; the
export's PNGs (PIL) and RLE masks (pycocotools) decode to the API's arrays.
"""
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import jax
import numpy as np
import orbax.checkpoint as ocp
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

import unlock_jax
from configs.synth import tiny
from unlock_jax import checkpoint
from unlock_jax import model_info
from unlock_jax.evaluation import report
from unlock_jax.models import amodalpass
from unlock_jax.models import variables as variables_lib
from unlock_jax.pseudo import export
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds
from unlock_jax.stages import predict as predict_stage

# pycocotools 2.0.11 decodes through a numpy-1 __array__ call (harmless under numpy 2).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAU = (0.3, 0.3)  # the numpy weights' scores reach ~0.5: some detections enter the panoptic map
# name -> (height, width): the model's own size, twice it (a JPEG) and an odd size.
IMAGES = {"a.png": (50, 256), "sub/b.jpg": (100, 512), "c.png": (37, 190)}


def numpy_variables(model_cfg, seed=0):
  """He-scaled normal kernels, small biases, unit norms: a model without running init."""
  model = amodalpass.build(model_cfg)
  shapes = jax.eval_shape(lambda r: variables_lib.init_variables(model, r, (1, 64, 64, 3)),
                          jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = jax.tree_util.keystr(path)
    if name.startswith("['batch_stats']"):
      return (np.ones if name.endswith("['var']") else np.zeros)(x.shape, x.dtype)
    if name.endswith("['scale']"):
      return np.ones(x.shape, x.dtype)
    if name.endswith("['bias']"):
      return (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
    return (rng.standard_normal(x.shape) / math.sqrt(max(1, math.prod(x.shape[:-1])))
            ).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(fill, {k: shapes[k] for k in ("params", "batch_stats")})


def oracle_resize(a, size):
  """Nearest neighbour by exact rationals: output pixel i takes floor((i + 1/2) n_in / n_out)."""
  idx = lambda n_in, n_out: [math.floor((Fraction(i) + Fraction(1, 2)) * n_in / n_out)  # noqa: E731
                             for i in range(n_out)]
  return np.asarray(a)[..., idx(a.shape[-2], size[0]), :][..., idx(a.shape[-1], size[1])]


def rle_decode(seg):
  return mask_utils.decode(dict(seg, counts=seg["counts"].encode())).astype(bool)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("api")
  config = tiny.get_config("full=1")
  model_dir = str(root / "model")
  variables = numpy_variables(config.model)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(model_dir, variables)
  ckptr.wait_until_finished()
  model_info.write(model_dir, config.model, model_info.panorama_size(config), TAU, "test")

  images = root / "mine"
  rng = np.random.default_rng(1)
  for name, (h, w) in IMAGES.items():
    os.makedirs(os.path.dirname(images / name), exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (5 + c)) for c in range(3)], -1)
    Image.fromarray(np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                    ).save(images / name)

  wd = root / "wd"
  config.predict.checkpoint = model_dir
  config.predict.images = str(images)
  config.predict.export_dir = str(wd / "export")
  summary = predict_stage.run(config, str(wd))
  assert summary["predicted"] == 3 and summary["export"]["exported"] == 3
  model = unlock_jax.load(model_dir)
  preds = {name: model.predict(str(images / name)) for name in IMAGES}
  return {"config": config, "model_dir": model_dir, "variables": variables, "images": images,
          "store": str(wd / "predict"), "export": wd / "export", "model": model, "preds": preds}


def test_load_reads_the_recorded_architecture(setup):
  m = setup["model"]
  assert m.image_size == (50, 256) and m.tau_m == TAU[0] and m.step is None
  assert m.stuff_area == export.stuff_area_for((50, 256))
  assert m.model_config.to_dict() == setup["config"].model.to_dict()


def test_predict_equals_the_store_at_the_model_size(setup):
  out = setup["preds"]["a.png"]
  entry = store.load_prediction(setup["store"], "a.png")
  assert entry["source_size"] == (50, 256)
  assert entry["source_path"] == os.path.join(str(setup["images"]), "a.png")
  assert out["semantic"].dtype == np.uint8 and out["semantic"].shape == (50, 256)
  np.testing.assert_array_equal(out["semantic"], entry["semantic"])
  np.testing.assert_array_equal(thresholds.quantize(out["confidence"]), entry["confidence_code"])
  assert sum(len(entry[b]["classes"]) for b in export.BRANCHES) > 0
  for b in export.BRANCHES:
    for k in ("classes", "scores", "boxes", "masks"):
      np.testing.assert_array_equal(out[b][k], entry[b][k], err_msg=f"{b}/{k}")
  assert (out["panoptic"] % 1000 > 0).any()  # instances entered the panoptic map


@pytest.mark.parametrize("name", ["sub/b.jpg", "c.png"])
def test_predict_at_another_size_is_the_store_resized(setup, name):
  out, size = setup["preds"][name], IMAGES[name]
  entry = store.load_prediction(setup["store"], name)
  assert entry["source_size"] == size and entry["semantic"].shape == (50, 256)
  assert out["semantic"].shape == size and out["panoptic"].shape == size
  np.testing.assert_array_equal(out["semantic"], oracle_resize(entry["semantic"], size))
  np.testing.assert_array_equal(thresholds.quantize(out["confidence"]),
                                oracle_resize(entry["confidence_code"], size))
  sy, sx = size[0] / 50, size[1] / 256
  for b in export.BRANCHES:
    np.testing.assert_array_equal(out[b]["classes"], entry[b]["classes"])
    np.testing.assert_array_equal(out[b]["scores"], entry[b]["scores"])
    np.testing.assert_allclose(out[b]["boxes"], entry[b]["boxes"] * [sx, sy, sx, sy], rtol=1e-6)
    assert out[b]["masks"].shape == (len(entry[b]["classes"]),) + size
    np.testing.assert_array_equal(out[b]["masks"], oracle_resize(entry[b]["masks"], size))
  # Stuff segments carry the semantic class under them; things are thing classes.
  pan, sem = out["panoptic"], out["semantic"].astype(np.int64)
  stuff = (pan > 0) & (pan % 1000 == 0)
  np.testing.assert_array_equal(pan[stuff] // 1000 - 1, sem[stuff])
  assert np.isin(pan[pan % 1000 > 0] // 1000 - 1, list(range(11, 18))).all()


def test_export_files_decode_to_the_api_outputs(setup):
  ex = setup["export"]
  pan_json = json.loads((ex / export.PANOPTIC_JSON).read_text())
  images = {i["file_name"]: i for i in pan_json["images"]}
  assert sorted(images) == sorted(IMAGES)
  for name, size in IMAGES.items():
    img, out = images[name], setup["preds"][name]
    assert (img["height"], img["width"]) == size
    assert img["path"] == os.path.join(str(setup["images"]), name)
    sem = np.asarray(Image.open(ex / export.SEMANTIC_DIR / (name + ".png")))
    np.testing.assert_array_equal(sem, out["semantic"])
    rgb = np.asarray(Image.open(ex / export.PANOPTIC_DIR / (name + ".png"))).astype(np.int64)
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2],
                                  out["panoptic"])
    ann = next(a for a in pan_json["annotations"] if a["image_id"] == img["id"])
    assert ann["segments_info"] == out["segments"]
    for b in export.BRANCHES:
      inst = json.loads((ex / export.INSTANCES_JSON[b]).read_text())
      anns = [a for a in inst["annotations"] if a["image_id"] == img["id"]]
      assert len(anns) == len(out[b]["classes"])
      for j, a in enumerate(anns):
        np.testing.assert_array_equal(rle_decode(a["segmentation"]), out[b]["masks"][j])
        assert a["category_id"] == out[b]["classes"][j]
        assert a["score"] == pytest.approx(float(out[b]["scores"][j]), abs=1e-7)
        x1, y1, x2, y2 = out[b]["boxes"][j]
        np.testing.assert_allclose(a["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)


def test_arrays_and_pil_images_predict_as_their_file(setup):
  m, path = setup["model"], setup["images"] / "sub" / "b.jpg"
  want = setup["preds"]["sub/b.jpg"]
  with Image.open(path) as im:
    rgb = np.asarray(im.convert("RGB"))
    from_pil, from_array = m.predict_batch([im, rgb])
  for got in (from_pil, from_array):
    for k in ("semantic", "confidence", "panoptic"):
      np.testing.assert_array_equal(got[k], want[k])
    assert got["segments"] == want["segments"]
  with pytest.raises(ValueError, match=r"uint8 \[H,W,3\].*float32 \[4, 5, 3\]"):
    m.predict(np.zeros((4, 5, 3), np.float32))


def test_a_squeezed_image_is_predicted_at_its_size_with_one_warning(setup, caplog):
  square = np.full((40, 40, 3), 90, np.uint8)
  with caplog.at_level(logging.WARNING):
    outs = setup["model"].predict_batch([square, square])
  assert [o["semantic"].shape for o in outs] == [(40, 40)] * 2
  assert [o["modal"]["masks"].shape[1:] for o in outs] == [(40, 40)] * 2
  warned = [r.getMessage() for r in caplog.records if "is 40x40" in r.getMessage()]
  assert len(warned) == 1 and "image_size=(H, W)" in warned[0]


def _run_folder(setup, root):
  """A train run's checkpoints folder with steps 3 and 5 (5: one leaf changed)."""
  ckpt = checkpoint.Checkpointer(str(root), asynchronous=False)
  v3 = setup["variables"]
  v5 = jax.tree.map(lambda x: x, v3)
  v5["params"]["decode_head"]["conv_seg"]["bias"] = v3["params"]["decode_head"]["conv_seg"]["bias"] + 1
  ckpt.save(3, v3)
  ckpt.save(5, v5)
  ckpt.close()
  c = setup["config"]
  model_info.write(str(root), c.model, model_info.panorama_size(c), report.TAU_ADAPTED, "adapt")
  return v3, v5


def _equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_load_a_run_folder_its_latest_step_or_one_step(setup, tmp_path):
  v3, v5 = _run_folder(setup, tmp_path / "checkpoints")
  m = unlock_jax.load(str(tmp_path / "checkpoints"))
  assert m.step == 5 and m.tau_m == report.TAU_ADAPTED[0] and _equal(m.variables, v5)
  m = unlock_jax.load(str(tmp_path / "checkpoints" / "3"))
  assert m.step == 3 and m.image_size == (50, 256) and _equal(m.variables, v3)
  assert not _equal(m.variables, v5)


def test_a_folder_without_its_record_needs_the_config(setup, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(setup["model_dir"], bare)
  os.remove(bare / model_info.FILE)
  with pytest.raises(ValueError, match=r"no model_config.json.*config='configs/"):
    unlock_jax.load(str(bare))
  m = unlock_jax.load(str(bare), config="configs/synth/tiny.py:full=1")
  assert m.image_size == (50, 256) and m.tau_m == report.TAU_ADAPTED[0]
  assert _equal(m.variables, setup["variables"])
  with pytest.raises(ValueError, match=r"image_size=\(H, W\)"):
    unlock_jax.load(str(bare), config=setup["config"].model)
  m = unlock_jax.load(str(bare), config=setup["config"].model, image_size=(60, 300), tau_m=0.7)
  assert m.image_size == (60, 300) and m.tau_m == 0.7
  with pytest.raises(FileNotFoundError, match="does not exist"):
    unlock_jax.load(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="batch_size=6 must be a positive multiple of the 4"):
    unlock_jax.load(setup["model_dir"], batch_size=6)
  # A run killed before its first checkpoint: its record, no steps.
  os.makedirs(tmp_path / "early")
  shutil.copy(setup["model_dir"] + "/" + model_info.FILE, tmp_path / "early")
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    unlock_jax.load(str(tmp_path / "early"))
  (bare / model_info.FILE).write_text(json.dumps({"format_version": 99}))
  with pytest.raises(ValueError, match="format_version 99"):
    unlock_jax.load(str(bare))


def test_the_committed_demo_model_loads_by_its_record():
  m = unlock_jax.load(os.path.join(REPO, "assets", "demo_source"))
  assert m.image_size == (100, 512) and m.tau_m == report.TAU_SOURCE_ONLY[0]
  assert m.model_config.instance_heads


def test_importing_the_package_does_not_import_jax():
  proc = subprocess.run(
      [sys.executable, "-c", "import sys, unlock_jax; "
       "print(sorted(m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules))"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"
