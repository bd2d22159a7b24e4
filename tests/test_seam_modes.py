"""config.seam: the seam modes of full-panorama inference, their plumbing and fingerprint.

Wrap mode against numpy oracles written here (the flat network on the
panorama extended by P columns from its other end, logits resized as torch
and cropped back; detections moved back by P into the wrapped convention,
masks folded modulo W); one parameter tree runs in every mode; evaluators
on pinhole layouts stay flat whatever the mode; a mode change is refused
by name.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlock_jax
from configs import common
from configs import default
from configs import demo as demo_config
from configs.synth import tiny
from tests.support import networks
from tests.support import reference
from tests.support import synthpass as synth_testing
from unlock_jax import fingerprint
from unlock_jax import sharding as shd
from unlock_jax.data import seam_instances
from unlock_jax.data import synthpass
from unlock_jax.evaluation import evaluators
from unlock_jax.models import defaults
from unlock_jax.models import predict as predict_lib

H, W, P = 32, 128, 64


def _ext(image, p):
  """The oracle's extension: the last p columns in front, the first p behind."""
  return np.concatenate([image[:, :, -p:], image, image[:, :, :p]], axis=2)


@pytest.fixture(scope="module")
def net():
  mesh, model, variables, image = networks.tiny_detector(H, W)
  wrap = predict_lib.jit_predict_fns(model, mesh, dict(mode="wrap", wrap_cols=P))
  got = jax.device_get(wrap["panorama"](variables, shd.put_array(image, mesh)))
  raw = jax.device_get(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, _ext(image, P)))
  return dict(mesh=mesh, model=model, variables=variables, image=image, got=got, raw=raw)


# Config.

def test_check_seam_names_the_key_and_the_fix():
  with pytest.raises(ValueError, match=r"config.seam.mode='round' is unknown; known modes: "
                     r"\['flat', 'circular', 'wrap', 'circular_wrap'\]"):
    defaults.check_seam("round", 64)
  with pytest.raises(ValueError, match=r"wrap_cols=100 must be a positive multiple of 64"):
    defaults.check_seam("wrap", 100)
  with pytest.raises(ValueError, match=r"wrap_cols=0 must be a positive multiple"):
    defaults.check_seam("circular_wrap", 0)
  with pytest.raises(ValueError, match=r"wrap_cols=512 must be less than the panorama's "
                     r"width 512.*e.g. 64"):
    defaults.check_seam("wrap", 512, 512)
  defaults.check_seam("circular", 100, 64)  # wrap_cols unused without the extension
  assert (defaults.wrap_cols_for(2048), defaults.wrap_cols_for(512),
          defaults.wrap_cols_for(256)) == (128, 64, 64)
  # Every config file's panorama size takes its own default.
  assert default.get_config().seam.to_dict() == {"mode": "flat", "wrap_cols": 128}
  assert tiny.get_config().seam.wrap_cols == 64


@pytest.mark.parametrize("stage", ["predict", "predict_adapted", "evaluate"])
def test_stages_refuse_a_bad_seam_before_starting(stage):
  c = tiny.get_config("full=1")
  c.seam.mode = "wrap"
  c.seam.wrap_cols = 256  # the tiny target panoramas are 256 wide
  with pytest.raises(ValueError, match=r"wrap_cols=256 must be less than the panorama's "
                     r"width 256"):
    fingerprint.validate(c, stage)
  c.seam.wrap_cols = 64
  fingerprint.validate(c, stage)


def test_a_mode_change_is_refused_by_name_and_the_same_mode_resumes(tmp_path):
  wd = str(tmp_path)
  flat = tiny.get_config("full=1")
  for stage in ("predict", "evaluate"):
    fp = fingerprint.begin(flat, wd, stage)
    with open(os.path.join(fp.folder, "out.txt"), "w") as f:
      f.write(stage)
  circular = tiny.get_config("full=1")
  circular.seam.mode = "circular"
  for stage in ("predict", "evaluate"):
    with pytest.raises(fingerprint.Refused) as e:
      fingerprint.begin(circular, wd, stage)
    assert 'seam.mode: "flat" -> "circular"' in [l.strip() for l in str(e.value).splitlines()]
    assert fingerprint.begin(flat, wd, stage).status == "resume"
  # What is computed from the store (opll) refuses to read the other mode's.
  problems = fingerprint.plan(circular, wd, ["opll"])
  assert any("reads the outputs of predict" in p and "seam.mode" in p for p in problems)


def test_the_api_takes_the_mode_of_the_config_or_its_arguments():
  demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "assets", "demo_source")
  m = unlock_jax.load(demo)  # no config: the default for its 512-wide panoramas
  assert m.seam == {"mode": "flat", "wrap_cols": 64} and "seam='flat'" in repr(m)
  c = demo_config.get_config()  # the experiment config: its seam block
  c.seam.mode = "circular_wrap"
  # ... and an argument overrides it.
  assert unlock_jax.load(demo, c, wrap_cols=128).seam == {
      "mode": "circular_wrap", "wrap_cols": 128}
  with pytest.raises(ValueError, match=r"seam.mode='round' is unknown; known modes"):
    unlock_jax.load(demo, seam_mode="round")
  with pytest.raises(ValueError, match=r"wrap_cols=512 must be less than the panorama's"):
    unlock_jax.load(demo, seam_mode="wrap", wrap_cols=512)


# Wrap mode against the oracle.

def test_wrap_semantic_equals_the_flat_network_on_the_extended_panorama(net):
  logits = reference.resize_bilinear(net["raw"]["sem_logits"], (H, W + 2 * P))[:, :, P:P + W]
  argmax, conf, clear = reference.semantic_rule(logits)
  assert clear.mean() > 0.9
  got = net["got"]
  assert got["semantic"].shape == (4, H, W)
  np.testing.assert_array_equal(got["semantic"][clear], argmax[clear])
  np.testing.assert_allclose(got["confidence"], conf, rtol=1e-5, atol=1e-6)


def _fold_oracle(raw: dict, r: int):
  """Row r's raw detections on the extension, folded back in numpy, by descending score:
  [(score, box, mask, class)]."""
  out = []
  for k in np.flatnonzero(raw["valid"][r]):
    x1, y1, x2, y2 = (float(v) for v in raw["boxes"][r, k])
    if not P / 2 <= (x1 + x2) / 2 < W + 1.5 * P:
      continue
    start = (x1 - P) % W
    box = np.array([start, y1, start + min(x2 - x1, W), y2], np.float32)
    mask = np.zeros((H, W), bool)
    for col in np.flatnonzero(raw["masks"][r, k].any(0)):
      mask[:, (col - P) % W] |= raw["masks"][r, k][:, col]
    out.append((float(raw["scores"][r, k]), box, mask, int(raw["classes"][r, k])))
  return sorted(out, key=lambda t: -t[0])


def test_wrap_detections_are_the_oracle_folded_in_the_wrapped_convention(net):
  got = net["got"]
  n_total = 0
  for branch in ("modal", "amodal"):
    d, raw = got[branch], net["raw"][branch]
    assert d["masks"].shape == (4, 10, H, W)
    for r in range(4):
      valid = d["valid"][r]
      n = int(valid.sum())
      assert valid[:n].all() and not valid[n:].any()  # kept first, by score
      want = _fold_oracle(raw, r)
      assert len(want) == n
      for k, (score, box, mask, cls) in enumerate(want):
        # Two compilations of the same ops: float noise, a mask pixel at 0.5 may flip.
        assert d["scores"][r, k] == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(d["boxes"][r, k], box, atol=1e-3)
        assert (d["masks"][r, k] != mask).mean() < 2e-3
        assert d["classes"][r, k] == cls
      x1, x2 = d["boxes"][r, :n, 0], d["boxes"][r, :n, 2]
      assert ((0 <= x1) & (x1 < W) & (x1 <= x2) & (x2 <= x1 + W)).all()
      n_total += n
  assert n_total > 8  # the random network detects plenty


def _mask_iou(a, b):
  return (a & b).sum() / max((a | b).sum(), 1)


def test_wrap_copies_of_one_object_leave_one_instance():
  """An object seen at both ends of the extension, and a piece cut by its end."""
  w, p, h = 256, 64, 16
  ext = w + 2 * p
  masks = np.zeros((1, 4, h, ext), bool)
  # A car across the seam (panorama columns 240..271 = 240..255 and 0..15),
  # whole in both copies: extension columns 304..335 and 48..79.
  masks[0, 0, 2:10, 304:336] = True
  masks[0, 1, 2:10, 48:80] = True
  masks[0, 2, 4:8, 0:6] = True  # a piece cut by the extension's left end (centre 3 < P/2)
  masks[0, 3, 2:12, 150:170] = True  # an ordinary object
  boxes = np.array([[[304, 2, 336, 10], [48, 2, 80, 10], [0, 4, 6, 8], [150, 2, 170, 12]]],
                   np.float32)
  dets = {"boxes": boxes, "scores": np.array([[0.9, 0.8, 0.7, 0.6]], np.float32),
          "classes": np.array([[2, 2, 2, 0]], np.int32), "masks": masks,
          "valid": np.ones((1, 4), bool)}
  folded = jax.device_get(predict_lib.fold_detections(jax.tree.map(jnp.asarray, dets), p))
  assert folded["valid"][0].tolist() == [True, True, True, False]  # the cut piece goes
  car = np.zeros((h, w), bool)
  car[2:10, 240:] = car[2:10, :16] = True
  np.testing.assert_array_equal(folded["masks"][0, 0], car)
  np.testing.assert_array_equal(folded["masks"][0, 1], car)
  np.testing.assert_allclose(folded["boxes"][0, :3], [[240, 2, 272, 10], [240, 2, 272, 10],
                                                      [86, 2, 106, 12]])
  merged = seam_instances.merge_seam_instances(jax.tree.map(lambda x: x[0], folded))
  assert merged["valid"].sum() == 2  # the car once (higher score), the other object
  np.testing.assert_array_equal(merged["masks"][merged["valid"]][0], car)


def test_wrap_detections_have_no_duplicates_after_the_seam_merge(net):
  for branch in ("modal", "amodal"):
    for r in range(4):
      row = jax.tree.map(lambda x, r=r: x[r], net["got"][branch])
      merged = seam_instances.merge_seam_instances(row)
      m, c = merged["masks"][merged["valid"]], merged["classes"][merged["valid"]]
      for i in range(len(m)):
        for j in range(i):
          assert c[i] != c[j] or _mask_iou(m[i], m[j]) <= seam_instances.DUP_IOU


def test_one_parameter_tree_runs_in_every_mode(net):
  """A zero-padded (flat-trained) checkpoint's variables, unchanged, in each mode."""
  image = shd.put_array(net["image"], net["mesh"])
  flat = jax.device_get(predict_lib.jit_predict_fns(net["model"], net["mesh"])["semantic"](
      net["variables"], image))["semantic"]
  for mode in defaults.SEAM_MODES[1:]:
    fns = predict_lib.jit_predict_fns(net["model"], net["mesh"], dict(mode=mode, wrap_cols=P))
    sem = jax.device_get(fns["semantic"](net["variables"], image))["semantic"]
    assert sem.shape == (4, H, W) and sem.dtype == np.uint8
    # Away from the seam the modes see (nearly) the same context as flat.
    assert (sem[:, :, W // 4:3 * W // 4] == flat[:, :, W // 4:3 * W // 4]).mean() > 0.9, mode
    if mode == "wrap":
      np.testing.assert_array_equal(sem, net["got"]["semantic"])


# Evaluators: pinhole layouts stay flat.

def _const_fns(mesh, cls):
  def predict(variables, image):
    b, h, w, _ = image.shape
    return {"semantic": jnp.full((b, h, w), cls, jnp.uint8)}
  fn = jax.jit(predict, out_shardings=shd.data_sharding(mesh))
  return {"semantic": fn, "oass": fn, "panorama": fn}


def test_pinhole_evaluators_ignore_the_mode(tmp_path):
  root = synth_testing.make_tiny_dataset(str(tmp_path), n_source=(1, 2), n_target=(1, 2))
  sizes = synthpass.image_sizes(0.125)
  mesh = shd.make_mesh()
  flat, pano = _const_fns(mesh, 0), _const_fns(mesh, 2)
  src = common.oass_eval("kitti360aps", os.path.join(root, "KITTI360_APS"), "val",
                         sizes["source"], scale=0.125, panorama=False)
  tgt = common.oass_eval("blendpass", os.path.join(root, "BlendPASS"), "val",
                         sizes["target"], scale=0.125)
  for cfg, fns, merges in ((src, flat, False), (tgt, pano, True)):
    for c in (cfg, common.semantic_eval(cfg.layout, cfg.root, "val", cfg.image_size)):
      ev = evaluators.from_config("val", c, predict_fns=flat, panorama_fns=pano, mesh=mesh,
                                  workdir=str(tmp_path), seam_mode="circular")
      assert ev.predict_fn is fns[ev.PREDICT], (c.layout, c.type)
      if c.type == "oass":
        assert ev.roll_fn is fns["semantic"] and ev.merge_seam == merges
  # Run on the pinhole split: the flat functions' output is what gets scored.
  c = common.semantic_eval("kitti360aps", src.root, "val", sizes["source"])
  got = dict(evaluators.from_config("val", c, predict_fns=flat, panorama_fns=pano, mesh=mesh,
                                    workdir=str(tmp_path), seam_mode="circular").run({}))
  want = dict(evaluators.from_config("val", c, predict_fns=flat, mesh=mesh,
                                     workdir=str(tmp_path)).run({}))
  assert got == want
