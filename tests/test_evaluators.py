"""Evaluator plumbing: padded batches, per-process merge, pictures, results vs direct accumulation."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unlock_jax import sharding as shd
from unlock_jax.data import pipeline
from unlock_jax.data import synthpass
from unlock_jax.data.synthpass import testing as synth_testing
from unlock_jax.evaluation import evaluators, report, semantic


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return synth_testing.make_tiny_dataset(str(tmp_path_factory.mktemp("data")))


def _cfg(root, type_, **extra):
  size = synthpass.image_sizes(0.125)["target"]
  return ml_collections.ConfigDict(dict(
      type=type_, layout="blendpass", root=os.path.join(root, "BlendPASS"), split="val",
      image_size=size, batch_size=4, **extra))


def _fake_predict(kind):
  """Predicts class (row index mod 18) everywhere: deterministic, not the GT."""
  def make(model, mesh):
    def predict(variables, image):
      b, h, w, _ = image.shape
      sem = jnp.broadcast_to((jnp.arange(h) % 18)[None, :, None], (b, h, w)).astype(jnp.int32)
      return sem if kind == "semantic" else {"sem": sem}
    return jax.jit(predict, out_shardings=shd.data_sharding(mesh))
  return make


def _expected(root, cfg):
  reader = pipeline.open_reader(cfg.layout, cfg.root, cfg.split, cfg.image_size)
  h, w = cfg.image_size
  pred = np.broadcast_to((np.arange(h) % 18)[:, None], (h, w))
  sem_acc, oass = semantic.SemanticAccumulator(), report.OassMetrics(stuff_area=10,
                                                                     min_region_size=5)
  empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int),
           "masks": np.zeros((0, h, w), bool), "valid": np.zeros(0, bool)}
  for i in range(len(reader)):
    gt = reader.load(i)
    sem_acc.add(pred, gt["semantic"])
    oass.add(gt, {"sem": pred, "modal": empty, "amodal": empty})
  return sem_acc.result(), oass.result(), len(reader)


def test_semantic_and_oass_evaluators_match_direct_accumulation(root, tmp_path, monkeypatch):
  mesh = shd.make_mesh()
  monkeypatch.setattr(evaluators, "semantic_predict_fn", _fake_predict("semantic"))
  monkeypatch.setattr(evaluators, "oass_predict_fn", _fake_predict("oass"))
  cfg = _cfg(root, "semantic")
  sem_ref, oass_ref, n = _expected(root, cfg)
  assert n % 4 != 0, "the split should not fill whole batches (padding is under test)"

  ev = evaluators.from_config("val", cfg, model=None, mesh=mesh, workdir=str(tmp_path))
  got = dict(ev.run({}))
  assert got["mIoU"] == pytest.approx(sem_ref["mIoU"])

  ocfg = _cfg(root, "oass", stuff_area=10, min_region_size=5, num_pictures=2,
              pictures_dir=str(tmp_path / "pics"))
  ev = evaluators.from_config("val", ocfg, model=None, mesh=mesh, workdir=str(tmp_path))
  got = dict(ev.run({}))
  for k in report.HEADLINE + ("AP50", "AAP50"):
    assert got[k] == pytest.approx(oass_ref[k]), k
  assert ev.result["num_images"] == n
  pics = sorted(os.listdir(tmp_path / "pics"))
  assert len(pics) == 2 and all(p.endswith(".png") for p in pics)
  assert ev.pictures[0][1].dtype == np.uint8 and ev.pictures[0][1].ndim == 3


def test_unknown_evaluator_type_is_named(root, tmp_path):
  with pytest.raises(ValueError, match="config.evals.val.type='mystery'"):
    evaluators.from_config("val", _cfg(root, "mystery"), model=None,
                           mesh=shd.make_mesh(), workdir=str(tmp_path))
