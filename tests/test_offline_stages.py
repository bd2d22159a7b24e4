"""Stages 1-3 (predict, opll, adcl_pool) through main, as a user runs them.

One tiny full model (both R-CNN branches) is trained once; the tests then
check the outputs against direct numpy computations, a resume after SIGKILL
in ``predict`` and in ``opll`` (byte-identical to an uninterrupted run), the
user-images mode, and the bad-input errors. (The adapt stage's resume after
SIGKILL, for every registered method: tests/test_methods.py.)
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.synth import tiny
from tests.support import fast_compile
from unlock_jax.data import labels as labels_lib
from unlock_jax.data import packed_labels
from unlock_jax.data import pool_index
from unlock_jax.pseudo import pool
from unlock_jax.pseudo import store
from unlock_jax.pseudo import thresholds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/synth/tiny.py:full=1,steps=2"
OFFLINE = ("predict", "opll", "adcl_pool")


def _main(workdir, stage, *overrides, timeout=900):
  return subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", CONFIG, "--workdir",
       str(workdir), f"--config.stage={stage}", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=timeout, env=fast_compile.env())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp("offline") / "wd"
  proc = _main(wd, "generate,train_source")
  assert proc.returncode == 0, proc.stderr[-4000:]
  return wd


def _outputs(wd):
  """Relative path → bytes of every output that must not depend on a resume."""
  out = {}
  for stage in OFFLINE:
    for root, _, files in os.walk(os.path.join(wd, stage)):
      for f in files:
        rel = os.path.relpath(os.path.join(root, f), wd)
        if "tfevents" in f or "/_state/" in f"/{rel}" or "/logs/" in f"/{rel}":
          continue
        out[rel] = open(os.path.join(root, f), "rb").read()
  return out


def _oracle_tau(values, p, t):
  v = np.sort(np.asarray(values, np.float64))
  if v.size == 0:
    return 0.0
  i = min(int(np.round(v.size * (1 - p))), v.size - 1)
  return min(t, float(v[i]))


@pytest.fixture(scope="module")
def uninterrupted(trained, tmp_path_factory):
  proc = _main(trained, ",".join(OFFLINE))
  assert proc.returncode == 0, proc.stderr[-4000:]
  snap = _outputs(trained)
  for stage in OFFLINE:  # the resume test reruns in the same folder
    shutil.move(os.path.join(trained, stage), tmp_path_factory.mktemp("snap") / stage)
  return snap, proc


def test_outputs_match_direct_computation(trained, uninterrupted, tmp_path):
  snap, proc = uninterrupted
  wd = tmp_path / "wd"
  os.makedirs(wd)
  for rel, data in snap.items():
    os.makedirs(os.path.dirname(wd / rel), exist_ok=True)
    open(wd / rel, "wb").write(data)
  store_dir = str(wd / "predict")
  names = store.list_predictions(store_dir)
  assert len(names) == 4 and all("/" in n for n in names)
  preds = [store.load_prediction(store_dir, n) for n in names]
  h, w = preds[0]["semantic"].shape
  assert (h, w) == (50, 256)
  assert any(len(p["amodal"]["scores"]) for p in preds)

  # Thresholds vs a direct sort-and-index over every stored value.
  th = json.load(open(wd / "opll" / "thresholds.json"))
  for c in range(labels_lib.NUM_CLASSES):
    vals = np.concatenate([p["confidence"][p["semantic"] == c] for p in preds])
    assert th["semantic"][str(c)]["count"] == vals.size
    assert th["semantic"][str(c)]["tau"] == pytest.approx(_oracle_tau(vals, 0.8, 0.5), abs=0)
  for branch, (p_, t_) in (("modal", (0.3, 0.5)), ("amodal", (0.5, 0.3))):
    for c in labels_lib.THING_IDS:
      vals = np.concatenate([p[branch]["scores"][p[branch]["classes"] == c] for p in preds])
      assert th[branch][str(c)]["tau"] == pytest.approx(
          _oracle_tau(vals.astype(np.float64), p_, t_), abs=0)

  # Packed labels vs docs/method.md §5.2 computed here; reference layout present.
  for n, p in zip(names, preds):
    tau = np.array([th["semantic"][str(c)]["tau"] for c in range(18)])
    want = np.where(p["confidence"].astype(np.float64) < tau[p["semantic"]], 255,
                    p["semantic"]).astype(np.uint8)
    got = packed_labels.load_packed(str(wd / "opll" / "packed" / (n + ".npz")))
    np.testing.assert_array_equal(got["semantic"], want)
    city, stem = n.split("/")
    sem_png = np.array(Image.open(wd / "opll" / "OPLL" / "semantic" / city / f"{stem}.png"))
    np.testing.assert_array_equal(sem_png, want)
    for folder in ("instance", "amodal_instance"):
      assert os.path.exists(wd / "opll" / "OPLL" / folder / city / f"{stem}_uncertain.png")

  # Quality report (synthpass keeps the target-train ground truth).
  q = json.load(open(wd / "opll" / "quality.json"))
  assert set(q["variants"]) == {"raw", "opll", "opll+proto"}
  assert "opll+proto" in proc.stdout
  # Raw argmax labels every pixel: full coverage.
  assert q["variants"]["raw"]["semantic"]["coverage"] == pytest.approx(1.0)
  assert len(os.listdir(wd / "opll" / "pictures")) == 2

  # The pool: thresholds min(0.95, q_0.9) and an index that loads.
  adcl = json.load(open(wd / "adcl_pool" / "thresholds.json"))["adcl"]
  for c in labels_lib.THING_IDS:
    vals = np.concatenate([p["amodal"]["scores"][p["amodal"]["classes"] == c] for p in preds])
    assert adcl[str(c)]["tau"] == pytest.approx(_oracle_tau(vals, 0.1, 0.95), abs=0)
  index = pool_index.PoolIndex.load(str(wd / "adcl_pool" / "pool_index.npz"))
  want = sum(len(pool.pool_entries(p, {int(k): v for k, v in adcl.items() if k.isdigit()}))
             for p in preds)
  assert len(index) == want


def test_resume_after_kill_is_byte_identical(trained, uninterrupted):
  snap, _ = uninterrupted
  killed = _main(trained, "predict", "--config.debug.kill_after_entries=1")
  assert killed.returncode == -signal.SIGKILL
  assert len(store.list_predictions(str(trained / "predict"))) == 1
  assert _main(trained, "predict").returncode == 0
  killed = _main(trained, "opll", "--config.debug.kill_after_entries=2")
  assert killed.returncode == -signal.SIGKILL
  proc = _main(trained, "opll,adcl_pool")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "labels for 2 of 4 panoramas" in proc.stderr
  again = _outputs(trained)
  assert sorted(again) == sorted(snap)
  diff = [k for k in snap if again[k] != snap[k]]
  assert not diff, diff
  # A rerun asking for more pictures draws the missing one (and no other work).
  proc = _main(trained, "opll", "--config.opll.num_pictures=3")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "labels for 1 of 4 panoramas" in proc.stderr
  assert len(os.listdir(trained / "opll" / "pictures")) == 3


def test_user_images_and_bad_inputs(trained, tmp_path):
  folder = tmp_path / "mine"
  os.makedirs(folder / "trip")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 128, 3), np.uint8)).save(folder / "trip" / "a.jpg")
  Image.fromarray(rng.integers(0, 255, (50, 256, 3), np.uint8)).save(folder / "b.png")
  out = tmp_path / "store"
  user = (f"--config.predict.images={folder}", f"--config.predict.store_dir={out}",
          f"--config.predict.pictures_dir={tmp_path / 'pics'}")
  proc = _main(trained, "predict", *user, "--config.predict.num_pictures=1")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert store.list_predictions(str(out)) == ["b.png", "trip/a.jpg"]
  assert "a.jpg is 128x64 (aspect 2.00:1)" in proc.stderr  # names the file and both ratios
  assert "configured 256x50 (5.12:1)" in proc.stderr
  assert os.listdir(tmp_path / "pics") == ["b.png.png"]
  # A rerun with more pictures draws the missing one from the store.
  proc = _main(trained, "predict", *user, "--config.predict.num_pictures=2")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "predict: 0 of 2 panoramas to do" in proc.stderr
  assert sorted(os.listdir(tmp_path / "pics")) == ["b.png.png", "trip_a.jpg.png"]

  # A corrupt store entry: named, with the fix.
  entry = store.entry_path(str(out), "b.png")
  data = bytearray(open(entry, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(entry, "wb").write(bytes(data))
  proc = _main(trained, "opll", f"--config.predict.store_dir={out}",
               f"--config.predict.images={folder}", f"--config.opll.out_dir={tmp_path / 'o'}")
  assert proc.returncode != 0
  assert entry in proc.stderr and "predict" in proc.stderr

  # A checkpoint of another architecture: named, with the fix. (This run's
  # own checkpoint under another model is refused before that, by the
  # fingerprint check, naming model.head_channels.)
  other = tmp_path / "other_checkpoints"
  shutil.copytree(trained / "train_source" / "checkpoints", other)
  proc = _main(trained, "predict", "--config.model.head_channels=24",
               f"--config.predict.checkpoint={other}",
               f"--config.predict.store_dir={tmp_path / 's2'}")
  assert proc.returncode != 0
  assert "does not match the model" in proc.stderr
  assert str(other) in proc.stderr

  # An unreadable image fails the run only with on_bad_image=fail, named
  # (the skip-and-report default: tests/test_own_images.py).
  open(folder / "c.jpg", "wb").write(b"not a jpeg")
  proc = _main(trained, "predict", f"--config.predict.images={folder}",
               f"--config.predict.store_dir={out}", "--config.predict.on_bad_image=fail")
  assert proc.returncode != 0 and "c.jpg" in proc.stderr
  assert "on_bad_image=skip" in proc.stderr
