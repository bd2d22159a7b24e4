"""export_source: a compact source model that the later stages load, and the data-identity check."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.synth import tiny
from tests.support import fast_compile
from unlock_jax import checkpoint
from unlock_jax import sharding as shd
from unlock_jax.models import amodalpass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/synth/tiny.py:full=1,steps=2"


def _main(workdir, stage, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "unlock_jax.main", "--config", CONFIG, "--workdir",
       str(workdir), f"--config.stage={stage}", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=900, env=fast_compile.env())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  wd = tmp_path_factory.mktemp("export") / "wd"
  out = wd / "model"
  proc = _main(wd, "generate,train_source,export_source",
               f"--config.export_source.out_dir={out}",
               "--config.export_source.dtype=bfloat16",
               "--config.export_source.command=REGENERATE-ME")
  assert proc.returncode == 0, proc.stderr[-4000:]
  return wd, out


def _abstract():
  c = tiny.get_config("full=1")
  model = amodalpass.build(c.model)
  return checkpoint.abstract_variables(model, (1, 64, 64, 3), shd.make_mesh())


def test_export_is_the_trained_model_rounded_to_bfloat16(exported):
  wd, out = exported
  abstract = _abstract()
  trained, step = checkpoint.load_variables(str(wd / "train_source" / "checkpoints"), abstract)
  assert step == 2
  loaded, step = checkpoint.load_variables(str(out), abstract)
  assert step is None  # a plain variables folder, as a converted checkpoint
  flat_t = jax.tree_util.tree_leaves_with_path(trained)
  flat_l = dict(jax.tree_util.tree_leaves_with_path(loaded))
  assert len(flat_t) == len(flat_l)
  for path, t in flat_t:
    got = np.asarray(flat_l[path])
    assert got.dtype == np.float32, path  # loading casts back to the model's dtype
    want = np.asarray(t).astype(jax.numpy.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(got, want, err_msg=str(path))
  meta = json.loads((out / "synthpass.json").read_text())
  cfg = json.loads((wd / "data" / ".synthpass" / "config.json").read_text())
  assert meta["identity"] == {"version": cfg["version"], "scale": cfg["scale"],
                              "seed": cfg["seed"], "source_train": 6}
  assert meta["train_step"] == 2 and meta["dtype"] == "bfloat16"
  assert meta["command"] == "REGENERATE-ME"
  assert not os.path.exists(str(out) + ".tmp") and not os.path.exists(str(out) + ".old")


def test_later_stages_use_it_and_refuse_other_data(exported, tmp_path):
  wd, out = exported
  proc = _main(wd, "predict", f"--config.predict.checkpoint={out}",
               f"--config.predict.store_dir={tmp_path}/store")
  assert proc.returncode == 0, proc.stderr[-4000:]
  store_meta = json.loads((tmp_path / "store" / "meta.json").read_text())
  assert store_meta["checkpoint"] == str(out)

  # Data generated with another seed: the model was not trained on it.
  other = tmp_path / "other"
  proc = _main(other, "generate,predict", "--config.synthpass.seed=7",
               f"--config.predict.checkpoint={out}")
  assert proc.returncode != 0
  assert "was trained on synthpass" in proc.stderr and "REGENERATE-ME" in proc.stderr
  assert not (other / "predict").exists() or not any((other / "predict").rglob("*.npz"))
