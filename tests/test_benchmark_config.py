"""configs/synth/benchmark.py: every row's config, folders and fingerprints; the target oracle.

The oracle runs 2 steps of ``train_source`` on the tiny synthpass fixture
from a 1-step source model; the batches its stage reads are checked against
the hidden target-train ground truth read directly from the BlendPASS files.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs.synth import benchmark
from tests.support import synthpass as synth_support
from unlock_jax import fingerprint
from unlock_jax import inference
from unlock_jax import methods
from unlock_jax import sharding as shd
from unlock_jax.data import keys
from unlock_jax.data import layouts
from unlock_jax.data import pipeline
from unlock_jax.data import transforms
from unlock_jax.data.layouts import blendpass
from unlock_jax.methods import benchmark_rows
from unlock_jax.models import defaults as model_defaults
from unlock_jax.stages import train_source

SCALE = 0.125  # the fixture's
ROWS = [("source", 0, True)] + [(m, s, True) for m in ("tent", "unlock", "uda", "oracle")
                                for s in (0, 1, 2)] + [
    (m, s, False) for m in ("unlock", "uda") for s in (0, 1, 2)]


def _config(method, seed=0, classmix=True, extra=""):
  return benchmark.get_config(f"method={method},seed={seed},classmix={int(classmix)}" + extra)


def test_every_row_builds_with_its_schedule_and_blur():
  for method, seed, classmix in ROWS:
    c = _config(method, seed, classmix).copy_and_resolve_references()
    run = benchmark_rows.run_name(method, seed, classmix)
    assert c.seed == seed and c.evaluate.results_dir == f"{{workdir}}/{run}/evaluate"
    (name, row), = c.evaluate.runs.items()
    assert name == benchmark_rows.EVAL_RUN[method]
    if method in ("tent", "unlock", "uda"):
      assert row.checkpoint == f"{{workdir}}/{run}/adapt/checkpoints"
      assert c.adapt.method == method and c.stage.endswith("adapt,evaluate")
      methods.get(method).check_config(c.adapt)
      assert c.adapt.source_checkpoint == "{workdir}/source/train_source/checkpoints"
    # >= 1500 steps, the EMA teacher at 0.999 for most of them (numpy oracle).
    t = np.arange(c.adapt.total_steps)
    alpha = np.minimum(1 - 1 / (t + 1), c.adapt.ema_max)
    assert c.adapt.total_steps >= 1500 and np.mean(alpha >= 0.999 - 1e-12) > 0.5
    assert benchmark.alpha_fraction(c.adapt.total_steps) == np.mean(alpha >= 0.999 - 1e-12)
    # One crop size for every row (UDA mixes source crops into target crops).
    assert tuple(c.adapt.crop_size) == tuple(c.input.crop_size) == (94, 94)
    assert c.adapt.blur_sigma_scale == 0.25
    mix = c.adapt.uda.mix_weight if method == "uda" else c.adapt.mix_weight
    assert mix == (1.0 if classmix else 0.0)
  src = _config("source").copy_and_resolve_references()
  assert src.stage == "generate,train_source,evaluate" and set(src.evals) == {"source_val",
                                                                              "target_val"}
  assert src.train_source.out_dir == "{workdir}/source/train_source"
  # The source recipe of configs/synth/source_full.py: x10 on the decode head only.
  assert src.optim.lr == 6e-4 and [g[0] for g in src.optim.groups] == ["decode_head", "norm"]
  assert _config("unlock", extra=",reference_blur=1").adapt.blur_sigma_scale == 1.0
  assert _config("uda", extra=",scale=0.5").adapt.blur_sigma_scale == 0.5
  assert "blur_sigma_scale" in methods.get("unlock").config_keys
  assert "blur_sigma_scale" in methods.get("uda").config_keys


def test_bad_arguments_are_refused_by_name():
  with pytest.raises(ValueError, match="source, tent, unlock, uda, oracle"):
    benchmark.get_config("method=dacs")
  assert benchmark.get_config("").adapt.method == "unlock"  # the default row: UNLOCK, seed 0
  with pytest.raises(ValueError, match="classmix=0 is an ablation of unlock and uda"):
    benchmark.get_config("method=tent,classmix=0")
  with pytest.raises(ValueError, match="seed"):
    benchmark.get_config("method=source,seed=1")


def test_rows_write_their_own_folders_and_share_only_equal_inputs(tmp_path):
  wd = str(tmp_path)
  writers = {}  # folder -> {(run, stage): fingerprint hash}
  for method, seed, classmix in ROWS:
    c = _config(method, seed, classmix)
    run = benchmark_rows.run_name(method, seed, classmix)
    for stage in c.stage.split(","):
      folder = fingerprint.folder(c, wd, stage)
      fp = fingerprint.compute(c, wd, stage)
      writers.setdefault(folder, {})[(run, stage)] = fp.hash
  shared = {os.path.join(wd, p) for p in ("data", "pseudo/predict", "pseudo/opll",
                                          "pseudo/adcl_pool")}
  for folder, who in writers.items():
    if folder in shared:  # the same stage with the same fingerprint, whoever runs it
      assert len({s for _, s in who}) == 1 and len(set(who.values())) == 1, folder
    else:  # a row's own folder: one row writes it
      (run, _), = who
      assert folder.startswith(os.path.join(wd, run) + "/"), (folder, run)
  assert writers[os.path.join(wd, "source", "train_source")].keys() == {("source",
                                                                         "train_source")}


# --- the target oracle on the tiny fixture -----------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return synth_support.make_tiny_dataset(str(tmp_path_factory.mktemp("bench_data")))


def _tiny(method, root, steps):
  """The benchmark row with the tests' tiny network on the fixture's data."""
  c = benchmark.get_config(f"method={method},scale={SCALE},runlocal")
  c.data.target.root = os.path.join(root, "BlendPASS")  # the oracle's data follow it
  if method != "oracle":
    c.data.source.root = os.path.join(root, "KITTI360_APS")
  c.model = model_defaults.tiny_model_config()
  c.model.instance_heads = True
  c.input.batch_size, c.input.max_instances = 4, 8
  c.total_steps, c.checkpoint_every, c.log_every = steps, steps, 1
  return c


def _find_crop(image, semantic, panoramas):
  """(panorama index, y, x, flipped) whose crop is this normalised image and label, or None."""
  h, w = semantic.shape
  for i, (pimg, psem) in enumerate(panoramas):
    for flipped in (False, True):
      img = pimg[:, ::-1] if flipped else pimg
      sem = psem[:, ::-1] if flipped else psem
      for y in range(img.shape[0] - h + 1):
        for x in range(img.shape[1] - w + 1):
          if (np.array_equal(sem[y:y + h, x:x + w], semantic)
              and np.allclose(img[y:y + h, x:x + w], image, atol=1e-6)):
            return i, y, x, flipped
  return None


def test_oracle_trains_on_the_hidden_target_ground_truth(data_root, tmp_path):
  wd = str(tmp_path / "bench")
  train_source.run(_tiny("source", data_root, 1), wd)
  oracle = _tiny("oracle", data_root, 2)
  train_source.run(oracle, wd)

  out = os.path.join(wd, "oracle_s0", "train_source")
  assert sorted(os.listdir(os.path.join(out, "checkpoints"))).count("2") == 1
  record = json.load(open(os.path.join(out, "fingerprint.json")))["settings"]
  assert record["data.source.layout"] == "blendpass" and record["data.source.hidden_gt"]
  assert record["data.source.root"] == os.path.join(data_root, "BlendPASS")
  assert record["init_checkpoint"] == "{workdir}/source/train_source/checkpoints"
  assert record["init_checkpoint:identity"]["step"] == 1  # the source model, by its record
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert np.isfinite(summary["loss"]) if "loss" in summary else True

  # What the stage reads: crops of the target-train panoramas with their
  # hidden ground truth (the image-only reader has no labels at all).
  size = tuple(oracle.data.target.image_size)
  hidden = blendpass.Reader(os.path.join(data_root, "BlendPASS"), "train", size, hidden_gt=True)
  assert set(blendpass.Reader(os.path.join(data_root, "BlendPASS"), "train", size).load(0)) == {
      "name", "image"}
  panoramas = []
  for i in range(len(hidden)):
    ex = hidden.load(i)
    panoramas.append((transforms.normalize(ex["image"]), ex["semantic"].astype(np.int32)))
  batch = next(inference.source_iterator(oracle, wd, 4, shd.make_mesh()))
  assert batch[keys.IMAGE].shape == (4, *oracle.input.crop_size, 3)
  labelled = 0
  for b in range(4):
    found = _find_crop(batch[keys.IMAGE][b], batch[keys.SEMANTIC][b], panoramas)
    assert found is not None, f"batch row {b} is no crop of a target-train panorama"
    labelled += int(np.sum(batch[keys.SEMANTIC][b] != 255))
  assert labelled > 0
  assert batch[keys.MODAL_VALID].any() and batch[keys.AMODAL_VALID].any()  # both R-CNN branches


def test_oracle_refuses_data_without_hidden_ground_truth(data_root, tmp_path):
  c = _tiny("oracle", data_root, 2)
  c.data.target.layout = "amodalsynthdrive"  # followed by the oracle's training data
  with pytest.raises(ValueError, match="amodalsynthdrive"):
    inference.open_source(c, str(tmp_path))
  with pytest.raises(ValueError, match="kitti360aps 'train'"):
    pipeline.open_reader("kitti360aps", os.path.join(data_root, "KITTI360_APS"), "train",
                         hidden_gt=True)
  # A BlendPASS folder as the real data set has it: train images, no _synth_gt/.
  real = str(tmp_path / "BlendPASS")
  shutil.copytree(os.path.join(data_root, "BlendPASS"), real,
                  ignore=shutil.ignore_patterns(blendpass.HIDDEN_DIR))
  c = _tiny("oracle", data_root, 2)
  c.data.target.root = real
  with pytest.raises(layouts.DataError, match=f"{real} has no _synth_gt/.*synthpass"):
    inference.open_source(c, str(tmp_path))


@pytest.mark.parametrize("reference_blur", [False, True])
def test_the_methods_blur_with_the_configured_sigma_scale(monkeypatch, reference_blur):
  from unlock_jax.methods import uda  # pylint: disable=g-import-not-at-top
  from unlock_jax.methods import unlock  # pylint: disable=g-import-not-at-top
  from unlock_jax.models import predict as predict_lib  # pylint: disable=g-import-not-at-top
  from unlock_jax.train import augment  # pylint: disable=g-import-not-at-top
  cfg = _config("unlock", extra=f",reference_blur={int(reference_blur)}").adapt
  cfg = cfg.copy_and_resolve_references()
  seen, sample_sigma = [], augment.sample_sigma
  monkeypatch.setattr(augment, "sample_sigma", lambda key, batch, scale=1.0: (
      seen.append(scale), sample_sigma(key, batch, scale))[1])
  monkeypatch.setattr(predict_lib, "teacher_labels", lambda model, params, bs, x: (
      np.zeros(x.shape[:3], np.int32), np.ones(x.shape[:3], np.float32)))
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 94, 94, 3)).astype(np.float32)
  semantic = rng.integers(0, 18, (2, 94, 94)).astype(np.int32)
  key = jax.random.key(0)
  unlock.mixed_batch(None, None, None, {keys.IMAGE: image, keys.SEMANTIC: semantic,
                                        keys.UNLABELED_IMAGE: image}, key, cfg=cfg)
  uda.mixed_batch(None, None, None, {keys.IMAGE: image, keys.SEMANTIC: semantic}, image, key,
                  cfg=cfg)
  assert seen == [1.0 if reference_blur else 0.25] * 2
